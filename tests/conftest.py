"""Shared test helpers: configs written to disk, TIFFs written by tifffile, NWB read by h5py.

Expected frames always come from the test's own data (the arrays it wrote, or tifffile reading
the TIFF back), never from rig2nwb's code.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (Blosc filter for reading)
import numpy as np
import pytest
import tifffile

from rig2nwb.config.schema import Config, load_config

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RIG2NWB_SHARED", REPO.parent / "shared"))
SERIES = "acquisition/TwoPhotonSeries"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run long crash-fuzz/soak tests")
    parser.addoption("--crash-trials", type=int, default=None,
                     help="SIGKILLs in each crash test (default: 20 single-plane, 8 multi-plane)")
    parser.addoption("--figures", default=None,
                     help="append the fault/bad-input/security figures to this JSON-lines file "
                          "(tests/figures.py; benchmarks/selftest.py reads it)")


def pytest_configure(config: pytest.Config) -> None:
    figures = config.getoption("--figures", None)
    if figures:
        os.environ["RIG2NWB_FIGURES"] = str(Path(figures).resolve())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class Lab:
    """A temporary rig folder, output and state folders, and a config that points at them."""

    def __init__(self, base: Path, **overrides: dict[str, Any]) -> None:
        self.base = base
        self.root = base / "rig"
        self.out = base / "nwb"
        self.state = base / "state"
        for p in (self.root, self.out):
            p.mkdir(parents=True, exist_ok=True)
        self.sections: dict[str, dict[str, Any]] = {
            "rig": {"root": str(self.root)},
            "output": {"folder": str(self.out), "compression": "none", "min_free_mb": 0},
            "state": {"folder": str(self.state)},
            "watch": {"rescan_seconds": 2.0},
            "completion": {"settle_seconds": 0.5, "session_idle_seconds": 2.0},
            "append": {"batch_frames": 16, "commit_every_frames": 32},
            "session": {"timezone": "Europe/Berlin"},
            "subject": {"age": "P90D"},  # DANDI requires it: nwbinspector calls its absence critical
            "logging": {"format": "json", "file": str(base / "state" / "rig2nwb.log")},
            # Drawing the summary picture adds ~1.5 s to every check child; the tests about
            # pictures (and notifications carrying them) turn it back on.
            "status": {"summary_picture": False},
        }
        for section, values in overrides.items():
            self.sections.setdefault(section, {}).update(values)
        self.config_path = write_config(base / "config.toml", self.sections)

    def config(self) -> Config:
        return load_config(self.config_path)

    def session_dir(self, session: str = "s1", subject: str = "m1", site: str = "site1") -> Path:
        return self.root / subject / "tif" / site / session

    def tiff(self, name: str, frames: np.ndarray, session: str = "s1", subject: str = "m1",
             site: str = "site1") -> Path:
        path = self.session_dir(session, subject, site) / name
        write_tiff(path, frames)
        return path

    def lab_files(self, session: str = "s1", subject: str = "m1", *, n_frames: int) -> None:
        """The lab's scan file (onsets of ``n_frames`` frames at exactly 30 Hz, in ms: equal to
        the nominal timestamps) and a one-trial trial file."""
        txt = self.root / subject / "txt"
        txt.mkdir(parents=True, exist_ok=True)
        (txt / f"{session}_scan.txt").write_text(
            " ".join(repr(i * 1000.0 / 30.0) for i in range(n_frames)) + "\n")
        (txt / f"{session}_trial.txt").write_text("10 5 0 0.04 0 90\n")

    def nwb(self, session: str = "s1", subject: str = "m1") -> Path:
        return self.out / f"sub-{subject}_ses-{session}.nwb"

    def start_daemon(self, *, wait_until_watching: bool = True,
                     prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
        """`rig2nwb run` as a child process (supervisor + worker), optionally until it watches;
        ``prefix`` wraps the command (e.g. setpriv)."""
        daemon = subprocess.Popen(
            [*prefix, sys.executable, "-m", "rig2nwb", "run", "--config", str(self.config_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if wait_until_watching:
            log = self.state / "rig2nwb.log"
            try:
                wait_for(lambda: log.exists() and '"watching"' in log.read_text(), timeout=60,
                         what="the daemon to start watching")
            except AssertionError:
                daemon.kill()
                raise
        return daemon

    def run_cli(self, *args: str, timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rig2nwb", *args, "--config", str(self.config_path)],
            capture_output=True, text=True, timeout=timeout, **kw)


def write_tiff(path: Path, frames: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path) as tw:
        for f in frames:
            tw.write(f, contiguous=False, photometric="minisblack")


def append_pages(path: Path, frames: np.ndarray) -> None:
    """Add pages to an existing TIFF, as a writer that reopens its file does."""
    with tifffile.TiffWriter(path, append=True) as tw:
        for f in frames:
            tw.write(f, contiguous=False, photometric="minisblack")


def random_frames(n: int, shape: tuple[int, int] = (32, 48), seed: int = 0,
                  dtype: str = "int16") -> np.ndarray:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=(n, *shape), dtype=dtype, endpoint=True)


def tiff_pages(path: Path) -> np.ndarray:
    """Every page of the TIFF, read one by one by tifffile: the independent expectation.

    (``tifffile.imread`` would return only the first series, and each ``write()`` call of a
    rig that writes page by page starts a new series.)"""
    with tifffile.TiffFile(path) as tf:
        return np.stack([page.asarray() for page in tf.pages])


def nwb_frames(path: Path, series: str = "TwoPhotonSeries") -> np.ndarray:
    with h5py.File(path, "r") as f:
        return np.asarray(f[f"acquisition/{series}/data"][:])


def nwb_timestamps(path: Path, series: str = "TwoPhotonSeries") -> np.ndarray:
    """Frame times as NWB defines them: the timestamps dataset, or starting_time + i / rate."""
    with h5py.File(path, "r") as f:
        g = f[f"acquisition/{series}"]
        if "timestamps" in g:
            return np.asarray(g["timestamps"][:])
        start = g["starting_time"]
        return float(start[()]) + np.arange(g["data"].shape[0]) / float(start.attrs["rate"])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def remove_deep(top: Path) -> None:
    """Remove a folder tree of any depth without recursion (shutil.rmtree, and pytest's own
    cleanup of old temporary folders, recurse once per level and fail on a planted tree 1,200
    levels deep): every nested folder is first moved up beside ``top``, one rename at a time."""
    parent = top.parent
    stack, n = [top], 0
    while stack:
        folder = stack.pop()
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue
        for name in names:
            path = folder / name
            if path.is_dir() and not path.is_symlink():
                n += 1
                flat = parent / f".{top.name}.deep-{n}"
                os.rename(path, flat)
                stack.append(flat)
            else:
                path.unlink()
        folder.rmdir()


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.1,
             what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    yield Lab(tmp_path)


@pytest.fixture
def make_lab(tmp_path: Path) -> Callable[..., Lab]:
    counter = iter(range(1000))

    def make(**overrides: dict[str, Any]) -> Lab:
        return Lab(tmp_path / f"lab{next(counter)}", **overrides)

    return make


def run_service(lab: Lab, until: Callable[[Any], bool], timeout: float = 120) -> None:
    """Run the real service in this thread until ``until(engine)`` holds (stop after timeout)."""
    import threading

    from rig2nwb.logs import setup_from_config
    from rig2nwb.service.loop import Service

    cfg = lab.config()
    setup_from_config(cfg)
    service = Service(cfg)
    timer = threading.Timer(timeout, service.request_stop)
    timer.start()
    try:
        service.run(until=until)
    finally:
        timer.cancel()


def finished(*sessions: str, subject: str = "m1") -> Callable[[Any], bool]:
    """An ``until`` condition: every named session is finished in the ledger."""
    def check(engine: Any) -> bool:
        rows = [engine.ledger.session(subject, s) for s in sessions]
        return all(r is not None and r.state == "finished" for r in rows)
    return check


def shared_fixture(*parts: str) -> Path:
    path = SHARED.joinpath("fixtures", *parts)
    if not path.exists():
        pytest.skip(f"shared fixture {path} not present (set RIG2NWB_SHARED to ../shared)")
    return path
