"""The summary picture of a finished session and the live preview, checked the way a person would
look at them: against the frames, ROIs, trials and frame onsets the test itself wrote (raw TIFF
pages read back by tifffile, suite2p's arrays loaded by numpy, the test's own scan and trial
files), never against rig2nwb's own reading of them.

The NWB files come from the real pipeline: `convert` + `rig2nwb attach` on the real suite2p
fixture, and a running daemon fed by the simulated rig.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from rig2nwb.commands.convert import convert
from rig2nwb.config.paths import preview_png, summary_png
from rig2nwb.ledger.store import Ledger
from rig2nwb.nwb.check import CheckRun
from rig2nwb.nwb.checksummary import NOT_CHECKED, CheckSummary
from rig2nwb.outputs.status import collect
from rig2nwb.outputs.summary import build_figure, render_png, render_summary
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.nwbfiles import write_nwb
from rig2nwb.testing.paths import shared_fixture
from rig2nwb.testing.simrig import MovieSpec, SimSession, SyntheticMovie
from rig2nwb.testing.suite2p_folders import raw_npy
from rig2nwb.testing.suite2p_sessions import attach_cli
from rig2nwb.testing.tiffs import random_frames, write_tiff
from rig2nwb.testing.waits import wait_for

SUBJECT, SESSION = "m1", "s1"
RATE = 30.0  # scan frames per second of the twoplane fixture's config (15 Hz per plane)
GAP_AFTER = 600  # scan frame after which the test's scan clock skips one volume


# --- helpers ------------------------------------------------------------------------------------


def axes(fig: Any, label: str) -> Any:
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) == 1, [ax.get_label() for ax in fig.axes]
    return found[0]


def by_gid(ax: Any, gid: str) -> Any:
    found = [a for a in ax.get_children() if a.get_gid() == gid]
    assert len(found) == 1, f"{gid} in {ax.get_label()}"
    return found[0]


def gids(ax: Any) -> set[str]:
    return {a.get_gid() for a in ax.get_children() if a.get_gid()}


def ledger_session(lab: Lab) -> Any:
    ledger = Ledger(lab.state / "ledger.sqlite", readonly=True)
    try:
        return ledger.session(SUBJECT, SESSION)
    finally:
        ledger.close()


def trial_lines(path: Path) -> list[list[float]]:
    return [[float(x) for x in ln.split()] for ln in path.read_text().splitlines() if ln.strip()]


def scan_onsets_ms(path: Path) -> np.ndarray:
    return np.array([float(x) for x in path.read_text().split()])


def assert_jitter_matches(fig: Any, frame_times_s: np.ndarray) -> None:
    """The jitter panel is a histogram of exactly these intervals minus their median (ms), and
    lists those beyond its range (gaps)."""
    ax = axes(fig, "jitter")
    data = by_gid(ax, "jitter-hist").get_data()
    counts, edges = data.values, data.edges
    iv = np.diff(frame_times_s) * 1000.0
    dev = iv - np.median(iv)
    inside = (dev >= edges[0] - 1e-6) & (dev <= edges[-1] + 1e-6)
    assert counts.sum() == inside.sum()
    assert edges[0] == pytest.approx(dev[inside].min(), abs=1e-6)
    assert edges[-1] == pytest.approx(dev[inside].max(), abs=1e-6)
    expected, _ = np.histogram(dev[inside], bins=edges)
    # values within 1e-9 ms of a bin edge may fall either side (ms vs s rounding): at most 2
    assert np.abs(expected - counts).sum() <= 2, (expected, counts)
    assert inside.mean() > 0.98  # the histogram shows the jitter, not a handful of gaps
    notes = " ".join(t.get_text() for t in ax.texts)
    if not inside.all():
        assert f"{(~inside).sum()} beyond the range shown:" in notes
        for v in sorted(dev[~inside], reverse=True)[:4]:
            assert f"{v:+.3g}" in notes
    else:
        assert "beyond" not in notes


def block_mean(img: np.ndarray, f: int) -> np.ndarray:
    r, c = img.shape[0] // f * f, img.shape[1] // f * f
    return img[:r, :c].reshape(r // f, f, c // f, f).mean(axis=(1, 3))


def distinct_colours(png: Image.Image, box: tuple[float, float, float, float]) -> int:
    """Distinct RGB colours inside a figure-pixel box (x0, y0, x1, y1 from matplotlib, whose
    origin is the bottom left; the PNG's is the top left)."""
    x0, y0, x1, y1 = box
    h = png.height
    region = np.asarray(png.convert("RGB"))[int(h - y1) + 2:int(h - y0) - 2, int(x0) + 2:int(x1) - 2]
    return len(np.unique(region.reshape(-1, 3), axis=0))


# --- the suite2p session: convert (with scan and trial files), then attach -----------------------


@dataclass
class Session:
    lab: Lab
    fixture: Path
    nwb: Path
    pages: np.ndarray  # every raw TIFF page, in stream order (tifffile)
    onsets_ms: np.ndarray  # the scan file the test wrote
    trials: list[list[float]]  # the trial file the test wrote
    plain_png: bytes  # the summary picture written after convert (no suite2p yet)
    plain_nwb: Path  # a copy of the NWB file before suite2p was attached


@pytest.fixture(scope="module")
def twoplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    fixture = shared_fixture("suite2p", "twoplane")
    base = tmp_path_factory.mktemp("pictures")
    lab = Lab(base, rig={"frames": "{subject}/{session}/*.tif"},
              imaging={"frame_rate": RATE, "planes": 2}, suite2p={"settle_seconds": 0},
              status={"summary_picture": True})
    folder = lab.root / SUBJECT / SESSION
    folder.mkdir(parents=True)
    tifs = sorted((fixture / "raw").glob("*.tif"))
    for tif in tifs:
        shutil.copy2(tif, folder / tif.name)
    pages = np.concatenate([np.stack([p.asarray() for p in tifffile.TiffFile(t).pages]) for t in tifs])
    # Scan file: one onset per scan frame (planes interleaved), jittered, and one skipped frame.
    rng = np.random.default_rng(3)
    onsets = np.arange(len(pages)) * 1000.0 / RATE + rng.normal(0, 0.3, len(pages))
    onsets[GAP_AFTER:] += 2 * 1000.0 / RATE  # one volume (2 planes) missing
    onsets = np.round(np.maximum(onsets, 0.0), 3)
    txt = lab.root / SUBJECT / "txt"
    txt.mkdir()
    (txt / f"{SESSION}_scan.txt").write_text(" ".join(f"{x:.3f}" for x in onsets) + "\n")
    trials = [[2000.0 + 3500.0 * k, 1000.0, 0, 0.04, 0, 45.0 * k] for k in range(8)]
    (txt / f"{SESSION}_trial.txt").write_text("".join(" ".join(f"{v:g}" for v in t) + "\n" for t in trials))

    result = convert(lab.config(), folder, progress=False)
    assert result.ok, result.message
    nwb = lab.nwb(SESSION, SUBJECT)
    png = summary_png(lab.config(), SUBJECT, SESSION)
    plain_png = png.read_bytes()
    plain_nwb = base / "before-suite2p.nwb"
    shutil.copy2(nwb, plain_nwb)
    shutil.copytree(fixture / "suite2p", folder / "suite2p")
    res = attach_cli(lab)
    assert res.returncode == 0, res.stderr
    assert png.read_bytes() != plain_png  # drawn again after the attach
    yield Session(lab, fixture, nwb, pages, onsets, trials, plain_png, plain_nwb)


def test_picture_is_made_by_the_check_child_and_recorded(twoplane: Session) -> None:
    png = summary_png(twoplane.lab.config(), SUBJECT, SESSION)
    img = Image.open(io.BytesIO(png.read_bytes()))
    assert img.format == "PNG" and img.size == (1600, 1000)
    assert png.stat().st_size < 300_000
    summary = CheckSummary.from_json(ledger_session(twoplane.lab).validation)
    assert summary.checked and summary.ok
    assert summary.picture == str(png) and summary.picture_error is None
    log = (twoplane.lab.state / "rig2nwb.log").read_text()
    assert '"event": "summary picture written"' in log


def test_the_picture_names_its_rig_first(twoplane: Session) -> None:
    from rig2nwb.outputs.summary import draw_summary
    from rig2nwb.outputs.summarydata import read_summary

    data = read_summary(twoplane.nwb)
    data.rig = "rig7"
    headline = draw_summary(data).texts[0].get_text()
    assert headline.startswith("rig7: ") and "rig7" not in build_figure(twoplane.nwb).texts[
        0].get_text()


@pytest.mark.parametrize("plane", [0, 1])
def test_mean_image_is_the_mean_of_the_plane_frames(twoplane: Session, plane: int) -> None:
    fig = build_figure(twoplane.nwb)
    shown = axes(fig, f"mean-plane{plane}").get_images()[0].get_array()
    expected = twoplane.pages[plane::2].astype(np.float64).mean(axis=0)  # 500 frames: all used
    np.testing.assert_allclose(shown, expected, rtol=1e-9)
    # and the picture is not transposed or of the other plane
    other = twoplane.pages[1 - plane::2].astype(np.float64).mean(axis=0)
    assert not np.allclose(shown, other)


@pytest.mark.parametrize("plane", [0, 1])
def test_roi_outlines_follow_iscell_and_sit_on_their_rois(twoplane: Session, plane: int) -> None:
    src = twoplane.fixture / "suite2p" / f"plane{plane}"
    iscell = raw_npy(src / "iscell.npy")[:, 0].astype(bool)
    stat = raw_npy(src / "stat.npy")
    fig = build_figure(twoplane.nwb)
    ax = axes(fig, f"rois-plane{plane}")
    cells, other = by_gid(ax, "roi-cells"), by_gid(ax, "roi-other")
    assert len(cells.get_paths()) == iscell.sum()
    assert len(other.get_paths()) == (~iscell).sum()
    assert not np.allclose(cells.get_edgecolor()[0], other.get_edgecolor()[0])
    assert f"{iscell.sum()} cells / {len(iscell)} ROIs" in ax.get_title()
    # Each outline encloses its own ROI's pixels (x = column, y = row): right ROI, right way
    # round; read transposed, most would miss them (those near the diagonal would not). Single
    # stray pixels of a scattered ROI get no outline of their own, so not every pixel is inside.
    inside, transposed = [], []
    for coll, chosen in ((cells, np.flatnonzero(iscell)), (other, np.flatnonzero(~iscell))):
        for path, k in zip(coll.get_paths(), chosen, strict=True):
            pixels = np.c_[stat[k]["xpix"], stat[k]["ypix"]].astype(float)
            inside.append(path.contains_points(pixels).mean())
            transposed.append(path.contains_points(pixels[:, ::-1]).mean())
    assert min(inside) >= 0.5 and np.median(inside) >= 0.95, inside
    assert np.median(transposed) < 0.2, transposed
    centres = [path.contains_point((np.mean(stat[k]["xpix"]), np.mean(stat[k]["ypix"])))
               for path, k in zip(cells.get_paths(), np.flatnonzero(iscell), strict=True)]
    assert all(centres)
    # Drawn over suite2p's own mean image of the plane.
    ops = raw_npy(src / "ops.npy")
    np.testing.assert_allclose(ax.get_images()[0].get_array(), ops["meanImg"], rtol=1e-6)


def test_traces_are_the_largest_dff_cells_with_every_trial_onset(twoplane: Session) -> None:
    fig = build_figure(twoplane.nwb)
    ax = axes(fig, "traces")
    onsets = by_gid(ax, "trial-onsets")
    segments = onsets.get_segments()
    assert len(segments) == len(twoplane.trials)
    np.testing.assert_allclose(sorted(s[0][0] for s in segments),
                               [t[0] / 1000.0 for t in twoplane.trials], atol=1e-9)
    # The 5 cells with the largest dF/F range, over both planes, from the file's dF/F and the
    # fixture's iscell.
    ranked = []
    with h5py.File(twoplane.nwb, "r") as f:
        for plane in (0, 1):
            dff = f[f"processing/ophys/DfOverF/DfOverF_plane{plane}/data"][:]
            iscell = raw_npy(twoplane.fixture / "suite2p" / f"plane{plane}" / "iscell.npy")[:, 0]
            ranked += [(float(np.ptp(dff[:, k])), f"plane {plane} ROI {k}")
                       for k in np.flatnonzero(iscell)]
    top = [label for _, label in sorted(ranked, reverse=True)[:5]]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(labels) == sorted(top)
    assert len(ax.get_lines()) == 5


def test_jitter_panel_holds_the_scan_file_intervals(twoplane: Session) -> None:
    fig = build_figure(twoplane.nwb)
    plane0 = twoplane.onsets_ms[0::2] / 1000.0  # plane 0 = every other scan frame
    assert_jitter_matches(fig, plane0)
    title = axes(fig, "jitter").get_title(loc="left")
    assert "TwoPhotonSeries_plane0_ch1" in title
    assert "1 gap(s) > 1.5x median" in title  # the one skipped volume
    assert f"median {np.median(np.diff(plane0)) * 1000:.4g} ms" in title


def test_png_has_content_in_every_panel(twoplane: Session) -> None:
    fig = build_figure(twoplane.nwb)
    png = Image.open(io.BytesIO(render_png(fig)))
    assert png.size == (1600, 1000)
    minimum = {"mean-plane0": 50, "rois-plane0": 50, "mean-plane1": 50, "rois-plane1": 50,
               "traces": 6, "jitter": 2}
    for label, least in minimum.items():
        box = axes(fig, label).get_window_extent().extents
        assert distinct_colours(png, tuple(box)) >= least, label
    # The ROI panels show two outline colours a person tells apart: amber and blue.
    x0, y0, x1, y1 = axes(fig, "rois-plane0").get_window_extent().extents
    rgb = np.asarray(png.convert("RGB")).astype(int)[int(1000 - y1):int(1000 - y0), int(x0):int(x1)]
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    amber = (r > 180) & (g > 110) & (g < 220) & (b < 90)
    blue = (b > r + 80) & (b > g + 30)
    assert amber.sum() > 200 and blue.sum() > 30, (amber.sum(), blue.sum())


def test_picture_before_suite2p_says_so_and_plots_mean_fluorescence(twoplane: Session) -> None:
    img = Image.open(io.BytesIO(twoplane.plain_png))
    assert img.size == (1600, 1000)
    fig = build_figure(twoplane.plain_nwb)
    for plane in (0, 1):
        ax = axes(fig, f"rois-plane{plane}")
        assert "no suite2p results yet" in [t.get_text() for t in ax.texts]
        assert not gids(ax) & {"roi-cells", "roi-other"}
        np.testing.assert_allclose(ax.get_images()[0].get_array(),
                                   twoplane.pages[plane::2].astype(np.float64).mean(axis=0), rtol=1e-9)
    ax = axes(fig, "traces")
    assert len(by_gid(ax, "trial-onsets").get_segments()) == len(twoplane.trials)
    lines = ax.get_lines()
    assert len(lines) == 2  # one per plane
    for plane, line in enumerate(lines):
        expected = twoplane.pages[plane::2].astype(np.float64).mean(axis=(1, 2))
        np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-9)
        np.testing.assert_allclose(line.get_xdata(), twoplane.onsets_ms[plane::2] / 1000.0, atol=1e-9)
    assert_jitter_matches(fig, twoplane.onsets_ms[0::2] / 1000.0)


# --- awkward files --------------------------------------------------------------------------------


def test_missing_trials_missing_dff_and_nan_traces(twoplane: Session, tmp_path: Path) -> None:
    nan_file = tmp_path / "nan.nwb"
    shutil.copy2(twoplane.nwb, nan_file)
    with h5py.File(nan_file, "r+") as f:
        dff = f["processing/ophys/DfOverF/DfOverF_plane0/data"]
        block = dff[:]
        block[::7, :] = np.nan  # scattered NaNs
        block[:, 0] = np.nan  # one ROI without a single number
        dff[...] = block
        del f["intervals/trials"]
    fig = build_figure(nan_file)
    ax = axes(fig, "traces")
    assert len(ax.get_lines()) == 5
    assert "plane 0 ROI 0" not in [t.get_text() for t in ax.get_yticklabels()]
    assert "trial-onsets" not in gids(ax) and "no trials table" in ax.get_title(loc="left")
    assert Image.open(io.BytesIO(render_png(fig))).size == (1600, 1000)

    no_dff = tmp_path / "nodff.nwb"
    shutil.copy2(twoplane.nwb, no_dff)
    with h5py.File(no_dff, "r+") as f:
        del f["processing/ophys/DfOverF"]
    ax = axes(build_figure(no_dff), "traces")
    assert len(ax.get_lines()) == 2 and "mean F of the whole frame" in ax.get_title(loc="left")


def test_one_frame_file_written_by_pynwb(tmp_path: Path) -> None:
    nwb = write_nwb(tmp_path / "one.nwb", frames=1)
    with h5py.File(nwb, "r") as f:
        frame = f["acquisition/TwoPhotonSeries/data"][0].astype(np.float64)
    fig = build_figure(nwb)
    np.testing.assert_array_equal(axes(fig, "mean-plane0").get_images()[0].get_array(), frame)
    assert len(by_gid(axes(fig, "traces"), "trial-onsets").get_segments()) == 4  # write_nwb's trials
    assert "1 frame: no intervals" in [t.get_text() for t in axes(fig, "jitter").texts]
    assert Image.open(io.BytesIO(render_summary(nwb))).size == (1600, 1000)


def test_regular_times_stored_as_rate_are_said_so(tmp_path: Path) -> None:
    lab = Lab(tmp_path, rig={"frames": "{subject}/{session}/*.tif", "scan_file": "",
                             "trial_file": ""}, output={"check_files": False},
              imaging={"frame_rate": 20.0}, status={"summary_picture": True})
    frames = random_frames(6, seed=4)
    write_tiff(lab.root / SUBJECT / SESSION / "a_00001.tif", frames)
    assert convert(lab.config(), lab.root / SUBJECT / SESSION, progress=False).ok
    fig = build_figure(lab.nwb(SESSION, SUBJECT))
    assert "regular: stored as rate 20 Hz,\nno jitter" in [t.get_text() for t in axes(fig, "jitter").texts]
    np.testing.assert_allclose(axes(fig, "mean-plane0").get_images()[0].get_array(),
                               frames.astype(np.float64).mean(axis=0))
    # Checks are off, pictures on: the child ran with --no-check, and says so.
    summary = CheckSummary.from_json(ledger_session(lab).validation)
    assert not summary.checked and summary.ok and summary.short() == NOT_CHECKED
    assert summary.picture == str(summary_png(lab.config(), SUBJECT, SESSION))
    assert Path(summary.picture).exists()
    row = next(r for r in collect(lab.config()) if r["session"] == SESSION)
    assert row["validation"] == NOT_CHECKED and row["problems"] == []


def test_many_planes_and_channels_show_the_first_channel_of_three_planes(tmp_path: Path) -> None:
    lab = Lab(tmp_path, rig={"frames": "{subject}/{session}/*.tif", "scan_file": "",
                             "trial_file": ""}, output={"check_files": False},
              imaging={"planes": 4, "channels": 2}, status={"summary_picture": True})
    pages = random_frames(8 * 5, seed=8)  # 5 volumes of 4 planes x 2 channels, page by page
    write_tiff(lab.root / SUBJECT / SESSION / "a_00001.tif", pages)
    assert convert(lab.config(), lab.root / SUBJECT / SESSION, progress=False).ok
    fig = build_figure(lab.nwb(SESSION, SUBJECT))
    assert sorted(ax.get_label() for ax in fig.axes) == [
        "jitter", "mean-plane0", "mean-plane1", "mean-plane2", "rois-plane0", "rois-plane1",
        "rois-plane2", "traces"]
    for plane in range(3):  # page order within a volume: plane 0 ch 1, plane 0 ch 2, plane 1 ch 1...
        ax = axes(fig, f"mean-plane{plane}")
        np.testing.assert_allclose(ax.get_images()[0].get_array(),
                                   pages[2 * plane::8].astype(np.float64).mean(axis=0))
        assert f"TwoPhotonSeries_plane{plane}_ch1" in ax.get_title()
    assert any("showing 3 of 4 planes" in t.get_text() for t in fig.texts)


# --- the check child's picture options -----------------------------------------------------------


def test_check_child_picture_options_and_failures(tmp_path: Path) -> None:
    nwb = write_nwb(tmp_path / "x.nwb")
    png = tmp_path / "pics" / "x.png"
    only = CheckRun.start(nwb, picture=png, check=False).wait()
    assert not only.checked and only.failed is None and only.ok
    assert only.picture == str(png) and Image.open(png).size == (1600, 1000)

    # A picture that cannot be written never fails the check.
    (tmp_path / "blocked").write_text("a file where the folder should be")
    both = CheckRun.start(nwb, picture=tmp_path / "blocked" / "x.png").wait()
    assert both.checked and both.ok and both.short().startswith("valid; ")
    assert both.picture is None and both.picture_error and "x.png" in both.picture_error

    # A file that is not NWB at all: the check fails, and the picture says why it is missing.
    bad = tmp_path / "bad.nwb"
    bad.write_bytes(b"not hdf5")
    broken = CheckRun.start(bad, picture=tmp_path / "bad.png", check=False).wait()
    assert not broken.checked and broken.ok and broken.picture_error
    assert not (tmp_path / "bad.png").exists()


def test_summaries_round_trip_and_old_ones_still_load() -> None:
    s = CheckSummary.not_checked(seconds=1.5, picture_error="x.png: boom")
    back = CheckSummary.from_json(s.to_json())
    assert back == s and not back.checked and back.picture_error == "x.png: boom"
    old = json.dumps({"validation_errors": 0, "counts": {"CRITICAL": 0}, "messages": [],
                      "seconds": 0.3, "failed": None})  # stored before pictures existed
    loaded = CheckSummary.from_json(old)
    assert loaded.checked and loaded.picture is None and loaded.short().startswith("valid;")


# --- the live preview in a running daemon ----------------------------------------------------------


class Started:
    """A ServiceHook that tells the simulated rig when the daemon watches."""

    name = "test-started"

    def __init__(self) -> None:
        self.event = threading.Event()

    def started(self, engine: Any) -> None:
        self.event.set()

    def tick(self, engine: Any) -> None:
        pass

    def stopping(self, engine: Any) -> None:
        pass


def test_preview_while_acquiring_then_replaced_by_the_summary(tmp_path: Path) -> None:
    from rig2nwb.config.logsetup import setup_from_config
    from rig2nwb.service.hooks import default_hooks
    from rig2nwb.service.loop import Service

    lab = Lab(tmp_path, status={"preview_interval_seconds": 0.2, "preview_frames": 20,
                                "summary_picture": True},
              completion={"settle_seconds": 0.5, "session_idle_seconds": 1.5})
    folder = lab.session_dir(SESSION, SUBJECT)
    movie = MovieSpec(shape=(300, 520), rate=50.0, n_cells=30, seed=11)
    scan = lab.root / SUBJECT / "txt" / f"{SESSION}_scan.txt"
    trials = lab.root / SUBJECT / "txt" / f"{SESSION}_trial.txt"
    sim = SimSession(tiff_paths=[folder / f"{SESSION}_{i:05d}.tif" for i in range(1, 5)],
                     frames_per_file=25, movie=movie, scan_path=scan, realtime=True)
    cfg = lab.config()
    setup_from_config(cfg)
    started = Started()
    service = Service(cfg, hooks=[*default_hooks(cfg), started])
    path = preview_png(cfg, SUBJECT, SESSION)
    seen: list[tuple[int, bytes]] = []  # (pages committed, preview bytes) while acquiring

    def until(engine: Any) -> bool:
        row = engine.ledger.session(SUBJECT, SESSION)
        if row is not None and row.state == "acquiring" and path.exists():
            data = path.read_bytes()
            if not seen or seen[-1][1] != data:
                seen.append((engine.ledger.frames_committed(row.id), data))
        return row is not None and row.state == "finished" and row.validation is not None

    def rig() -> None:
        started.event.wait(60)
        sim.write()  # 2 s of frames, then the scan file
        trials.write_text("200 300 0 0.04 0 0\n700 300 0 0.08 0 90\n1200 300 0 0.16 0 180\n")

    writer = threading.Thread(target=rig)
    writer.start()
    timer = threading.Timer(120, service.request_stop)
    timer.start()
    try:
        service.run(until=until)
    finally:
        timer.cancel()
        writer.join()

    assert seen, "no preview was written while the session was acquiring"
    frames = np.stack(list(SyntheticMovie(movie).frames(0, sim.n_frames))).astype(np.float64)
    for pages, data in seen:
        img = Image.open(io.BytesIO(data))
        assert img.mode == "L" and max(img.size) <= 256 and len(data) < 100_000
        shown = np.asarray(img, dtype=np.float64)
        expected = block_mean(frames[max(0, pages - 20):pages].mean(axis=0), 3)  # 520 -> 173 px
        assert shown.shape == expected.shape
        # Percentile contrast: linear between the clipped ends (a few bright cell pixels are white).
        mid = (shown > 0) & (shown < 255)
        assert mid.mean() > 0.95
        r = np.corrcoef(shown[mid], expected[mid])[0, 1]
        flipped = np.corrcoef(shown[mid], expected[::-1, ::-1][mid])[0, 1]
        assert r > 0.9995 and r > flipped + 0.1, (r, flipped)
        if pages >= 40:  # and it is the mean of the latest frames, not of some other 20
            earlier = block_mean(frames[pages - 40:pages - 20].mean(axis=0), 3)
            assert np.corrcoef(shown[mid], earlier[mid])[0, 1] < r
        assert expected[shown == 255].min() >= np.percentile(expected[mid], 99)
        assert f"mean of frames {max(0, pages - 20)}-{pages - 1} " in img.info["Description"]
    # Finished: the summary picture replaces the preview.
    summary = summary_png(cfg, SUBJECT, SESSION)
    wait_for(summary.exists, timeout=5, what="the summary picture")
    assert not path.exists()
    fig = build_figure(lab.nwb(SESSION, SUBJECT))
    np.testing.assert_allclose(axes(fig, "mean-plane0").get_images()[0].get_array(),
                               frames.mean(axis=0), rtol=1e-9)
    segments = by_gid(axes(fig, "traces"), "trial-onsets").get_segments()
    assert len(segments) == len(trial_lines(trials)) == 3
    assert sorted(s[0][0] for s in segments) == pytest.approx([0.2, 0.7, 1.2])
    assert_jitter_matches(fig, scan_onsets_ms(scan) / 1000.0)
