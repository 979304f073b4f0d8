"""Files written with the defaults open in every NWB reader, without plugins.

Real readers, no mocks: plain h5py and pynwb in a child interpreter that never imports
hdf5plugin (and has no HDF5_PLUGIN_PATH), h5wasm under node (the HDF5 library of the web NWB
viewers), and Debian's h5dump. The expected values are the TIFF pages as tifffile reads them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from rig2nwb.nwb.filters import BUILT_IN
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.paths import REPO
from rig2nwb.testing.suite2p_folders import make_synthetic_folder, np_item, save_dict
from rig2nwb.testing.tiffs import random_frames, tiff_pages, write_tiff

READERS = REPO / "tests" / "readers"
SERIES = "acquisition/TwoPhotonSeries/data"


def plugin_free_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}
    env["HDF5_PLUGIN_PATH"] = "/nonexistent"  # no plugin can be found, whatever is installed
    return env


@pytest.fixture(scope="module")
def default_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A session converted with the shipped defaults (no compression override)."""
    base = tmp_path_factory.mktemp("defaults")
    lab = Lab(base, rig={"scan_file": "", "trial_file": ""})
    lab.sections["output"].pop("compression")  # the default pipeline, not the tests' "none"
    from rig2nwb.testing.configs import write_config

    write_config(lab.config_path, lab.sections)
    rng = np.random.default_rng(3)
    # Frames like a microscope's: a smooth background and noise (compressible), int16.
    base_img = (400 + 100 * np.sin(np.linspace(0, 6, 64))[:, None]).astype(np.float32)
    paths = []
    for i in range(2):
        frames = (base_img + rng.normal(0, 30, (25, 64, 80))).astype(np.int16)
        path = lab.session_dir() / f"run_{i + 1:05d}.tif"
        write_tiff(path, frames)
        paths.append(path)
    out = lab.run_cli("convert", str(lab.session_dir()))
    assert out.returncode == 0, out.stderr
    expected = np.concatenate([tiff_pages(p) for p in paths])
    return lab.nwb(), expected


def test_default_pipeline_is_shuffle_and_deflate(default_file: tuple[Path, np.ndarray]) -> None:
    path, _ = default_file
    with h5py.File(path, "r") as f:
        ds = f[SERIES]
        assert (ds.compression, ds.shuffle) == ("gzip", True)
        assert ds.compression_opts == 1
        stamps = f["acquisition/TwoPhotonSeries"]
        assert "starting_time" in stamps or stamps["timestamps"].compression == "gzip"


def test_plain_h5py_and_pynwb_without_plugins(default_file: tuple[Path, np.ndarray]) -> None:
    path, expected = default_file
    code = f"""
import sys, json
import h5py, numpy as np
from pynwb import NWBHDF5IO
with h5py.File({str(path)!r}, "r") as f:
    data = f[{SERIES!r}][:]
with NWBHDF5IO({str(path)!r}, "r") as io:
    first = np.asarray(io.read().acquisition["TwoPhotonSeries"].data[0])
assert "hdf5plugin" not in sys.modules, "a plugin library was imported"
np.save(sys.stdout.buffer, np.stack([first[None]]).reshape(1, *first.shape))
np.save(sys.stdout.buffer, data)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, env=plugin_free_env(),
                         timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    import io

    buf = io.BytesIO(out.stdout)
    first, data = np.load(buf), np.load(buf)
    np.testing.assert_array_equal(first[0], expected[0])
    np.testing.assert_array_equal(data, expected)


def _h5wasm() -> Path:
    if shutil.which("node") is None:
        pytest.skip("node is not installed (h5wasm runs under node)")
    if not (READERS / "node_modules" / "h5wasm").is_dir():
        pytest.skip("h5wasm is not installed: npm ci --prefix tests/readers (.ci/run does it)")
    return READERS / "read_frames.mjs"


def test_h5wasm_reads_the_frames(default_file: tuple[Path, np.ndarray]) -> None:
    script = _h5wasm()
    path, expected = default_file
    out = subprocess.run(["node", str(script), str(path), SERIES, "0", str(len(expected))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HDF5-DIAG" not in out.stderr  # what h5wasm prints (and then returns garbage) for blosc
    got = json.loads(out.stdout)
    assert got["shape"] == list(expected.shape)
    frames = np.array(got["frames"], dtype=np.int16).reshape(expected.shape)
    np.testing.assert_array_equal(frames, expected)


def test_h5dump_reads_a_frame(default_file: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    if shutil.which("h5dump") is None:
        pytest.skip("h5dump is not installed (Debian: hdf5-tools; .ci/run installs it)")
    path, expected = default_file
    rows, cols = expected.shape[1:]
    raw = tmp_path / "frame.bin"
    out = subprocess.run(["h5dump", "-d", f"/{SERIES}", "-s", "7,0,0", "-c", f"1,{rows},{cols}",
                          "-b", "LE", "-o", str(raw), str(path)], capture_output=True, text=True,
                         env=plugin_free_env(), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    frame = np.frombuffer(raw.read_bytes(), dtype="<i2").reshape(rows, cols)
    np.testing.assert_array_equal(frame, expected[7])


def _two_channel_suite2p(folder: Path, n_frames: int, shape: tuple[int, int]) -> None:
    """A synthetic suite2p folder for 2 planes x 2 channels (the second channel's traces,
    redcell and meanImg_chan2 added to each plane)."""
    make_synthetic_folder(folder, n_rois=4, n_frames=n_frames, Ly=shape[0], Lx=shape[1], nplanes=2)
    for plane in (folder / "plane0", folder / "plane1"):
        for name in ("F", "Fneu"):
            np.save(plane / f"{name}_chan2.npy", np.load(plane / f"{name}.npy") * 0.5)
        np.save(plane / "redcell.npy", np.tile([[1.0, 0.9]], (4, 1)).astype(np.float32))
        ops = np_item(plane / "ops.npy")
        ops.update(nchannels=2, functional_chan=1, meanImg_chan2=ops["meanImg"] * 0.5)
        save_dict(plane / "ops.npy", ops)


def test_every_dataset_uses_built_in_filters_only(tmp_path: Path) -> None:
    """Raw series (2 planes x 2 channels), timestamps, suite2p results for both planes and both
    channels (traces, pixel masks, images, motion offsets): no filter outside libhdf5's own."""
    lab = Lab(tmp_path, rig={"frames": "{subject}/{session}/*.tif", "scan_file": "",
                             "trial_file": ""},
              imaging={"planes": 2, "channels": 2}, suite2p={"settle_seconds": 0})
    lab.sections["output"].pop("compression")
    from rig2nwb.testing.configs import write_config

    write_config(lab.config_path, lab.sections)
    shape = (24, 32)
    folder = lab.root / "m1" / "s1"
    write_tiff(folder / "a_00001.tif", random_frames(40, shape, seed=1))  # 10 volumes of 4 pages
    out = lab.run_cli("convert", str(folder))
    assert out.returncode == 0, out.stderr
    _two_channel_suite2p(folder / "suite2p", n_frames=10, shape=shape)
    out = lab.run_cli("attach", str(folder))
    assert out.returncode == 0, out.stderr
    nwb = lab.out / "sub-m1_ses-s1.nwb"
    seen: list[str] = []
    outside: list[str] = []
    compressed: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        seen.append(name)
        plist = obj.id.get_create_plist()
        codes = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        outside.extend(f"{name}: filter {c}" for c in codes if c not in BUILT_IN)
        if codes:
            compressed.append(name)

    with h5py.File(nwb, "r") as f:
        f.visititems(visit)
    assert outside == []
    # The datasets that matter are compressed with the standard pipeline, not just left raw.
    for part in ("acquisition/TwoPhotonSeries_plane0_ch1/data", "pixel_mask",
                 "Backgrounds_plane0/meanImg", "Backgrounds_plane1/meanImg_chan2",
                 "Fluorescence/RoiResponseSeries_chan2_plane1/data", "MotionOffsets_plane1/data",
                 "DfOverF/DfOverF_plane0/data"):
        assert any(part in n for n in compressed), (part, [n for n in seen if part in n])
    status = json.loads(lab.run_cli("status", "--json").stdout)[0]
    assert status["opens_without_plugins"] is True and status["plugin_datasets"] == []
