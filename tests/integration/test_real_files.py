"""Real rig files from ../shared/fixtures converted end to end with `rig2nwb convert`, checked
against the raw TIFFs. Skipped with a reason when the fixtures are absent.

Every expectation is computed here from the TIFF itself: the pages read by tifffile, and the
ScanImage header and per-page descriptions pulled out by ``tests.test_scanimage.Raw`` (tifffile
and regexes), never by rig2nwb's own parsing. The expected series come from an explicit model of
ScanImage's page order (volume > slice > frame of the slice > saved channel, then flyback
frames), cross-checked against what the fixtures README states for each file.

Folder fixtures are converted in place (rig.root is the shared fixtures folder: rig2nwb only reads
it, and every file is checked to be byte-identical afterwards); the two loose files are copied into
a private rig folder. Each conversion runs once per module and all checks share it.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import h5py
import hdf5plugin  # noqa: F401  (Blosc filter: imported before h5py / pynwb open the files)
import numpy as np
import pytest

from rig2nwb.testing.filetrees import sha256, tree_checksums
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.nwbfiles import nwb_frames, nwb_timestamps
from rig2nwb.testing.paths import shared_fixture
from rig2nwb.testing.scanimage_raw import Raw
from rig2nwb.testing.tiffs import tiff_pages

TIMEZONE = "America/New_York"
SUBJECT = "fixture"

# DANDI-complete metadata, so that nwbinspector's "dandi" config has nothing critical to say.
DANDI: dict[str, dict[str, Any]] = {
    "session": {"timezone": TIMEZONE, "description": "Real ScanImage fixture converted by the tests",
                "experimenter": ["Doe, Jane"], "lab": "Test Lab", "institution": "Test University",
                "experiment_description": "rig2nwb real-file tests", "keywords": ["two-photon"]},
    "subject": {"species": "Mus musculus", "sex": "F", "age": "P90D", "strain": "C57BL/6J",
                "description": "a test mouse"},
}


@dataclass(frozen=True)
class Fixture:
    """One real ScanImage acquisition and what the fixtures README says about it."""

    id: str
    rel: str  # folder (converted in place) or loose file (copied) under fixtures/scanimage
    n_files: int
    n_series: int
    frames_per_series: int


FIXTURES = [
    # 9 fastZ slices + 7 stored flyback frames per volume, 1 of 2 channels saved, 100 volumes
    Fixture("multi_file", "volumetric_single_channel_multi_file", 10, 9, 100),
    Fixture("no_flyback", "volumetric_single_channel_single_file_no_flyback", 1, 9, 10),
    # channels [1, 4], 2 slices x framesPerSlice 2 (slow stack), 3 volumes
    Fixture("noroi", "scanimage_20220923_noroi.tif", 1, 4, 6),
    # SI 3.8: the header promises 1220 frames, the file holds 10
    Fixture("si38", "sample_scanimage_version_3_8.tiff", 1, 1, 10),
    Fixture("si38_external", "si38_external_trigger", 1, 1, 30),
]


# --- the independent model of the page order ------------------------------------------------

@dataclass(frozen=True)
class Layout:
    channels: tuple[int, ...]
    planes: int
    frames_per_slice: int
    flyback: int

    @property
    def pages_per_volume(self) -> int:
        return (self.planes * self.frames_per_slice + self.flyback) * len(self.channels)

    def names(self) -> list[tuple[str, str, int, int]]:
        """(series name, imaging plane name, plane, channel), planes outer, channels inner."""
        single = self.planes == 1 and len(self.channels) == 1
        out = []
        for p in range(self.planes):
            for c in self.channels:
                suffix = "" if single else f"_plane{p}_ch{c}"
                out.append((f"TwoPhotonSeries{suffix}", f"ImagingPlane{suffix}", p, c))
        return out

    def deinterleave(self, per_page: np.ndarray) -> dict[str, np.ndarray]:
        """Per-page values (frames, or times) split into series: whole volumes only, flyback
        frames dropped, each series' frames in acquisition order."""
        nch, per_slice = len(self.channels), self.frames_per_slice
        volumes = len(per_page) // self.pages_per_volume
        v = per_page[: volumes * self.pages_per_volume].reshape(
            volumes, self.planes * per_slice + self.flyback, nch, *per_page.shape[1:])
        v = v[:, : self.planes * per_slice].reshape(volumes, self.planes, per_slice, nch,
                                                    *per_page.shape[1:])
        out = {}
        for name, _, p, c in self.names():
            series = v[:, p, :, self.channels.index(c)]
            out[name] = series.reshape(volumes * per_slice, *per_page.shape[1:])
        return out


def raw_layout(raw: Raw) -> Layout:
    """The page order the raw header describes."""
    if raw.si3:
        saved = re.findall(r"^state\.acq\.savingChannel(\d+)=1$", raw.header, re.MULTILINE)
        planes = int(raw.value("state.acq.numberOfZSlices"))
        assert planes == 1, "no multi-slice ScanImage 3 fixture: extend the model first"
        # numberOfFrames counts the frames of one slice; with one slice each is simply the next
        return Layout(tuple(int(c) for c in saved), 1, 1, 0)
    channels = tuple(int(c) for c in raw.numbers("SI.hChannels.channelSave"))
    planes = int(raw.value("SI.hStackManager.numSlices"))
    per_slice = int(raw.value("SI.hStackManager.framesPerSlice")) if planes > 1 else 1
    flyback = 0
    if raw.value("SI.hFastZ.enable") == "true":  # what is stored, whatever discardFlybackFrames says
        flyback = int(raw.value("SI.hStackManager.numFramesPerVolumeWithFlyback")) - int(
            raw.value("SI.hStackManager.numFramesPerVolume"))
    return Layout(channels, planes, per_slice, flyback)


# --- one conversion per fixture, shared by the checks ---------------------------------------

@dataclass
class Converted:
    fixture: Fixture
    files: list[Path]  # the raw TIFFs in run order
    raws: list[Raw]
    layout: Layout
    nwb: Path
    rig_before: dict[str, str]
    rig_after: dict[str, str]
    source_hashes: dict[Path, str]
    copies: list[Path]  # the copies the conversion read (loose fixtures)

    @property
    def raw(self) -> Raw:
        return self.raws[0]

    def expected_frames(self) -> dict[str, np.ndarray]:
        return self.layout.deinterleave(np.concatenate([tiff_pages(p) for p in self.files]))

    def expected_times(self) -> tuple[dict[str, np.ndarray], float | None]:
        """Per-series times, and the nominal rate they were made from (None: measured times)."""
        if self.raw.si3:
            rate = float(self.raw.value("state.acq.frameRate"))
            n = sum(r.pages for r in self.raws)
            scan_frames = np.arange(n) // len(self.layout.channels)
            return self.layout.deinterleave(scan_frames / rate), rate
        stamps = np.concatenate([r.per_page("frameTimestamps_sec") for r in self.raws])
        return self.layout.deinterleave(stamps), None


def _convert(tmp: Path, fx: Fixture) -> Converted:
    src = shared_fixture("scanimage", fx.rel)
    copies: list[Path] = []
    if src.is_dir():  # in place: rig.root is the shared folder, the session its subfolder
        root, session = src.parent, src.name
        files = sorted(src.glob("*.tif"))
        frames = "{session}/*.tif"
    else:  # a loose file: a copy inside a private rig folder (links out of rig.root are refused)
        root, session = tmp / "rig", fx.id
        (root / session).mkdir(parents=True)
        copies = [root / session / src.name]
        shutil.copyfile(src, copies[0])
        files = [src]
        frames = "{session}/*.tif*"
    assert len(files) == fx.n_files
    lab = Lab(tmp / "lab", rig={"root": str(root), "frames": frames, "subject": SUBJECT,
                                "scan_file": "", "trial_file": ""},
              output={"compression": "blosc-lz4"}, **DANDI)
    hashes = {p: sha256(p) for p in files}
    before = tree_checksums(root / session)
    proc = lab.run_cli("convert", str(root / session), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    after = tree_checksums(root / session)
    raws = [Raw(p) for p in files]
    return Converted(fx, files, raws, raw_layout(raws[0]), lab.out / f"sub-{SUBJECT}_ses-{session}.nwb",
                     before, after, hashes, copies)


@pytest.fixture(scope="module", params=FIXTURES, ids=[f.id for f in FIXTURES])
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    fx: Fixture = request.param
    shared_fixture("scanimage", fx.rel)  # skip with a reason before making anything
    return _convert(tmp_path_factory.mktemp(fx.id), fx)


def _series_names(nwb: Path) -> set[str]:
    with h5py.File(nwb, "r") as f:
        return {k for k in f["acquisition"] if f[f"acquisition/{k}"].attrs.get("neurodata_type")
                == "TwoPhotonSeries"}


# --- the checks ---------------------------------------------------------------------------

def test_layout_model_matches_the_readme_and_the_pages(converted: Converted) -> None:
    """The model's layout against the README's facts and the pages' own frameNumbers."""
    c, fx = converted, converted.fixture
    assert len(c.layout.names()) == fx.n_series
    pages = sum(r.pages for r in c.raws)
    assert pages // c.layout.pages_per_volume * c.layout.frames_per_slice == fx.frames_per_series
    for raw in c.raws[1:]:  # one acquisition: every file carries the same header
        assert raw.header == c.raw.header
    if not c.raw.si3:  # the saved channels of one scan frame share its frame number
        numbers = np.concatenate([r.per_page("frameNumbers") for r in c.raws])
        assert numbers.tolist() == [n // len(c.layout.channels) + 1 for n in range(pages)]


def test_series_names_and_bit_identical_frames(converted: Converted) -> None:
    c = converted
    expected = c.expected_frames()
    assert _series_names(c.nwb) == set(expected)
    for name, frames in expected.items():
        got = nwb_frames(c.nwb, name)
        assert got.shape == (c.fixture.frames_per_series, *c.raw.shape), name
        assert got.dtype == frames.dtype, name
        assert np.array_equal(got, frames), f"{name}: frames differ from the TIFF pages"
    with h5py.File(c.nwb, "r") as f:
        for name, plane, _, _ in c.layout.names():
            link = f[f"acquisition/{name}"].get("imaging_plane", getlink=True)
            assert link.path == f"/general/optophysiology/{plane}", name


def test_timestamps_from_the_raw_pages(converted: Converted) -> None:
    """frameTimestamps_sec of each series' own pages (SI 3: scan frame / state.acq.frameRate);
    a series stored as starting_time + rate must describe the same times."""
    c = converted
    expected, nominal = c.expected_times()
    with h5py.File(c.nwb, "r") as f:
        for name, times in expected.items():
            g = f[f"acquisition/{name}"]
            assert len(times) == c.fixture.frames_per_series
            if "timestamps" in g:
                assert "starting_time" not in g, name
                assert np.array_equal(g["timestamps"][:], times), name
                continue
            start = g["starting_time"]
            rate = start.attrs["rate"]
            assert rate.dtype == np.float32 and start.attrs["unit"] == "seconds", name
            want = nominal if nominal is not None else (len(times) - 1) / (times[-1] - times[0])
            assert float(start[()]) == times[0], name
            assert float(rate) == pytest.approx(want, rel=1e-6), name
            # the rate form is only allowed for times that really are regular
            np.testing.assert_allclose(nwb_timestamps(c.nwb, name), times, rtol=0, atol=2e-6,
                                       err_msg=name)


def test_pixel_size_depth_and_field_of_view(converted: Converted) -> None:
    c, raw = converted, converted.raw
    rows, cols = raw.shape
    zs: list[float] = []
    if raw.si3:
        pixel = None  # ScanImage 3 headers have no micrometre calibration (config gives none)
    else:
        corners = np.array(raw.numbers("SI.hRoiManager.imagingFovUm")).reshape(-1, 2)  # [x y]
        width, height = np.ptp(corners[:, 0]), np.ptp(corners[:, 1])
        pixel = (height / rows, width / cols)  # (row, column) µm
        zs = raw.numbers("SI.hStackManager.zs")
        if len(zs) == c.layout.planes * c.layout.frames_per_slice:
            zs = zs[:: c.layout.frames_per_slice]  # SI 2023 lists one z per frame of a slice
        assert len(zs) == c.layout.planes
    with h5py.File(c.nwb, "r") as f:
        for name, plane_name, p, _ in c.layout.names():
            plane = f[f"general/optophysiology/{plane_name}"]
            series = f[f"acquisition/{name}"]
            if pixel is None:
                assert "grid_spacing" not in plane and "field_of_view" not in series
            else:
                assert plane["grid_spacing"][:] == pytest.approx(pixel, rel=1e-9), plane_name
                assert plane["grid_spacing"].attrs["unit"] == "micrometers"
                fov = (rows * pixel[0] * 1e-6, cols * pixel[1] * 1e-6)  # metres
                assert series["field_of_view"][:] == pytest.approx(fov, rel=1e-9), name
            if zs:
                assert plane["origin_coords"][2] == pytest.approx(zs[p]), plane_name
                assert plane["origin_coords"].attrs["unit"] == "micrometers"
            else:
                assert "origin_coords" not in plane


def test_session_start_time_in_the_configured_timezone(converted: Converted) -> None:
    raw = converted.raw
    if raw.si3:
        stamp = raw.value("state.internal.triggerTimeString").strip("'")  # 7/30/2014 21:10:00.731
        m = re.fullmatch(r"(\d+)/(\d+)/(\d+) (\d+):(\d+):(\d+)\.(\d+)", stamp)
        assert m
        mo, d, y, hh, mi, s, frac = m.groups()
    else:
        m = re.search(r"^epoch = \[\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\.(\d+)\]$",
                      raw.descriptions[0], re.MULTILINE)
        assert m
        y, mo, d, hh, mi, s, frac = m.groups()
    expected = datetime(int(y), int(mo), int(d), int(hh), int(mi), int(s), int(frac.ljust(6, "0")),
                        tzinfo=ZoneInfo(TIMEZONE))
    with h5py.File(converted.nwb, "r") as f:
        text = f["session_start_time"][()].decode()
        got = datetime.fromisoformat(text)
    assert got == expected, text
    assert got.utcoffset() == expected.utcoffset(), text  # local time of the rig, not UTC


def test_notes_hold_the_scanimage_header(converted: Converted) -> None:
    c, raw = converted, converted.raw
    with h5py.File(c.nwb, "r") as f:
        notes = f["general/notes"][()].decode()
    assert c.files[0].name in notes
    if raw.si3:
        assert raw.descriptions[0] in notes  # the text header, verbatim
        assert "state.acq.frameRate=" + raw.value("state.acq.frameRate") in notes.replace("\r", "\n")
        return
    header = json.loads(notes[notes.index("{"):])
    raw_keys = set(re.findall(r"^(SI\.\S+) = ", raw.header, re.MULTILINE))
    assert raw_keys and raw_keys <= set(header), sorted(raw_keys - set(header))[:5]
    for key in ("SI.hRoiManager.scanFrameRate", "SI.hStackManager.numSlices"):
        assert header[key] == pytest.approx(float(raw.value(key))), key
    saved = raw.numbers("SI.hChannels.channelSave")  # '1' or '[1 4]'
    assert np.ravel(header["SI.hChannels.channelSave"]).tolist() == saved


def test_pynwb_and_nwbinspector_accept_the_file(converted: Converted) -> None:
    from nwbinspector import Importance, inspect_nwbfile, load_config
    from pynwb.validation import validate

    assert validate(path=str(converted.nwb)) == []
    messages = [m for m in inspect_nwbfile(nwbfile_path=str(converted.nwb), config=load_config("dandi"),
                                           skip_validate=True) if m is not None]
    bad = [f"{m.importance.name} {m.check_function_name}: {m.location}: {m.message}" for m in messages
           if m.importance in (Importance.CRITICAL, Importance.ERROR)]
    assert bad == []


def test_rig_files_unchanged(converted: Converted) -> None:
    c = converted
    assert c.rig_after == c.rig_before
    for path, digest in c.source_hashes.items():
        assert sha256(path) == digest, path
    for copy in c.copies:  # the copy that was converted is still the fixture, byte for byte
        assert sha256(copy) == c.source_hashes[c.files[0]]


# --- plain (non-ScanImage) TIFFs, and the rig.root boundary ---------------------------------

@pytest.mark.parametrize("channels", [1, 2])
def test_zlib_compressed_rig_tiffs(make_lab, channels: int) -> None:  # type: ignore[no-untyped-def]
    """suite2p's twochan movie: 2 zlib TIFFs x 500 pages, channels interleaved ch1, ch2, ch1, ...
    Not ScanImage, so the layout is config's [imaging]: one series by default, two with
    imaging.channels = 2; nominal times at imaging.frame_rate (30 Hz scan frames)."""
    root = shared_fixture("suite2p")
    session = root / "twochan"
    lab: Lab = make_lab(rig={"root": str(root), "frames": "{session}/raw/*.tif", "subject": SUBJECT,
                             "scan_file": "", "trial_file": ""},
                        imaging={"channels": channels}, **DANDI)
    before = tree_checksums(session)
    proc = lab.run_cli("convert", str(session), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert tree_checksums(session) == before, "rig files were modified"
    nwb = lab.out / f"sub-{SUBJECT}_ses-twochan.nwb"

    files = sorted((session / "raw").glob("*.tif"))
    assert len(files) == 2
    pages = np.concatenate([tiff_pages(p) for p in files])
    assert pages.shape == (1000, 128, 128)
    if channels == 1:
        expected = {"TwoPhotonSeries": pages}
    else:
        expected = {"TwoPhotonSeries_plane0_ch1": pages[0::2], "TwoPhotonSeries_plane0_ch2": pages[1::2]}
    assert _series_names(nwb) == set(expected)
    for name, frames in expected.items():
        got = nwb_frames(nwb, name)
        assert got.dtype == frames.dtype and got.shape == frames.shape == (1000 // channels, 128, 128)
        assert np.array_equal(got, frames), name
        # scan frame i of a channel starts at i / 30 s
        np.testing.assert_allclose(nwb_timestamps(nwb, name), np.arange(len(frames)) / 30.0,
                                   rtol=0, atol=1e-9)


def test_a_link_out_of_the_rig_root_is_not_followed(make_lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = shared_fixture("scanimage", "scanimage_20220923_noroi.tif")
    root = tmp_path / "rig"
    (root / "sess").mkdir(parents=True)
    (root / "sess" / src.name).symlink_to(src)
    lab: Lab = make_lab(rig={"root": str(root), "frames": "{session}/*.tif*", "subject": SUBJECT,
                             "scan_file": "", "trial_file": ""}, **DANDI)
    proc = lab.run_cli("convert", str(root / "sess"), "--no-progress")
    # rig2nwb refuses to follow a link that leaves rig.root (security): it finds nothing to convert
    assert proc.returncode == 1 and "no TIFFs" in proc.stderr
    assert not (lab.out / f"sub-{SUBJECT}_ses-sess.nwb").exists()
