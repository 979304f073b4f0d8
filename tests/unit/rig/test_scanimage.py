"""ScanImage metadata (rig2nwb.rig.scanimage) against real rig files from ../shared/fixtures/scanimage.

Expected values come from the fixtures README or straight from the raw header text, pulled out
here with tifffile and small regexes, never from rig2nwb's own parsing. Skipped with a reason when
the fixtures are absent; the synthetic tests at the end always run.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import tifffile

from rig2nwb.errors import TiffProblem
from rig2nwb.rig.scanimage import ScanImageInfo, frame_numbers, frame_timestamps, read_scanimage
from rig2nwb.testing.paths import shared_fixture
from rig2nwb.testing.scanimage_raw import Raw

MULTI = "volumetric_single_channel_multi_file"
MULTI_FILES = [f"{MULTI}/vol_one_ch_multi_files_00001_{i:05d}.tif" for i in range(1, 11)]
NO_FLYBACK = "volumetric_single_channel_single_file_no_flyback/vol_no_flyback_00001_00001.tif"
NOROI = "scanimage_20220923_noroi.tif"
SI38 = "sample_scanimage_version_3_8.tiff"
SI38_EXT = "si38_external_trigger/Blank-IPA_1s_16r_032.tif"
ALL = [*MULTI_FILES, NO_FLYBACK, NOROI, SI38, SI38_EXT]


def fixture(rel: str) -> Path:
    return shared_fixture("scanimage", *rel.split("/"))


def info_of(rel: str) -> tuple[ScanImageInfo, Raw]:
    path = fixture(rel)
    info = read_scanimage(path)
    assert info is not None, f"{rel} not recognised as ScanImage"
    return info, Raw(path)


def test_the_list_covers_every_scanimage_fixture() -> None:
    root = shared_fixture("scanimage")
    found = {p.relative_to(root).as_posix() for p in root.rglob("*.tif*")}
    assert found == set(ALL)


@pytest.mark.parametrize("rel", ALL)
def test_every_fixture_against_its_raw_header(rel: str) -> None:
    info, raw = info_of(rel)
    assert info.pages == raw.pages
    assert info.page_shape == raw.shape
    json.dumps(info.header, allow_nan=False)  # strict JSON: storable in NWB as text
    json.dumps(info.roi_groups, allow_nan=False)
    if raw.si3:
        assert info.header_text == raw.descriptions[0]
        assert info.version.startswith(raw.value("state.software.version"))
        assert info.frame_rate == pytest.approx(float(raw.value("state.acq.frameRate")))
        assert info.zoom == pytest.approx(float(raw.value("state.acq.zoomFactor")))
        assert info.line_period_s == pytest.approx(float(raw.value("state.acq.msPerLine")) / 1000)
        saving = re.findall(r"^state\.acq\.savingChannel(\d+)=1$", raw.header, re.MULTILINE)
        assert info.channels_saved == tuple(int(c) for c in saving)
        assert info.header["state.acq.linesPerFrame"] == int(raw.value("state.acq.linesPerFrame"))
        assert frame_timestamps(fixture(rel)) is None  # SI 3 has no per-frame data
        assert frame_numbers(fixture(rel)) is None
        return
    assert info.header_text == raw.software
    assert info.version == raw.value("SI.VERSION_MAJOR")  # x.0.0 releases in these fixtures
    assert info.frame_rate == pytest.approx(float(raw.value("SI.hRoiManager.scanFrameRate")))
    assert info.line_period_s == pytest.approx(float(raw.value("SI.hRoiManager.linePeriod")))
    assert info.zoom == pytest.approx(float(raw.value("SI.hRoiManager.scanZoomFactor")))
    assert info.channels_saved == tuple(int(c) for c in raw.numbers("SI.hChannels.channelSave"))
    assert info.laser_power_percent == tuple(raw.numbers("SI.hBeams.powers"))
    assert info.fastz_enabled == (raw.value("SI.hFastZ.enable") == "true")
    assert info.discard_flyback == (raw.value("SI.hFastZ.discardFlybackFrames") == "true")
    assert info.frames_per_slice == int(raw.value("SI.hStackManager.framesPerSlice"))
    assert info.n_slices == int(raw.value("SI.hStackManager.numSlices"))
    # pixel size: imagingFovUm corners [x y; ...] over the page shape (rows, cols)
    corners = np.array(raw.numbers("SI.hRoiManager.imagingFovUm")).reshape(-1, 2)
    extent = corners.max(axis=0) - corners.min(axis=0)  # (x, y) µm
    assert info.pixel_size_um == pytest.approx((extent[1] / raw.shape[0], extent[0] / raw.shape[1]))
    epoch = re.search(r"^epoch = \[(.*)\]$", raw.descriptions[0], re.MULTILINE)
    assert epoch
    y, mo, d, hh, mi, s = epoch.group(1).split()
    assert info.acquisition_start == datetime(int(y), int(mo), int(d), int(hh), int(mi), int(float(s)),
                                              round(float(s) % 1 * 1e6))
    ts = frame_timestamps(fixture(rel))
    assert ts is not None and ts.dtype == np.float64 and len(ts) == raw.pages
    assert np.array_equal(ts, raw.per_page("frameTimestamps_sec"))
    assert np.all(np.diff(ts) >= 0), "per-frame timestamps go backwards"
    numbers = frame_numbers(fixture(rel))
    assert numbers is not None and numbers.dtype == np.int64
    assert numbers.tolist() == raw.per_page("frameNumbers")


def test_fastz_run_split_over_ten_files() -> None:
    """README: fastZ 9 slices + 7 flyback frames stored although discardFlybackFrames=true; only
    channel 1 saved of 2 active; frameTimestamps_sec continuous across files, 0 to 3.05 s."""
    infos = [info_of(rel) for rel in MULTI_FILES]
    for info, raw in infos:
        assert (info.n_slices, info.flyback_frames, info.fastz_enabled, info.discard_flyback) == (
            9, 7, True, True)
        assert info.channels_saved == (1,) and len(raw.numbers("SI.hChannels.channelsActive")) == 2
        assert info.z_positions_um == tuple(raw.numbers("SI.hStackManager.zs"))
        assert len(info.z_positions_um) == 9
        assert info.pages % (9 + 7) == 0  # whole volumes, flyback frames included
        assert info.volume_rate == pytest.approx(float(raw.value("SI.hRoiManager.scanVolumeRate")))
        assert any("discardFlybackFrames" in w for w in info.warnings)
        assert info.acquisition_start == infos[0][0].acquisition_start  # one acquisition
    assert sum(info.pages for info, _ in infos) == 1600

    stamps, numbers = [], []
    for rel, (info, _) in zip(MULTI_FILES, infos, strict=True):
        file_ts, file_numbers = frame_timestamps(fixture(rel)), frame_numbers(fixture(rel))
        assert file_ts is not None and len(file_ts) == info.pages
        assert file_numbers is not None
        stamps.append(file_ts)
        numbers.append(file_numbers)
    ts = np.concatenate(stamps)
    steps = np.diff(ts)
    assert ts[0] == 0 and ts[-1] == pytest.approx(3.05, abs=0.01)
    assert np.all(steps > 0)
    # continuous: the steps across file boundaries are the same as within a file
    assert steps.max() / steps.min() < 1.01
    assert steps.mean() == pytest.approx(1 / infos[0][0].frame_rate, rel=1e-3)  # type: ignore[operator]
    assert np.concatenate(numbers).tolist() == list(range(1, 1601))


def test_fastz_without_flyback_and_a_header_frame_rate_that_is_wrong() -> None:
    info, raw = info_of(NO_FLYBACK)
    assert (info.n_slices, info.flyback_frames, info.fastz_enabled) == (9, 0, True)
    assert info.pages == 10 * 9
    ts = frame_timestamps(fixture(NO_FLYBACK))
    assert ts is not None
    step = float(np.median(np.diff(raw.per_page("frameTimestamps_sec"))))
    assert step == pytest.approx(1.909e-3, abs=2e-6)
    header_rate = float(raw.value("SI.hRoiManager.scanFrameRate"))
    assert header_rate == pytest.approx(79.8, abs=0.1)  # README: it says 79.8 Hz ...
    assert any("scanFrameRate" in w and "1.909 ms" in w for w in info.warnings)  # ... and we warn


def test_two_non_contiguous_channels_in_a_slow_stack() -> None:
    """README: channels saved [1,4], framesPerSlice=2, 3 volumes, non-uniform timestamps, epoch,
    pixel size from imagingFovUm (not scanfields.sizeXY, which is in scan-angle units)."""
    info, raw = info_of(NOROI)
    assert info.channels_saved == (1, 4)
    assert (info.n_slices, info.frames_per_slice, info.fastz_enabled, info.flyback_frames) == (
        2, 2, False, 0)
    assert info.pages == 3 * 2 * 2 * 2  # volumes x slices x frames per slice x channels
    assert info.acquisition_start == datetime(2023, 9, 22, 12, 46, 9, 383000)
    fov_x = np.ptp(np.array(raw.numbers("SI.hRoiManager.imagingFovUm")).reshape(-1, 2)[:, 0])
    assert info.pixel_size_um == pytest.approx((fov_x / 256, fov_x / 256))
    assert info.pixel_size_um != pytest.approx((18 / 256, 18 / 256))  # sizeXY [18 18]
    zs = raw.numbers("SI.hStackManager.zs")  # one per frame: [a a b b]
    assert info.z_positions_um == tuple(dict.fromkeys(zs)) and len(info.z_positions_um) == 2
    ts = frame_timestamps(fixture(NOROI))
    assert ts is not None and len(ts) == 24
    assert np.array_equal(ts[0::2], ts[1::2])  # both channels of a frame share its time
    steps = np.diff(ts[0::2])
    assert np.all(steps > 0) and steps.max() > 10 * steps.min()  # motor moves: not uniform
    assert any("slow (motor) stack" in w for w in info.warnings)
    numbers = frame_numbers(fixture(NOROI))
    assert numbers is not None and numbers.tolist() == [n for n in range(1, 13) for _ in (1, 4)]


def test_scanimage_3_8_header_promises_more_frames_than_the_file_holds() -> None:
    info, raw = info_of(SI38)
    assert info.version == "3.8"
    assert info.frames_per_slice == int(raw.value("state.acq.numberOfFrames")) == 1220
    assert info.pages == 10
    assert any("1220" in w and "holds 10" in w for w in info.warnings)
    trigger = raw.value("state.internal.triggerTimeString").strip("'")
    assert info.acquisition_start == datetime.strptime(trigger, "%m/%d/%Y %H:%M:%S.%f")
    assert info.pixel_size_um is None and info.z_positions_um == ()
    assert info.header["state.acq.numberOfRepeats"] == "Inf"  # strict JSON has no Infinity


def test_scanimage_3_8_externally_triggered_channel_2() -> None:
    info, raw = info_of(SI38_EXT)
    assert info.version == "3.8.1"
    assert info.channels_saved == (2,)
    assert info.frame_rate == pytest.approx(8.138, abs=1e-3)
    assert info.header["state.acq.externallyTriggered"] == 1
    assert info.acquisition_start == datetime(2014, 7, 30, 21, 10, 0, 731000)
    assert info.pages == int(raw.value("state.acq.numberOfFrames")) and info.warnings == ()


# --- synthetic files: always run ---

def test_a_plain_tiff_is_not_scanimage(tmp_path: Path) -> None:
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((3, 8, 8), "uint16"), photometric="minisblack")
    assert read_scanimage(path) is None
    assert frame_timestamps(path) is None and frame_numbers(path) is None


@pytest.mark.parametrize(("content", "code"), [
    (b"", "empty"),
    (b"this is not a TIFF at all", "not_tiff"),
    (b"II*\x00" + (10**9).to_bytes(4, "little") + b"\x00" * 32, "no_pages"),  # IFD past the end
])
def test_unreadable_files_raise_tiff_problem(tmp_path: Path, content: bytes, code: str) -> None:
    path = tmp_path / "bad.tif"
    path.write_bytes(content)
    for read in (read_scanimage, frame_timestamps, frame_numbers):
        with pytest.raises(TiffProblem) as err:
            read(path)
        assert err.value.code == code and "bad.tif" in err.value.message
    with pytest.raises(TiffProblem) as err:
        read_scanimage(tmp_path / "gone.tif")
    assert err.value.code == "vanished"


def test_sparse_header_with_matlab_strings(tmp_path: Path) -> None:
    """A classic (not Big) TIFF with a thin SI header: values as MATLAB strings, keys missing,
    a page without per-frame data. Defaults, never a KeyError."""
    software = "\n".join([
        "SI.VERSION_MAJOR = '2016b'", "SI.VERSION_MINOR = 0",
        "SI.hChannels.channelSave = '[1 4]'", "SI.hRoiManager.scanFrameRate = '30.5'",
        "SI.hFastZ.enable = 'true'", "SI.hStackManager.numSlices = [3]",
        "SI.hStackManager.zs = [0 5 10]", "SI.hRoiManager.imagingFovUm = 'garbage'",
        "SI.hBeams.powers = NaN", "SI.hStackManager.framesPerSlice = Inf"])
    descriptions = ["frameNumbers = 1\nframeTimestamps_sec = 0.25",
                    "frameNumbers = 2\nframeTimestamps_sec = 0.75", "nothing here = 1"]
    path = tmp_path / "thin.tif"
    with tifffile.TiffWriter(path) as tw:
        for d in descriptions:
            tw.write(np.zeros((4, 6), "int16"), description=d, software=software, metadata=None)
    info = read_scanimage(path)
    assert info is not None
    assert info.version == "2016b" and info.channels_saved == (1, 4) and info.frame_rate == 30.5
    assert info.fastz_enabled and (info.n_slices, info.flyback_frames) == (3, 0)
    assert info.frames_per_slice == 1  # Inf is no frame count
    assert info.z_positions_um == (0, 5, 10) and info.laser_power_percent == ()
    assert info.pixel_size_um is None and info.acquisition_start is None and info.zoom is None
    assert (info.pages, info.page_shape, info.header_text) == (3, (4, 6), software)
    assert info.header["SI.hBeams.powers"] == "NaN"
    ts = frame_timestamps(path)
    assert ts is not None and ts[:2].tolist() == [0.25, 0.75] and np.isnan(ts[2])
    numbers = frame_numbers(path)
    assert numbers is not None and numbers.tolist() == [1, 2, -1]


def test_pixel_size_orientation_and_epoch(tmp_path: Path) -> None:
    """Non-square FOV on a non-square page: rows take the y extent, columns the x extent."""
    software = "\n".join([
        "SI.VERSION_MAJOR = 2022", "SI.VERSION_MINOR = 1", "SI.VERSION_UPDATE = 0",
        "SI.hChannels.channelSave = 2",
        "SI.hRoiManager.imagingFovUm = [-30 -10;30 -10;30 10;-30 10]"])  # x: 60 µm, y: 20 µm
    path = tmp_path / "fov.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(np.zeros((4, 6), "int16"), software=software, metadata=None,
                 description="frameNumbers = 1\nepoch = [2024  2 29 23 59 7.5]")
    info = read_scanimage(path)
    assert info is not None
    assert info.pixel_size_um == pytest.approx((20 / 4, 60 / 6))
    assert info.acquisition_start == datetime(2024, 2, 29, 23, 59, 7, 500000)
    assert info.version == "2022.1" and info.channels_saved == (2,)
    assert info.n_slices == 1 and info.volume_rate is None and info.warnings == ()
