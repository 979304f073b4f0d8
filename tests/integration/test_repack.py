"""``rig2nwb repack``: a blosc file rewritten with built-in filters, bit for bit the same content,
and a SIGKILL at any moment leaves one complete, valid file.

Expectations are independent of rig2nwb: the original file's values are read with h5py and
hdf5plugin before the repack, the repacked file is read in a child interpreter without plugins,
and validity is pynwb's validator.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (reads the original blosc file)
import numpy as np
import pytest

from rig2nwb.testing.labs import Lab
from rig2nwb.testing.tiffs import random_frames, tiff_pages, write_tiff

SERIES = "acquisition/TwoPhotonSeries/data"


def blosc_session(tmp_path: Path, pages: int = 60, shape: tuple[int, int] = (64, 80)) -> Lab:
    lab = Lab(tmp_path, rig={"scan_file": "", "trial_file": ""},
              output={"compression": "blosc-lz4"})
    for i in range(2):
        write_tiff(lab.session_dir() / f"a_{i + 1:05d}.tif",
                   random_frames(pages // 2, shape, seed=i))
    out = lab.run_cli("convert", str(lab.session_dir()))
    assert out.returncode == 0, out.stderr
    return lab


def everything(path: Path) -> dict[str, Any]:
    """Every dataset's values and every attribute, by path (references by their target)."""
    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj: Any) -> None:
            for key, value in obj.attrs.items():
                out[f"{name}@{key}"] = f[value].name if isinstance(value, h5py.Reference) else (
                    np.asarray(value).tolist() if isinstance(value, np.ndarray) else value)
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                if h5py.check_ref_dtype(obj.dtype) is not None:
                    data = [f[r].name if r else "" for r in np.asarray(data).reshape(-1)]
                out[name] = data
        f.visititems(visit)
    return out


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            floats = np.asarray(x).dtype.kind == "f"
            assert np.array_equal(np.asarray(x), np.asarray(y), equal_nan=floats), key
        else:
            assert x == y, key


def test_repack_of_a_blosc_file(tmp_path: Path) -> None:
    lab = blosc_session(tmp_path)
    nwb = lab.nwb()
    with h5py.File(nwb, "r") as f:
        assert f[SERIES].compression != "gzip"  # blosc: needs a plugin
    before = everything(nwb)
    status = json.loads(lab.run_cli("status", "--json").stdout)[0]
    assert status["opens_without_plugins"] is False
    assert any("TwoPhotonSeries/data" in d and "blosc" in d for d in status["plugin_datasets"])

    out = lab.run_cli("repack", "m1/s1")
    assert out.returncode == 0, out.stderr
    assert "every dataset compared equal" in out.stdout
    assert_same(before, everything(nwb))  # bit for bit the same content
    with h5py.File(nwb, "r") as f:
        assert (f[SERIES].compression, f[SERIES].shuffle) == ("gzip", True)
    code = (f"import h5py, sys, numpy as np\nf = h5py.File({str(nwb)!r}, 'r')\n"
            f"np.save(sys.stdout.buffer, f[{SERIES!r}][:])\n"
            "assert 'hdf5plugin' not in sys.modules\n")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                           env={**os.environ, "HDF5_PLUGIN_PATH": "/nonexistent"})
    assert child.returncode == 0, child.stderr.decode()[-1500:]
    import io

    expected = np.concatenate([tiff_pages(p) for p in sorted(lab.session_dir().glob("*.tif"))])
    np.testing.assert_array_equal(np.load(io.BytesIO(child.stdout)), expected)
    status = json.loads(lab.run_cli("status", "--json").stdout)[0]
    assert status["opens_without_plugins"] is True and status["validation_ok"] is True
    again = lab.run_cli("repack", "m1/s1")
    mtime = nwb.stat().st_mtime_ns
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert nwb.stat().st_mtime_ns == mtime


def test_repack_refuses_while_the_daemon_owns_the_session(tmp_path: Path) -> None:
    lab = blosc_session(tmp_path, pages=10)
    daemon = lab.start_daemon()
    try:
        before = lab.nwb().read_bytes()
        out = lab.run_cli("repack", "m1/s1")
        assert out.returncode == 1 and "the running daemon owns it" in out.stderr
        assert lab.nwb().read_bytes() == before
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)


def _valid(path: Path) -> bool:
    from pynwb import validate

    result: Any = validate(path=str(path))
    errors = result[0] if isinstance(result, tuple) else result
    return not list(errors)


@pytest.mark.parametrize("kills", [pytest.param(8, id="ci"), pytest.param(40, id="slow",
                                                                          marks=pytest.mark.slow)])
def test_sigkill_during_repack_leaves_one_complete_valid_file(tmp_path: Path, kills: int) -> None:
    lab = blosc_session(tmp_path, pages=600, shape=(128, 128))  # ~1-2 s of repacking
    pristine = tmp_path / "pristine.nwb"
    shutil.copy2(lab.nwb(), pristine)
    before = everything(pristine)
    nwb = tmp_path / "alone" / "x.nwb"  # a file of no session: repacked by path
    nwb.parent.mkdir()

    def repack() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "rig2nwb", "repack", str(nwb), "--config",
                                 str(lab.config_path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    shutil.copy2(pristine, nwb)
    t0 = time.monotonic()
    assert repack().wait(timeout=300) == 0
    duration = time.monotonic() - t0
    rng = random.Random(7)
    outcomes = {"original": 0, "repacked": 0}
    for trial in range(kills):
        shutil.copy2(pristine, nwb)
        proc = repack()
        time.sleep(rng.uniform(0.5, 1.3) * duration)  # most of a run is start-up and copying
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # exactly one file under the name, complete and valid; a leftover copy is not the file
        with h5py.File(nwb, "r") as f:
            kind = "repacked" if f[SERIES].compression == "gzip" else "original"
        outcomes[kind] += 1
        assert_same(before, everything(nwb))
        assert _valid(nwb), f"trial {trial} ({kind})"
        # the next repack finishes the job and removes the interrupted copy
        out = repack()
        assert out.wait(timeout=300) == 0, out.stderr.read() if out.stderr else ""
        assert not list(nwb.parent.glob("~*.repacking.nwb"))
        assert_same(before, everything(nwb))
    print(f"\nrepack SIGKILLs: {kills}, the file was found {outcomes}")
