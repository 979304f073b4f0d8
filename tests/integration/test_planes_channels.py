"""Multi-plane / multi-channel sessions: pages de-interleaved into one TwoPhotonSeries per plane
and channel, flyback dropped, volumes carried across files, a final incomplete volume dropped.

Expectations are built here from the pages the test wrote, by walking the rig's own loop
(for each volume: for each plane: for each channel one page; then the flyback frames, one page
per channel), never from rig2nwb.core.pagelayout. Frames are small (16x24) to keep the file fast.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import h5py
import numpy as np
import pytest
import tifffile

from rig2nwb.engine.engine import Engine
from rig2nwb.rig.scanimage import read_scanimage
from rig2nwb.testing.figures import record
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.nwbfiles import nwb_frames, nwb_timestamps
from rig2nwb.testing.services import finished, run_service
from rig2nwb.testing.tiffs import random_frames, tiff_pages

SHAPE = (16, 24)
DANDI_SUBJECT = {"age": "P90D", "sex": "F"}  # so that nwbinspector's DANDI config has no CRITICAL
NO_LAB_FILES = {"scan_file": "", "trial_file": ""}


# --- independent expectations ---------------------------------------------------------------

def expected_series(n_pages: int, planes: int, channels: tuple[int, ...],
                    flyback: int) -> dict[str, np.ndarray]:
    """{series name: stream page of each of its frames}, for the whole volumes among
    ``n_pages`` pages, written out as the rig interleaves them."""
    volumes: list[dict[tuple[int, int], int]] = []
    page = 0
    while True:
        volume = {}
        for p in range(planes):
            for c in channels:
                volume[(p, c)] = page
                page += 1
        page += flyback * len(channels)  # flyback frames: one page per channel, not data
        if page > n_pages:
            break  # an incomplete last volume
        volumes.append(volume)
    single = planes == 1 and len(channels) == 1
    return {("TwoPhotonSeries" if single else f"TwoPhotonSeries_plane{p}_ch{c}"):
            np.array([v[(p, c)] for v in volumes], dtype=np.int64)
            for p in range(planes) for c in channels}


def acquisition_names(path: Path) -> set[str]:
    with h5py.File(path, "r") as f:
        return set(f["acquisition"].keys())


def rate_form(path: Path, series: str) -> tuple[float, float] | None:
    """(starting_time, rate) of a series stored in rate form, None when it has timestamps."""
    with h5py.File(path, "r") as f:
        g = f[f"acquisition/{series}"]
        if "timestamps" in g:
            return None
        st = g["starting_time"]
        return float(st[()]), float(st.attrs["rate"])


def status_row(lab: Lab) -> dict[str, Any]:
    proc = lab.run_cli("status", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 1, rows
    return rows[0]  # type: ignore[no-any-return]


def reported(row: dict[str, Any]) -> list[str]:
    """Every active message status shows for the session (problems and, if split out, warnings)."""
    return [*row["problems"], *row.get("warnings", [])]


def severities(lab: Lab) -> dict[str, str]:
    """Active problem message -> severity, read from the ledger (status --json lists messages)."""
    from rig2nwb.config.paths import ledger_path
    from rig2nwb.ledger.store import Ledger

    ledger = Ledger(ledger_path(lab.config()), readonly=True)
    try:
        return {p.message: p.severity for p in ledger.problems()}
    finally:
        ledger.close()


def one(messages: list[str], *parts: str) -> str:
    hits = [m for m in messages if all(p in m for p in parts)]
    assert len(hits) == 1, f"no single message with {parts}: {messages}"
    return hits[0]


def convert(lab: Lab, folder: Path | None = None) -> Any:
    return lab.run_cli("convert", str(folder or lab.session_dir()), "--no-progress")


def assert_valid_nwb(path: Path, *, inspect: bool = True) -> None:
    """pynwb reads the file, its validator finds no error, nwbinspector (DANDI) no CRITICAL."""
    import hdf5plugin  # noqa: F401  (Blosc, should the file be compressed)
    from pynwb import NWBHDF5IO
    from pynwb.validation import validate

    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        assert len(nwb.acquisition) >= 1
    errors = validate(path=str(path))
    if isinstance(errors, tuple):  # older pynwb: (errors, status)
        errors = errors[0]
    assert list(errors) == [], errors
    if inspect:
        from nwbinspector import Importance, inspect_nwbfile, load_config

        messages = [m for m in inspect_nwbfile(nwbfile_path=str(path), config=load_config("dandi"))
                    if m is not None]
        critical = [f"{m.check_function_name}: {m.message}" for m in messages
                    if m.importance == Importance.CRITICAL]
        assert critical == [], critical


# --- 1. plain TIFFs, layout from config.toml ------------------------------------------------

def test_plain_tiffs_deinterleaved_across_unaligned_files(make_lab) -> None:  # type: ignore[no-untyped-def]
    rate, planes, channels, flyback = 40.0, 3, (1, 2), 1
    lab: Lab = make_lab(imaging={"planes": planes, "channels": 2, "flyback_frames": flyback,
                                 "frame_rate": rate}, rig=NO_LAB_FILES, subject=DANDI_SUBJECT)
    sizes = [23, 17, 31]  # 71 pages, 8 pages a volume: files end mid volume, 7 pages left over
    paths = [lab.tiff(f"run_{i + 1:05d}.tif", random_frames(n, SHAPE, seed=10 + i))
             for i, n in enumerate(sizes)]
    pages = np.concatenate([tiff_pages(p) for p in paths])
    proc = convert(lab)
    assert proc.returncode == 0, proc.stderr

    expected = expected_series(len(pages), planes, channels, flyback)
    per_volume = (planes + flyback) * len(channels)
    assert len(expected) == 6 and all(len(v) == 8 for v in expected.values())
    assert acquisition_names(lab.nwb()) == set(expected)
    for name, idx in expected.items():
        got = nwb_frames(lab.nwb(), name)
        assert got.dtype == pages.dtype and got.shape == (len(idx), *SHAPE), name
        assert np.array_equal(got, pages[idx]), name
        # nominal time of a page: its scan frame (flyback frames counted) / frame_rate
        np.testing.assert_allclose(nwb_timestamps(lab.nwb(), name),
                                   idx // len(channels) / rate, rtol=0, atol=1e-9)
        plane = int(name.split("_plane")[1].split("_")[0])
        form = rate_form(lab.nwb(), name)
        assert form is not None, f"{name}: regular nominal times not stored as starting_time + rate"
        assert form[0] == pytest.approx(plane / rate, abs=1e-12)
        assert form[1] == pytest.approx(rate / (planes + flyback), rel=1e-6)

    row = status_row(lab)
    assert row["state"] == "finished"
    dropped = len(pages) % per_volume
    assert dropped == 7
    warning = one(reported(row), "incomplete", f"last {dropped} page(s)")
    assert severities(lab)[warning] == "warning"
    assert_valid_nwb(lab.nwb())


# --- 2. ScanImage files: layout, channels and times from the files themselves ---------------

EPOCH = "[2024  3  1 10 15 30.25]"


def si_header(channels: tuple[int, ...], slices: int, flyback: int, rate: float) -> str:
    return "\n".join([
        "SI.VERSION_MAJOR = 2021", "SI.VERSION_MINOR = 1", "SI.VERSION_UPDATE = 0",
        f"SI.hChannels.channelSave = [{' '.join(map(str, channels))}]",
        f"SI.hRoiManager.scanFrameRate = {rate}",
        f"SI.hRoiManager.scanVolumeRate = {rate / (slices + flyback)}",
        "SI.hFastZ.enable = true", "SI.hFastZ.discardFlybackFrames = false",
        f"SI.hFastZ.numDiscardFlybackFrames = {flyback}",
        "SI.hStackManager.enable = true",
        f"SI.hStackManager.numSlices = {slices}", f"SI.hStackManager.actualNumSlices = {slices}",
        "SI.hStackManager.framesPerSlice = 1",
        f"SI.hStackManager.numFramesPerVolume = {slices}",
        f"SI.hStackManager.numFramesPerVolumeWithFlyback = {slices + flyback}",
        f"SI.hStackManager.zs = [{' '.join(str(30 * s) for s in range(slices))}]",
    ])


class SIRun:
    """A ScanImage-like acquisition: every scan frame (flyback included) gets one page per
    saved channel; all pages of a frame share its frameNumbers and jittered timestamp."""

    def __init__(self, *, volumes: int, frames_per_volume: int, pages_per_frame: int,
                 rate: float = 50.0, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        n_frames = volumes * frames_per_volume
        jitter = rng.uniform(-0.01, 0.01, n_frames) / rate  # +-1 % of a period: irregular
        self.stamp_text = [f"{t:.6f}" for t in np.arange(n_frames) / rate + 0.001 + jitter]
        self.numbers = [f + 1 for f in range(n_frames) for _ in range(pages_per_frame)]
        self.pages = random_frames(n_frames * pages_per_frame, SHAPE, seed=seed)
        # the per-page time the file states (what each series' timestamps must be)
        self.page_times = np.array([float(self.stamp_text[n - 1]) for n in self.numbers])

    def write(self, path: Path, header: str, start: int, stop: int, *,
              bigtiff: bool = True) -> Path:
        """Pages ``start .. stop-1`` as one file: a BigTIFF like ScanImage 2016+ writes (header
        in every page's Software tag, per-frame data in its ImageDescription)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
            for i in range(start, stop):
                n = self.numbers[i]
                description = (f"frameNumbers = {n}\nacquisitionNumbers = 1\n"
                               f"frameNumberAcquisition = {n}\n"
                               f"frameTimestamps_sec = {self.stamp_text[n - 1]}\n"
                               f"epoch = {EPOCH}\n")
                tw.write(self.pages[i], contiguous=False, photometric="minisblack",
                         software=header, description=description, metadata=None)
        with tifffile.TiffFile(path) as tf:  # the premise: tifffile calls it ScanImage
            assert tf.is_scanimage
        return path


def test_scanimage_two_channels_fastz_with_flyback(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab: Lab = make_lab(rig=NO_LAB_FILES, subject=DANDI_SUBJECT)
    channels, slices, flyback = (1, 3), 2, 1
    header = si_header(channels, slices, flyback, 50.0)
    run = SIRun(volumes=5, frames_per_volume=slices + flyback, pages_per_frame=2, seed=3)
    folder = lab.session_dir()
    files = [run.write(folder / "si_00001_00001.tif", header, 0, 14),  # ends mid volume
             run.write(folder / "si_00001_00002.tif", header, 14, 30)]
    info = read_scanimage(files[0])
    assert info is not None and info.channels_saved == channels
    assert (info.n_slices, info.flyback_frames, info.fastz_enabled) == (slices, flyback, True)
    assert np.array_equal(np.concatenate([tiff_pages(f) for f in files]), run.pages)

    proc = convert(lab)
    assert proc.returncode == 0, proc.stderr
    expected = expected_series(len(run.pages), slices, channels, flyback)
    assert set(expected) == {"TwoPhotonSeries_plane0_ch1", "TwoPhotonSeries_plane0_ch3",
                             "TwoPhotonSeries_plane1_ch1", "TwoPhotonSeries_plane1_ch3"}
    assert acquisition_names(lab.nwb()) == set(expected)
    for name, idx in expected.items():
        assert len(idx) == 5
        assert np.array_equal(nwb_frames(lab.nwb(), name), run.pages[idx]), name
        assert rate_form(lab.nwb(), name) is None  # jittered: stays as timestamps
        assert np.array_equal(nwb_timestamps(lab.nwb(), name), run.page_times[idx]), name
    row = status_row(lab)
    assert row["state"] == "finished" and reported(row) == [], reported(row)
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(lab.nwb()), "r") as io:
        nwb = io.read()
        assert nwb.session_start_time == datetime(2024, 3, 1, 10, 15, 30, 250000,
                                                  tzinfo=ZoneInfo("Europe/Berlin"))
    assert_valid_nwb(lab.nwb())


def test_scanimage_header_channels_contradicted_by_pages(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab: Lab = make_lab(rig=NO_LAB_FILES, subject=DANDI_SUBJECT)
    header = si_header((1, 2), 2, 1, 50.0)  # says two channels saved ...
    run = SIRun(volumes=4, frames_per_volume=3, pages_per_frame=1, seed=4)  # ... pages hold one
    run.write(lab.session_dir() / "si_00001_00001.tif", header, 0, 12)
    proc = convert(lab)
    assert proc.returncode == 0, proc.stderr

    expected = expected_series(12, 2, (1,), 1)
    assert acquisition_names(lab.nwb()) == set(expected) == {"TwoPhotonSeries_plane0_ch1",
                                                             "TwoPhotonSeries_plane1_ch1"}
    for name, idx in expected.items():
        assert np.array_equal(nwb_frames(lab.nwb(), name), run.pages[idx]), name
        assert np.array_equal(nwb_timestamps(lab.nwb(), name), run.page_times[idx]), name
    row = status_row(lab)
    hits = [p for p in reported(row) if "si_00001_00001.tif" in p and "trusting the pages" in p]
    record("bad_input", case="scanimage_header_contradicted_by_pages", handled=bool(hits),
           detail=hits[0] if hits else str(reported(row)))
    assert row["state"] == "finished"
    warning = one(reported(row), "si_00001_00001.tif", "trusting the pages")
    assert severities(lab)[warning] == "warning"


def test_scanimage_file_with_another_layout_fails_alone(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab: Lab = make_lab(rig=NO_LAB_FILES, subject=DANDI_SUBJECT)
    first = SIRun(volumes=3, frames_per_volume=3, pages_per_frame=2, seed=5)
    first.write(lab.session_dir() / "si_00001_00001.tif", si_header((1, 3), 2, 1, 50.0), 0, 18)
    other = SIRun(volumes=2, frames_per_volume=4, pages_per_frame=2, seed=6)  # 3 slices
    other.write(lab.session_dir() / "si_00001_00002.tif", si_header((1, 3), 3, 1, 50.0), 0, 16)
    proc = convert(lab)
    assert proc.returncode == 1
    assert "si_00001_00002.tif" in proc.stderr and "Traceback" not in proc.stderr

    row = status_row(lab)
    hits = [p for p in reported(row) if "si_00001_00002.tif" in p and "3 plane(s)" in p]
    record("bad_input", case="scanimage_file_with_another_layout", handled=bool(hits),
           detail=hits[0] if hits else str(reported(row)))
    assert row["state"] == "finished"
    problem = one(reported(row), "si_00001_00002.tif", "3 plane(s)")
    assert severities(lab)[problem] == "error"
    expected = expected_series(18, 2, (1, 3), 1)
    assert acquisition_names(lab.nwb()) == set(expected)
    for name, idx in expected.items():  # the first file's frames, and nothing of the second
        assert np.array_equal(nwb_frames(lab.nwb(), name), first.pages[idx]), name
        assert np.array_equal(nwb_timestamps(lab.nwb(), name), first.page_times[idx]), name


def test_classic_tiff_flagged_scanimage_never_silently_loses_pages(make_lab) -> None:  # type: ignore[no-untyped-def]
    """A classic (not Big) TIFF with an 'SI.' Software tag and per-page descriptions of varying
    length ('frameNumbers = 9', then '= 10'). tifffile takes such files for ScanImage <= 2015
    and lists 'virtual frames' computed from the file size, assuming equidistant pages. Every
    page must reach the NWB file, or the file must fail with a problem: never fewer pages."""
    lab: Lab = make_lab(rig=NO_LAB_FILES, subject=DANDI_SUBJECT)
    run = SIRun(volumes=14, frames_per_volume=1, pages_per_frame=1, seed=7)
    path = run.write(lab.session_dir() / "si_00001_00001.tif", si_header((1,), 1, 0, 50.0),
                     0, 14, bigtiff=False)
    with tifffile.TiffFile(path, is_scanimage=False) as tf:  # the IFD chain, walked
        assert len(tf.pages) == 14
    convert(lab)
    row = status_row(lab)
    if row["frames"]:
        assert np.array_equal(nwb_frames(lab.nwb()), run.pages), (
            f"{row['frames']} of 14 pages appended, no problem reported: {reported(row)}")
    else:
        one(reported(row), "si_00001_00001.tif")


# --- 3. measured onsets from the lab's scan file on a multi-plane session -------------------

@pytest.mark.parametrize("n_onsets", [15, 14])
def test_scan_file_onsets_per_scan_frame(make_lab, n_onsets: int) -> None:  # type: ignore[no-untyped-def]
    rate, planes, channels, flyback = 30.0, 2, (1, 2), 1
    lab: Lab = make_lab(imaging={"planes": planes, "channels": 2, "flyback_frames": flyback,
                                 "frame_rate": rate}, rig={"trial_file": ""},
                        subject=DANDI_SUBJECT)
    paths = [lab.tiff("x_00001.tif", random_frames(13, SHAPE, seed=1)),
             lab.tiff("x_00002.tif", random_frames(17, SHAPE, seed=2))]
    pages = np.concatenate([tiff_pages(p) for p in paths])  # 30 pages = 15 scan frames
    rng = np.random.default_rng(8)
    onsets_ms = [f"{v:.3f}" for v in 5.0 + np.arange(n_onsets) * 33.4 + rng.uniform(-0.5, 0.5, n_onsets)]
    txt = lab.root / "m1" / "txt"
    txt.mkdir(parents=True)
    (txt / "s1_scan.txt").write_text(" ".join(onsets_ms) + "\r\n")
    proc = convert(lab)
    assert proc.returncode == 0, proc.stderr

    row = status_row(lab)
    assert row["state"] == "finished"
    expected = expected_series(len(pages), planes, channels, flyback)
    onsets_s = np.array([float(v) for v in onsets_ms]) / 1000
    for name, idx in expected.items():
        assert np.array_equal(nwb_frames(lab.nwb(), name), pages[idx]), name
        scan_frame = idx // len(channels)
        stamps = nwb_timestamps(lab.nwb(), name)
        if n_onsets == 15:
            np.testing.assert_allclose(stamps, onsets_s[scan_frame], rtol=0, atol=1e-9)
        else:
            np.testing.assert_allclose(stamps, scan_frame / rate, rtol=0, atol=1e-9)
    if n_onsets == 15:
        assert row["timestamps"] == "measured frame onsets from s1_scan.txt"
        assert reported(row) == []
    else:
        assert row["timestamps"].startswith("nominal")
        one(reported(row), "s1_scan.txt: 14 frame onsets for 15 frames")


# --- 4. trials ------------------------------------------------------------------------------

TRIAL_UNITS = {"trials.column_info.sf": {"description": "grating spatial frequency",
                                         "unit": "cyc/deg"},
               "trials.column_info.dir": {"description": "grating drift direction",
                                          "unit": "deg (0 = rightward)"}}


def _trial_lab(make_lab, trial_text: str) -> tuple[Lab, np.ndarray]:  # type: ignore[no-untyped-def]
    lab: Lab = make_lab(imaging={"planes": 2, "frame_rate": 30.0}, rig={"scan_file": ""},
                        subject=DANDI_SUBJECT, **TRIAL_UNITS)
    pages = random_frames(240, SHAPE, seed=21)  # 2 planes x 120 frames: 0 .. 8.03 s recorded
    lab.tiff("x_00001.tif", pages)
    txt = lab.root / "m1" / "txt"
    txt.mkdir(parents=True)
    (txt / "s1_trial.txt").write_text(trial_text)
    proc = convert(lab)
    assert proc.returncode == 0, proc.stderr
    for name, idx in expected_series(240, 2, (1,), 0).items():  # frames untouched, always
        assert np.array_equal(nwb_frames(lab.nwb(), name), pages[idx]), name
    return lab, pages


def test_trial_file_becomes_the_trials_table(make_lab) -> None:  # type: ignore[no-untyped-def]
    rows = [(200, 1000, 0, 0.04, 0, 90), (3000, 1500, 0, 0.08, 0, 180),
            (6000, 1500, 0, 0.16, 0, 270)]
    text = "".join(" ".join(f"{v:g}" for v in r) + "\r\n" for r in rows)
    lab, _ = _trial_lab(make_lab, text)
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(lab.nwb()), "r") as io:
        trials = io.read().trials
        assert trials is not None
        df = trials.to_dataframe()
        on = np.array([r[0] for r in rows]) / 1000
        off = on + np.array([r[1] for r in rows]) / 1000
        np.testing.assert_allclose(df["start_time"], np.maximum(on - 0.5, 0.0))  # clamped at 0
        np.testing.assert_allclose(df["stop_time"], off + 0.5)
        np.testing.assert_allclose(df["stim_on"], on)
        np.testing.assert_allclose(df["stim_off"], off)
        np.testing.assert_allclose(df["sf"], [r[3] for r in rows])
        np.testing.assert_allclose(df["dir"], [r[5] for r in rows])
        assert "cyc/deg" in trials["sf"].description
        assert "deg (0 = rightward)" in trials["dir"].description
        assert "second" in trials["stim_on"].description and "second" in trials["stim_off"].description
    row = status_row(lab)
    assert row["state"] == "finished" and reported(row) == []
    assert_valid_nwb(lab.nwb())


@pytest.mark.parametrize(("text", "line", "what"), [
    ("200 1000 0 0.04 0 90\n3000 1500 0 0.08 0 180\n6000 1500 0 x0.16 0 270\n", 3,
     "'x0.16' is not a number"),
    ("# stim_on stim_dur - sf - dir\n200 1000 0 0.04 0 90\n\n7500 1500 0 0.16 0 270\n", 4,
     "outside the recording"),
], ids=["non-numeric-field", "trial-outside-recording"])
def test_bad_trial_file_is_reported_and_changes_nothing_else(make_lab, text: str, line: int,  # type: ignore[no-untyped-def]
                                                             what: str) -> None:
    lab, _ = _trial_lab(make_lab, text)
    with h5py.File(lab.nwb(), "r") as f:
        assert "intervals/trials" not in f and "trials" not in f.get("intervals", {})
    row = status_row(lab)
    hits = [p for p in reported(row) if f"s1_trial.txt, line {line}" in p and what in p]
    record("bad_input", case=f"trial_file_end_to_end: {what}", handled=bool(hits),
           detail=hits[0] if hits else str(reported(row)))
    assert row["state"] == "finished"
    problem = one(reported(row), f"s1_trial.txt, line {line}", what)
    assert "no trials written" in problem


# --- 5. a finished session gets another file ------------------------------------------------

def test_new_file_after_finish_reopens_and_completes_the_volume(make_lab) -> None:  # type: ignore[no-untyped-def]
    rate, planes, flyback = 30.0, 2, 1
    lab: Lab = make_lab(imaging={"planes": planes, "flyback_frames": flyback, "frame_rate": rate},
                        rig={"scan_file": ""}, subject=DANDI_SUBJECT)
    folder = lab.session_dir()
    paths = [lab.tiff("x_00001.tif", random_frames(7, SHAPE, seed=31)),
             lab.tiff("x_00002.tif", random_frames(10, SHAPE, seed=32))]
    txt = lab.root / "m1" / "txt"
    txt.mkdir(parents=True)
    (txt / "s1_trial.txt").write_text("100 200 0 0.04 0 90\n")
    run_service(lab, finished("s1"), timeout=60)

    pages = np.concatenate([tiff_pages(p) for p in paths])  # 17 pages: 5 volumes + 2 pages
    first = expected_series(len(pages), planes, (1,), flyback)
    for name, idx in first.items():
        assert len(idx) == 5
        assert np.array_equal(nwb_frames(lab.nwb(), name), pages[idx]), name
    one(reported(status_row(lab)), "incomplete", "last 2 page(s)")

    paths.append(lab.tiff("x_00003.tif", random_frames(7, SHAPE, seed=33)))
    third = "m1/tif/site1/s1/x_00003.tif"

    def third_in_and_finished(engine: Engine) -> bool:
        row = engine.ledger.file(third)
        return row is not None and row.state == "committed" and finished("s1")(engine)

    run_service(lab, third_in_and_finished, timeout=90)
    assert (folder / "x_00003.tif").exists()
    pages = np.concatenate([tiff_pages(p) for p in paths])  # 24 pages: 8 whole volumes
    expected = expected_series(len(pages), planes, (1,), flyback)
    assert acquisition_names(lab.nwb()) == set(expected)
    for name, idx in expected.items():
        assert len(idx) == 8
        got = nwb_frames(lab.nwb(), name)
        assert np.array_equal(got, pages[idx]), name  # incl. the volume completed by file 3
        plane = int(name.split("_plane")[1].split("_")[0])
        np.testing.assert_allclose(nwb_timestamps(lab.nwb(), name), idx / rate, rtol=0, atol=1e-9)
        form = rate_form(lab.nwb(), name)
        assert form is not None and form[0] == pytest.approx(plane / rate, abs=1e-12)
        assert form[1] == pytest.approx(rate / (planes + flyback), rel=1e-6)
    with h5py.File(lab.nwb(), "r") as f:
        assert len(f["intervals/trials/id"]) == 1  # written anew, not duplicated
        np.testing.assert_allclose(f["intervals/trials/stim_on"][:], [0.1])
    row = status_row(lab)
    assert row["state"] == "finished"
    assert not [m for m in reported(row) if "incomplete" in m], reported(row)
    assert_valid_nwb(lab.nwb(), inspect=False)


def test_new_file_while_a_reader_holds_the_finished_file(make_lab) -> None:  # type: ignore[no-untyped-def]
    """A finished session gets a new file while another program (a viewer, the validation
    child) has the NWB file open: the reopen waits for the lock and then goes through."""
    import subprocess
    import sys

    lab: Lab = make_lab(imaging={"planes": 2, "flyback_frames": 1}, rig={"scan_file": ""},
                        subject=DANDI_SUBJECT)
    paths = [lab.tiff("x_00001.tif", random_frames(6, SHAPE, seed=41))]
    txt = lab.root / "m1" / "txt"
    txt.mkdir(parents=True)
    (txt / "s1_trial.txt").write_text("10 50 0 0.04 0 90\n")
    run_service(lab, finished("s1"), timeout=60)
    reader = subprocess.Popen(
        [sys.executable, "-c", "import h5py, sys, time; f = h5py.File(sys.argv[1], 'r'); "
         "print('open', flush=True); time.sleep(4)", str(lab.nwb())],
        stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "open"
        paths.append(lab.tiff("x_00002.tif", random_frames(6, SHAPE, seed=42)))

        def second_in_and_finished(engine: Engine) -> bool:
            row = engine.ledger.file("m1/tif/site1/s1/x_00002.tif")
            return row is not None and row.state == "committed" and finished("s1")(engine)

        run_service(lab, second_in_and_finished, timeout=20)
    finally:
        reader.wait(timeout=30)
    pages = np.concatenate([tiff_pages(p) for p in paths])
    row = status_row(lab)
    exact = [np.array_equal(nwb_frames(lab.nwb(), name), pages[idx])
             for name, idx in expected_series(12, 2, (1,), 1).items()]
    record("outage", test="reader_holds_the_finished_file",
           survived=row["state"] == "finished" and row["frames"] == 12 and all(exact))
    assert row["state"] == "finished" and row["frames"] == 12, (row["state"], reported(row))
    for name, idx in expected_series(12, 2, (1,), 1).items():
        assert np.array_equal(nwb_frames(lab.nwb(), name), pages[idx]), name


def test_killed_mid_finalize_after_times_became_rate_recovers(make_lab) -> None:  # type: ignore[no-untyped-def]
    """A kill after finalize stored the series as starting_time + rate and dropped the
    incomplete volume, but before the ledger said 'finished' (found by the crash test: the
    worker then crash-looped on the missing timestamps). Recreated exactly: finish a session,
    then put the ledger back to 'acquiring' as the kill would have left it."""
    rate, planes, channels, flyback = 40.0, 3, (1, 2), 1
    lab: Lab = make_lab(imaging={"planes": planes, "channels": 2, "flyback_frames": flyback,
                                 "frame_rate": rate}, rig=NO_LAB_FILES, subject=DANDI_SUBJECT)
    paths = [lab.tiff(f"run_{i + 1:05d}.tif", random_frames(n, SHAPE, seed=20 + i))
             for i, n in enumerate([23, 17, 31])]
    pages = np.concatenate([tiff_pages(p) for p in paths])
    assert convert(lab).returncode == 0
    name = "TwoPhotonSeries_plane0_ch1"
    assert rate_form(lab.nwb(), name) is not None  # the state a late kill leaves in the file
    import sqlite3
    db = sqlite3.connect(lab.state / "ledger.sqlite")
    with db:
        db.execute("UPDATE sessions SET state='acquiring', finished_at=NULL, validation=NULL")
    db.close()

    proc = convert(lab)
    assert proc.returncode == 0, proc.stderr
    assert status_row(lab)["state"] == "finished"
    for series, idx in expected_series(len(pages), planes, channels, flyback).items():
        assert np.array_equal(nwb_frames(lab.nwb(), series), pages[idx]), series
        np.testing.assert_allclose(nwb_timestamps(lab.nwb(), series),
                                   idx // len(channels) / rate, rtol=0, atol=1e-9)
    assert_valid_nwb(lab.nwb())
