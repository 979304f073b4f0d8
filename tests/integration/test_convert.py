"""`rig2nwb convert`: the same engine as the daemon, run once over a finished session folder."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import h5py
import numpy as np
import pytest
from pynwb import NWBHDF5IO, validate

from rig2nwb.testing.filetrees import sha256
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.nwbfiles import nwb_frames, nwb_timestamps
from rig2nwb.testing.tiffs import random_frames, tiff_pages


def test_convert_session_bit_identical_in_run_order(lab: Lab) -> None:
    sizes = {"run_00002.tif": 7, "run_00010.tif": 5, "run_00001.tif": 40}
    paths = {}
    for seed, (name, n) in enumerate(sizes.items()):
        paths[name] = lab.tiff(name, random_frames(n, seed=seed))
    proc = lab.run_cli("convert", str(lab.session_dir()), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "done: 52 frames" in proc.stdout

    order = ["run_00001.tif", "run_00002.tif", "run_00010.tif"]  # numbers compare as numbers
    expected = np.concatenate([tiff_pages(paths[n]) for n in order])
    got = nwb_frames(lab.nwb())
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)
    np.testing.assert_allclose(nwb_timestamps(lab.nwb()), np.arange(52) / 30.0)
    assert validate(path=str(lab.nwb())) == []

    # Session metadata: start time from the data (first TIFF's mtime minus its duration), not now.
    first_mtime = os.stat(paths["run_00001.tif"]).st_mtime
    tz = ZoneInfo("Europe/Berlin")
    expected_start = datetime.fromtimestamp(first_mtime, tz) - timedelta(seconds=40 / 30.0)
    with NWBHDF5IO(str(lab.nwb()), "r") as io:
        nwb = io.read()
        assert abs(nwb.session_start_time - expected_start) < timedelta(seconds=1)
        assert nwb.session_start_time.utcoffset() == expected_start.utcoffset()
        assert nwb.subject.subject_id == "m1"
        assert nwb.session_id == "s1"
        tps = nwb.acquisition["TwoPhotonSeries"]
        assert tps.imaging_plane.device.name == "Microscope"
        assert tps.imaging_plane.optical_channel[0].emission_lambda == 510.0
        assert "row" in tps.description  # the orientation is stated in the file
    with h5py.File(lab.nwb(), "r") as f:
        ds = f["acquisition/TwoPhotonSeries/data"]
        assert ds.maxshape == (None, 32, 48) and ds.chunks == (1, 32, 48)
        # Nominal times are regular: NWB's starting_time + rate form, not 52 timestamps.
        assert "timestamps" not in f["acquisition/TwoPhotonSeries"]
        start = f["acquisition/TwoPhotonSeries/starting_time"]
        assert start[()] == 0.0 and start.attrs["rate"] == np.float32(30.0)
        assert start.attrs["unit"] == "seconds"


def test_convert_again_changes_nothing(lab: Lab) -> None:
    lab.tiff("a_00001.tif", random_frames(10))
    assert lab.run_cli("convert", str(lab.session_dir()), "--no-progress").returncode == 0
    before = (sha256(lab.nwb()), os.stat(lab.nwb()).st_mtime_ns)
    again = lab.run_cli("convert", str(lab.session_dir()), "--no-progress")
    assert again.returncode == 0, again.stderr
    assert (sha256(lab.nwb()), os.stat(lab.nwb()).st_mtime_ns) == before


def test_convert_accepts_folder_relative_to_rig_root(lab: Lab) -> None:
    lab.tiff("a_00001.tif", random_frames(3))
    proc = lab.run_cli("convert", "m1/tif/site1/s1", "--no-progress")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("compression", ["gzip", "lzf", "blosc-lz4", "blosc-zstd"])
def test_compression_is_lossless(make_lab, compression: str) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab(output={"compression": compression})
    frames = random_frames(12, shape=(64, 64), seed=3)
    frames[:, :32] //= 64  # some compressible structure
    lab.tiff("a_00001.tif", frames)
    assert lab.run_cli("convert", str(lab.session_dir()), "--no-progress").returncode == 0
    assert np.array_equal(nwb_frames(lab.nwb()), frames)
    with h5py.File(lab.nwb(), "r") as f:
        filters = f["acquisition/TwoPhotonSeries/data"]._filters
    assert filters, f"{compression}: no filter on the dataset"


def test_status_json_contract(lab: Lab) -> None:
    lab.tiff("a_00001.tif", random_frames(6))
    lab.tiff("a_00002.tif", random_frames(4, seed=1))
    assert lab.run_cli("convert", str(lab.session_dir()), "--no-progress").returncode == 0
    proc = lab.run_cli("status", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert isinstance(rows, list) and len(rows) == 1
    row = rows[0]
    for key in ("subject", "session", "state", "frames", "nwb_path", "problems"):
        assert key in row
    assert (row["subject"], row["session"], row["frames"]) == ("m1", "s1", 10)
    assert row["nwb_path"] == str(lab.nwb()) and row["problems"] == []
    assert row["state"] == "finished"
    table = lab.run_cli("status")
    assert "m1" in table.stdout and "finished" in table.stdout
    hist = lab.run_cli("status", "s1")
    assert hist.returncode == 0 and "a_00002.tif" in hist.stdout


def test_scanimage_style_layout(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab(rig={"frames": "{session}/{session}_*.tif", "subject": "mouse7",
                        "scan_file": "", "trial_file": ""})
    folder = lab.root / "exp3"
    names = ["exp3_00001_00002.tif", "exp3_00002_00001.tif", "exp3_00001_00001.tif"]
    data = {n: random_frames(5, seed=i) for i, n in enumerate(names)}
    for n, frames in data.items():
        from rig2nwb.testing.tiffs import write_tiff
        write_tiff(folder / n, frames)
    proc = lab.run_cli("convert", str(folder), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    out = lab.out / "sub-mouse7_ses-exp3.nwb"
    order = ["exp3_00001_00001.tif", "exp3_00001_00002.tif", "exp3_00002_00001.tif"]
    assert np.array_equal(nwb_frames(out), np.concatenate([data[n] for n in order]))


def test_convert_outside_rig_root_is_a_clear_error(lab: Lab, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = lab.run_cli("convert", str(tmp_path), "--no-progress")
    assert proc.returncode == 1
    assert "not inside rig.root" in proc.stderr and "Traceback" not in proc.stderr
    proc = lab.run_cli("convert", str(lab.root / "nope"), "--no-progress")
    assert proc.returncode == 1 and "no such folder" in proc.stderr


def test_convert_refuses_while_the_daemon_owns_the_state_folder(lab: Lab) -> None:
    lab.tiff("a_00001.tif", random_frames(4))
    daemon = lab.start_daemon()
    try:
        proc = lab.run_cli("convert", str(lab.session_dir()), "--no-progress")
        assert proc.returncode == 1
        assert "another rig2nwb process is using the state folder" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


def test_second_daemon_on_the_same_state_folder_stops_with_a_clear_error(lab: Lab) -> None:
    first = lab.start_daemon()
    try:
        second = lab.run_cli("run", timeout=120)
        assert second.returncode == 1
        assert "another rig2nwb process is using the state folder" in second.stderr
        assert first.poll() is None  # the first one is untouched
    finally:
        first.terminate()
        first.wait(timeout=30)
