#!/usr/bin/env python3
"""Throughput, memory and latency benchmark of rig2nwb's append path.

Generates synthetic 512x512 int16 rig TIFFs in a work folder, then measures, on the same disk:

* ``rig2nwb convert`` (a child process) against a plain h5py append of the same frames (also a
  child process; the "practical limit"): wall time, MB/s, peak RSS, output size, correctness;
* the running daemon's latency from a file's completion signal to its "tiff appended" log line,
  while a simulated rig writes files page by page.

It prints figures and asserts nothing: the exit status is 1 only when a run failed or its output
did not match the TIFFs. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import psutil  # type: ignore[import-untyped]  # no stubs installed
import tifffile

from childrun import Measured, measure

FRAME_SHAPE = (512, 512)
DTYPE = np.dtype(np.int16)
FRAME_BYTES = FRAME_SHAPE[0] * FRAME_SHAPE[1] * DTYPE.itemsize
FRAMES_PER_FILE = 1000  # ~524 MB per TIFF
BLOCK_FRAMES = 100  # also the read/append batch of both methods (rig2nwb's default batch_frames)
SUBJECT = "mouse01"
SITE = "site1"
SERIES_DATA = "acquisition/TwoPhotonSeries/data"
COMPRESSIONS = ("none", "gzip", "lzf", "blosc-lz4", "blosc-zstd")
H5PY_CHILD = "_h5py-append"  # hidden subcommand: the h5py baseline runs in its own process
RSS_GOAL_MB = 300.0
RATIO_GOAL = 0.8
LATENCY_GOAL_S = 2.0

Frames = npt.NDArray[np.int16]

# --- synthetic data ---------------------------------------------------------------------------


class FrameSource:
    """Synthetic two-photon frames: a smooth vignetted background, a few cells that flash now
    and then, and Poisson-like shot noise (which is what limits compression on real data).

    Noise is the costly part, so only ``n_blocks`` distinct blocks of BLOCK_FRAMES frames are
    generated; block ``b`` of a session is distinct block ``b % n_blocks`` plus a small offset
    ``b % 97``, so no two blocks of a session are bit-identical (a misplaced block would fail
    verification) and a 4 GB session never sits in RAM.
    """

    def __init__(self, seed: int, n_blocks: int = 4, n_cells: int = 30, gain: float = 2.0) -> None:
        rng = np.random.default_rng(seed)
        rows, cols = FRAME_SHAPE
        rr, cc = np.mgrid[0:rows, 0:cols].astype(np.float32)
        vignette = 1.0 - 0.3 * (((rr - rows / 2) / rows) ** 2 + ((cc - cols / 2) / cols) ** 2)
        self._background = (400.0 * vignette).astype(np.float32)
        centers = rng.uniform(40, min(rows, cols) - 40, (n_cells, 2)).astype(np.float32)
        dist2 = ((rr[None] - centers[:, 0, None, None]) ** 2
                 + (cc[None] - centers[:, 1, None, None]) ** 2)
        self._footprints = np.exp(-dist2 / (2 * 6.0**2)).astype(np.float32).reshape(n_cells, -1)
        self._gain = gain
        self.blocks = [self._make_block(rng) for _ in range(n_blocks)]

    def _make_block(self, rng: np.random.Generator) -> Frames:
        rows, cols = FRAME_SHAPE
        n_cells = self._footprints.shape[0]
        out = np.empty((BLOCK_FRAMES, rows, cols), dtype=DTYPE)
        for a in range(0, BLOCK_FRAMES, 10):  # 10 frames at a time keeps float temporaries small
            b = min(BLOCK_FRAMES, a + 10)
            active = rng.random((b - a, n_cells)) < 0.1
            amp = (rng.exponential(300.0, (b - a, n_cells)) * active).astype(np.float32)
            signal_ = self._background + (amp @ self._footprints).reshape(b - a, rows, cols)
            noise = rng.standard_normal(signal_.shape, dtype=np.float32)
            noisy = signal_ + noise * np.sqrt(self._gain * signal_)  # shot noise ~ sqrt(signal)
            out[a:b] = np.clip(noisy, -32768, 32767).astype(DTYPE)
        return out

    def block(self, b: int) -> Frames:
        return self.blocks[b % len(self.blocks)] + DTYPE.type(b % 97)

    def frame(self, g: int) -> Frames:
        b, i = divmod(g, BLOCK_FRAMES)
        frame: Frames = self.blocks[b % len(self.blocks)][i] + DTYPE.type(b % 97)
        return frame


@dataclass(frozen=True)
class Dataset:
    label: str  # "1 GB"
    session: str
    folder: Path
    tiffs: tuple[Path, ...]
    frames: int

    @property
    def raw_bytes(self) -> int:
        return self.frames * FRAME_BYTES


def session_folder(rig_root: Path, session: str) -> Path:
    """The default rig layout: {subject}/tif/{site}/{session}/*.tif."""
    return rig_root / SUBJECT / "tif" / SITE / session


def write_dataset(rig_root: Path, gb: float, source: FrameSource) -> Dataset:
    """Write ``gb`` GB (1e9 bytes) of frames as TIFFs of FRAMES_PER_FILE pages, one page a frame."""
    frames = max(1, round(gb * 1e9 / FRAME_BYTES))
    session = f"bench_{gb:g}gb".replace(".", "p")
    folder = session_folder(rig_root, session)
    folder.mkdir(parents=True)
    tiffs: list[Path] = []
    # FRAMES_PER_FILE is a multiple of BLOCK_FRAMES, so every file starts on a block boundary.
    for i, start in enumerate(range(0, frames, FRAMES_PER_FILE)):
        path = folder / f"{session}_{i + 1:05d}.tif"
        stop = min(frames, start + FRAMES_PER_FILE)
        with tifffile.TiffWriter(path) as tw:
            for a in range(start, stop, BLOCK_FRAMES):
                for frame in source.block(a // BLOCK_FRAMES)[: stop - a]:
                    tw.write(frame, contiguous=False, photometric="minisblack")
        tiffs.append(path)
    return Dataset(f"{gb:g} GB", session, folder, tuple(tiffs), frames)


def tiff_page(ds: Dataset, g: int) -> Frames:
    path = ds.tiffs[g // FRAMES_PER_FILE]
    with tifffile.TiffFile(path) as tf:
        page: Frames = tf.pages[g % FRAMES_PER_FILE].asarray()
    return page


# --- measuring child processes ----------------------------------------------------------------


def child_timeout(ds: Dataset, compression: str = "none") -> float:
    # Generous: only a hung child should ever reach it (gzip-1 runs at ~60 MB/s on 2 cores).
    floor_mbps = 10.0 if compression == "gzip" else 40.0
    return 120.0 + ds.raw_bytes / 1e6 / floor_mbps


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict):
                records.append(rec)
    return records


def last_lines(path: Path, n: int = 3) -> str:
    if not path.exists():
        return ""
    lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return " | ".join(lines[-n:])


# --- the two methods ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    size: str
    method: str
    m: Measured
    raw_bytes: int
    loop_seconds: float | None  # time inside the append loop(s), start-up excluded
    output_bytes: int | None
    check: str

    @property
    def ok(self) -> bool:
        return self.m.rc == 0 and self.check == "OK"

    @property
    def mbps(self) -> float:
        return self.raw_bytes / 1e6 / self.m.wall if self.m.wall > 0 else math.nan

    @property
    def loop_mbps(self) -> float:
        if not self.loop_seconds:
            return math.nan
        return self.raw_bytes / 1e6 / self.loop_seconds


def h5py_append(out: Path, tiffs: Sequence[Path], batch: int, gzip_level: int | None = None) -> float:
    """The practical limit: TIFF pages in batches to a one-frame-chunked dataset (uncompressed,
    or HDF5's own gzip at ``gzip_level``), flushed per batch and fsynced per file (rig2nwb's
    durability points). Returns loop seconds."""
    import h5py

    with tifffile.TiffFile(tiffs[0]) as tf:
        shape, dtype = tf.pages.first.shape, tf.pages.first.dtype
    t0 = time.perf_counter()
    n = 0
    with h5py.File(out, "w") as f:
        gzip = {} if gzip_level is None else {"compression": "gzip",
                                               "compression_opts": gzip_level}
        data = f.create_dataset("data", shape=(0, *shape), maxshape=(None, *shape),
                                chunks=(1, *shape), dtype=dtype, **gzip)
        for path in tiffs:
            with tifffile.TiffFile(path) as tf:
                # The same reading mode as rig2nwb's read_batches, so only the writing differs.
                tf.pages.cache = False
                tf.pages.useframes = True
                pages = len(tf.pages)
                for a in range(0, pages, batch):
                    b = min(pages, a + batch)
                    frames = tf.asarray(key=range(a, b), maxworkers=1).reshape(b - a, *shape)
                    data.resize(n + b - a, axis=0)
                    data[n:n + b - a] = frames
                    n += b - a
                    f.flush()
            os.fsync(f.id.get_vfd_handle())
    return time.perf_counter() - t0


def h5py_child(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog=f"append_throughput.py {H5PY_CHILD}")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--result", type=Path, required=True)
    p.add_argument("--batch", type=int, default=BLOCK_FRAMES)
    p.add_argument("tiffs", type=Path, nargs="+")
    args = p.parse_args(argv)
    seconds = h5py_append(args.out, args.tiffs, args.batch)
    args.result.write_text(json.dumps({"loop_seconds": seconds}))
    return 0


def verify(path: Path, dataset: str, ds: Dataset) -> str:
    """Cheap correctness check: shape, and the first, middle and last frame against the TIFFs."""
    import h5py
    import hdf5plugin  # noqa: F401  (registers the Blosc filter; without it reads fail)

    try:
        with h5py.File(path, "r") as f:
            data = f[dataset]
            if tuple(data.shape) != (ds.frames, *FRAME_SHAPE):
                return f"MISMATCH shape {tuple(data.shape)}"
            for g in sorted({0, ds.frames // 2, ds.frames - 1}):
                if not np.array_equal(data[g], tiff_page(ds, g)):
                    return f"MISMATCH frame {g}"
    except (OSError, KeyError) as exc:
        return f"MISMATCH ({exc})"
    return "OK"


def run_h5py(ds: Dataset, run_dir: Path, keep: bool) -> RunResult:
    run_dir.mkdir(parents=True)
    out = run_dir / "append.h5"
    loop = run_dir / "loop.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), H5PY_CHILD, "--out", str(out),
           "--result", str(loop), *map(str, ds.tiffs)]
    m = measure(cmd, run_dir, child_timeout(ds))
    loop_s = float(json.loads(loop.read_text())["loop_seconds"]) if loop.exists() else None
    size = out.stat().st_size if out.exists() else None
    check = verify(out, "data", ds) if m.rc == 0 else failure_text(m, run_dir)
    if not keep:
        out.unlink(missing_ok=True)
    return RunResult(ds.label, "h5py append", m, ds.raw_bytes, loop_s, size, check)


def write_config(path: Path, *, rig_root: Path, output: Path, state: Path, compression: str,
                 settle: float | None = None, rescan: float | None = None,
                 signals: Sequence[str] | None = None) -> None:
    """A minimal rig2nwb config; everything not written here keeps rig2nwb's defaults."""
    def q(value: object) -> str:
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string

    lines = ["# Written by benchmarks/append_throughput.py", "[rig]", 'name = "bench"',
             f"root = {q(rig_root)}", "", "[output]", f"folder = {q(output)}",
             f"compression = {q(compression)}",
             # The post-session file check (pynwb validator + nwbinspector, ~1-2 s in a child
             # process after the session) is not part of the append path measured here.
             "check_files = false", "", "[state]", f"folder = {q(state)}", "",
             "[subject]", 'age = "P90D"', ""]
    completion = []
    if settle is not None:
        completion.append(f"settle_seconds = {float(settle)!r}")
    if signals is not None:
        completion.append("signals = " + json.dumps(list(signals)))
    if completion:
        lines += ["[completion]", *completion, ""]
    if rescan is not None:
        lines += ["[watch]", f"rescan_seconds = {float(rescan)!r}", ""]
    # JSON explicitly (not "auto"): the benchmark parses the log lines.
    lines += ["[logging]", 'level = "INFO"', 'format = "json"', ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def run_convert(ds: Dataset, compression: str, rig_root: Path, run_dir: Path,
                keep: bool) -> RunResult:
    out_dir = run_dir / "nwb"
    out_dir.mkdir(parents=True)  # output.folder must exist; a fresh ledger per run
    cfg = run_dir / "config.toml"
    write_config(cfg, rig_root=rig_root, output=out_dir, state=run_dir / "state",
                 compression=compression)
    cmd = [sys.executable, "-m", "rig2nwb", "convert", str(ds.folder), "--config", str(cfg),
           "--no-progress"]
    m = measure(cmd, run_dir, child_timeout(ds, compression))
    logs = read_json_lines(run_dir / "stderr.log")
    # Per-file append time as the engine reports it: read + write + fsync + ledger commit.
    appended = [r for r in logs if r.get("event") == "tiff appended"]
    loop_s = sum(float(r.get("seconds") or 0.0) for r in appended) if appended else None
    nwbs = sorted(out_dir.glob("*.nwb"))
    size = nwbs[0].stat().st_size if nwbs else None
    check = verify(nwbs[0], SERIES_DATA, ds) if m.rc == 0 and nwbs else failure_text(m, run_dir)
    if not keep:
        shutil.rmtree(out_dir, ignore_errors=True)
    return RunResult(ds.label, f"rig2nwb {compression}", m, ds.raw_bytes, loop_s, size, check)


def failure_text(m: Measured, run_dir: Path) -> str:
    why = "timeout" if m.rc is None else f"rc={m.rc}"
    return f"FAILED {why}: {last_lines(run_dir / 'stderr.log', 2)[:300]}"


# --- latency of the running daemon -----------------------------------------------------------


@dataclass(frozen=True)
class RigFile:
    rel: str  # rig-relative POSIX path, as the daemon logs it
    created: float  # wall clock (time.time()) of each event
    last_page: float
    closed: float


def write_rig_session(rig_root: Path, session: str, n_files: int, frames_per_file: int,
                      rate: float, source: FrameSource) -> list[RigFile]:
    """Write TIFFs page by page at ``rate`` Hz, flushed after every page, like a rig."""
    folder = session_folder(rig_root, session)
    folder.mkdir(parents=True, exist_ok=True)  # a rig creates the session folder at start
    files: list[RigFile] = []
    g = 0
    due = time.monotonic()
    for i in range(n_files):
        path = folder / f"{session}_{i + 1:05d}.tif"
        with tifffile.TiffWriter(path) as tw:
            created = last_page = time.time()
            for _ in range(frames_per_file):
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pace before the page, so close follows the last page
                tw.write(source.frame(g), contiguous=False, photometric="minisblack")
                tw.filehandle.flush()
                last_page = time.time()
                due += 1.0 / rate
                g += 1
        files.append(RigFile(path.relative_to(rig_root).as_posix(), created, last_page,
                             time.time()))
    return files


class DaemonLog:
    """Reads the daemon's JSON log lines from its stderr on a thread (a full pipe would block
    the daemon) and keeps a copy on disk."""

    def __init__(self, stream: IO[str], copy_to: Path) -> None:
        self._stream = stream
        self._copy_to = copy_to
        self._lock = threading.Lock()
        self._records: list[dict[str, Any]] = []
        self.watching = threading.Event()
        self.thread = threading.Thread(target=self._read, name="daemon-log", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with open(self._copy_to, "w", encoding="utf-8") as copy:
            for line in self._stream:
                copy.write(line)
                copy.flush()
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(rec, dict):
                    continue
                with self._lock:
                    self._records.append(rec)
                if rec.get("event") == "watching":
                    self.watching.set()

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._records)

    def appended_at(self) -> dict[str, float]:
        """File (rig-relative) -> wall-clock time of its "tiff appended" line."""
        out: dict[str, float] = {}
        for rec in self.records():
            if rec.get("event") == "tiff appended" and "file" in rec and "timestamp" in rec:
                out[str(rec["file"])] = datetime.fromisoformat(str(rec["timestamp"])).timestamp()
        return out


@dataclass(frozen=True)
class Latency:
    file: str
    signal: str  # next_file or stable
    signal_time: float
    closed: float
    committed: float | None

    @property
    def latency(self) -> float | None:
        return None if self.committed is None else self.committed - self.signal_time

    @property
    def after_close(self) -> float | None:
        return None if self.committed is None else self.committed - self.closed


@dataclass(frozen=True)
class LatencyResult:
    compression: str
    settle: float
    signals: str
    files: int
    frames_per_file: int
    rate: float
    startup_s: float | None
    peak_rss: int | None
    exit_s: float | None
    exit_rc: int | None
    latencies: list[Latency]
    warnings: list[str]


def one_line(text: str, limit: int = 200) -> str:
    # Captured library warnings (watchdog's repr of its whole watch table) can be pages long.
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def tree_hwm(pid: int) -> int | None:
    """Peak RSS of the largest process in a live tree (``rig2nwb run`` is a small supervisor
    whose worker does the work), in bytes."""
    try:
        pids = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        pids = [pid]
    peaks = [h for h in (vm_hwm(p) for p in pids) if h is not None]
    return max(peaks) if peaks else None


def vm_hwm(pid: int) -> int | None:
    """Peak RSS of a live process (Linux /proc VmHWM), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def completion_signals(files: list[RigFile], settle: float,
                       committed: dict[str, float]) -> list[Latency]:
    """File k completes when file k+1 is created (next_file); the last one when its last page is
    settle seconds old (stable)."""
    out: list[Latency] = []
    for k, f in enumerate(files):
        if k + 1 < len(files):
            kind, at = "next_file", files[k + 1].created
        else:
            kind, at = "stable", f.last_page + settle
        out.append(Latency(f.rel, kind, at, f.closed, committed.get(f.rel)))
    return out


def stop_daemon(proc: subprocess.Popen[str]) -> tuple[float | None, int | None]:
    """SIGTERM, then wait; returns (seconds to exit, exit code)."""
    if proc.poll() is not None:
        return None, proc.returncode
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None, None
    return time.monotonic() - t0, rc


def run_latency(args: argparse.Namespace, base: Path, source: FrameSource) -> LatencyResult:
    rig_root, out_dir = base / "rig", base / "nwb"
    rig_root.mkdir(parents=True)
    out_dir.mkdir()
    signals = args.latency_signals.split(",") if args.latency_signals else None
    cfg = base / "config.toml"
    write_config(cfg, rig_root=rig_root, output=out_dir, state=base / "state",
                 compression=args.latency_compression, settle=args.latency_settle, rescan=30,
                 signals=signals)
    session = "latency_" + datetime.now().strftime("%Y%m%d_%H%M%S")
    t0 = time.monotonic()
    with open(base / "daemon.stdout.log", "wb") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "rig2nwb", "run", "--config", str(cfg)],
                                stdout=stdout, stderr=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stderr is not None
    log = DaemonLog(proc.stderr, base / "daemon.log")
    startup: float | None = None
    hwm: int | None = None
    rig: list[RigFile] = []
    try:
        # Poll, so a daemon that exits at start-up (bad config, lock held) is reported at once.
        while not log.watching.wait(0.2) and proc.poll() is None and time.monotonic() - t0 < 120:
            pass
        if log.watching.is_set():
            startup = time.monotonic() - t0
            rig = write_rig_session(rig_root, session, args.latency_files, args.latency_frames,
                                    args.latency_rate, source)
            # Worst legitimate case: the stable signal plus one full rescan, plus the append.
            deadline = time.monotonic() + args.latency_settle + 30 + 30
            wanted = {f.rel for f in rig}
            while time.monotonic() < deadline and proc.poll() is None:
                if wanted <= set(log.appended_at()):
                    break
                time.sleep(0.1)
            hwm = tree_hwm(proc.pid)
    finally:
        exit_s, rc = stop_daemon(proc)
        log.thread.join(timeout=10)
    warnings = [one_line(f"{r.get('level')}: {r.get('event')} {r.get('problem') or r.get('error') or ''}")
                for r in log.records() if r.get("level") in ("warning", "error", "critical")]
    if startup is None:
        warnings.append(f"never logged 'watching'; stderr ends: {last_lines(base / 'daemon.log')}")
    return LatencyResult(
        compression=args.latency_compression, settle=args.latency_settle,
        signals=args.latency_signals or "default", files=args.latency_files,
        frames_per_file=args.latency_frames, rate=args.latency_rate, startup_s=startup,
        peak_rss=hwm, exit_s=exit_s, exit_rc=rc,
        latencies=completion_signals(rig, args.latency_settle, log.appended_at()),
        warnings=warnings)


# --- reporting -----------------------------------------------------------------------------------


def fmt(value: float | int | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def environment_lines(workdir: Path) -> list[str]:
    from importlib.metadata import version

    import h5py
    import hdf5plugin

    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "daemon"],
                           capture_output=True, text=True, check=False).stdout.strip()
    mount = max((p for p in psutil.disk_partitions(all=True)
                 if str(workdir.resolve()).startswith(p.mountpoint)),
                key=lambda p: len(p.mountpoint), default=None)
    # Mount options matter: e.g. "discard" makes deleting the previous run's output cost I/O.
    disk = f"{mount.device} ({mount.fstype}, {mount.opts}) at {mount.mountpoint}" if mount else "?"
    vm = psutil.virtual_memory()
    return [
        f"rig2nwb {version('rig2nwb')} (git {head or '?'}"
        f"{', daemon/ has uncommitted changes' if dirty else ''}); "
        f"h5py {h5py.__version__} / HDF5 {h5py.version.hdf5_version}; tifffile "
        f"{tifffile.__version__}; hdf5plugin {hdf5plugin.version}; numpy {np.__version__}",
        f"{psutil.cpu_count()} CPUs, load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"RAM {vm.total / 1e9:.1f} GB ({vm.available / 1e9:.1f} GB available)",
        f"workdir {workdir} on {disk}",
    ]


def cache_note(ds: Dataset) -> str:
    # The page cache cannot be dropped reliably without root; just say what to expect.
    avail = psutil.virtual_memory().available
    likely = "yes" if ds.raw_bytes * 1.2 < avail else "partly at best"
    return (f"{ds.label}: {ds.frames} frames in {len(ds.tiffs)} TIFF(s), "
            f"{ds.raw_bytes / 1e6:.0f} MB raw; TIFFs likely in the page cache: {likely} "
            f"(just written, {avail / 1e9:.1f} GB RAM available)")


def median_run(runs: list[RunResult]) -> RunResult:
    """Repeats: the run with the median wall time, with the worst peak RSS and any failure."""
    ordered = sorted(runs, key=lambda r: r.m.wall)
    mid = ordered[(len(ordered) - 1) // 2]
    worst_rss = max(r.m.peak_rss for r in runs)
    check = next((r.check for r in runs if r.check != "OK"), "OK")
    m = Measured(mid.m.rc, mid.m.wall, worst_rss, mid.m.cpu)
    return RunResult(mid.size, mid.method, m, mid.raw_bytes, mid.loop_seconds, mid.output_bytes,
                     check)


def throughput_table(results: list[RunResult]) -> list[str]:
    head = (f"{'size':<8}{'method':<20}{'wall s':>8}{'MB/s':>8}{'ratio':>7}{'loop MB/s':>11}"
            f"{'loop ratio':>11}{'CPU s':>8}{'peak RSS MB':>13}{'output MB':>11}{'raw/out':>9}"
            f"  check")
    lines = [head, "-" * len(head)]
    for r in results:
        base = next((b for b in results if b.size == r.size and b.method == "h5py append"), None)
        ratio = r.mbps / base.mbps if base else math.nan
        loop_ratio = r.loop_mbps / base.loop_mbps if base else math.nan
        size_ratio = r.raw_bytes / r.output_bytes if r.output_bytes else None
        lines.append(
            f"{r.size:<8}{r.method:<20}{fmt(r.m.wall, '.2f'):>8}{fmt(r.mbps, '.0f'):>8}"
            f"{fmt(ratio, '.2f'):>7}{fmt(r.loop_mbps, '.0f'):>11}{fmt(loop_ratio, '.2f'):>11}"
            f"{fmt(r.m.cpu, '.2f'):>8}{fmt(r.m.peak_rss / 1e6, '.0f'):>13}"
            f"{fmt(r.output_bytes / 1e6 if r.output_bytes else None, '.0f'):>11}"
            f"{fmt(size_ratio, '.2f'):>9}  {r.check}")
    return lines


def goal_lines(results: list[RunResult]) -> list[str]:
    lines: list[str] = []
    for r in results:
        if r.method != "rig2nwb none":
            continue
        base = next((b for b in results if b.size == r.size and b.method == "h5py append"), None)
        if base is None:
            continue
        ratio = r.mbps / base.mbps
        verdict = "met" if ratio >= RATIO_GOAL else "not met"
        lines.append(f"goal rig2nwb(none) / h5py MB/s >= {RATIO_GOAL}: {r.size}: {ratio:.2f} "
                     f"({verdict}; loop-only {r.loop_mbps / base.loop_mbps:.2f})")
    convert = [r for r in results if r.method.startswith("rig2nwb") and r.m.peak_rss]
    if convert:
        worst = max(convert, key=lambda r: r.m.peak_rss)
        verdict = "met" if worst.m.peak_rss / 1e6 <= RSS_GOAL_MB else "not met"
        lines.append(f"goal peak RSS <= {RSS_GOAL_MB:.0f} MB: worst {worst.m.peak_rss / 1e6:.0f} MB "
                     f"({worst.size} {worst.method}; {verdict})")
        sizes = sorted({r.size for r in convert}, key=lambda s: float(s.split()[0]))
        if len(sizes) > 1:
            per = {s: max(r.m.peak_rss for r in convert if r.size == s) / 1e6 for s in sizes}
            lines.append("peak RSS by session size (rig2nwb, worst over compressions): "
                         + ", ".join(f"{s}: {v:.0f} MB" for s, v in per.items())
                         + f" (spread {max(per.values()) - min(per.values()):.0f} MB)")
    lines.append("ratio = MB/s / h5py MB/s of the same size, MB/s = raw frame bytes / wall of the "
                 "whole child process (start-up, imports and NWB creation included); loop = time "
                 "inside the append loops only (rig2nwb: sum of its 'tiff appended' seconds)")
    return lines


def percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    arr = np.asarray(values)
    return (f"p50 {np.percentile(arr, 50):6.2f} s  p95 {np.percentile(arr, 95):6.2f} s  "
            f"max {arr.max():6.2f} s  (n={len(values)})")


def latency_lines(res: LatencyResult) -> list[str]:
    lines = [
        f"latency: daemon ({res.compression}, completion.settle_seconds={res.settle:g}, signals "
        f"{res.signals}, rescan 30 s), rig writing {res.files} file(s) x {res.frames_per_file} "
        f"frames at {res.rate:g} Hz",
        f"  start-up to 'watching': {fmt(res.startup_s, '.2f')} s; peak RSS "
        f"{fmt(res.peak_rss / 1e6 if res.peak_rss else None, '.0f')} MB; exit after SIGTERM: "
        f"{fmt(res.exit_s, '.2f')} s (rc {fmt(res.exit_rc, 'd')})",
    ]
    for kind in ("next_file", "stable"):
        vals = [x.latency for x in res.latencies if x.signal == kind and x.latency is not None]
        lines.append(f"  committed - signal, {kind:<9}: {percentiles(vals)}")
    every = [x.latency for x in res.latencies if x.latency is not None]
    lines.append(f"  committed - signal, all      : {percentiles(every)}")
    closed = [x.after_close for x in res.latencies if x.after_close is not None]
    lines.append(f"  committed - file closed (ref): {percentiles(closed)}")
    missing = [x.file for x in res.latencies if x.committed is None]
    if missing:
        lines.append(f"  NOT committed before the deadline: {', '.join(missing)}")
    lines.append(f"  goal: p95 <= {LATENCY_GOAL_S:g} s after the signal (the stable signal time "
                 f"already includes settle_seconds={res.settle:g}; next_file has no settle)")
    if res.signals == "default" or "close_write" in res.signals:
        lines.append("  note: close_write is enabled, so on Linux the last file completes when "
                     "the rig closes it, before 'stable' can fire (a negative stable latency); "
                     "use --latency-signals next_file,stable to time the stable path")
    width = max((len(Path(x.file).name) for x in res.latencies), default=0) + 2
    for x in res.latencies:
        lines.append(f"    {Path(x.file).name:<{width}}{x.signal:<10} committed - signal "
                     f"{fmt(x.latency, '6.2f')} s, - closed {fmt(x.after_close, '6.2f')} s")
    for w in res.warnings[:10]:
        lines.append(f"  daemon {w}")
    return lines


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark rig2nwb's append throughput, peak memory and latency against a "
                    "plain h5py append on the same disk. Prints figures; asserts nothing.")
    p.add_argument("--workdir", type=Path, help="folder for data and outputs (default: a new "
                   "temporary folder under /tmp); it should be on the disk you want to measure")
    p.add_argument("--keep", action="store_true", help="keep the generated TIFFs and outputs")
    p.add_argument("--small-gb", type=float, help="small session size (1.0; --quick: 0.2); 0 skips")
    p.add_argument("--large-gb", type=float, help="large session size (4.2; --quick: 1.0); 0 skips")
    p.add_argument("--compressions", default="none,blosc-lz4",
                   help="rig2nwb output.compression values to time, comma-separated "
                        f"(default none,blosc-lz4; any of {', '.join(COMPRESSIONS)}; "
                        "gzip runs at ~60 MB/s)")
    p.add_argument("--repeats", type=int,
                   help="runs per method and size, interleaved; the run with the median wall time "
                        "is reported, with the worst peak RSS of all runs (3; --quick: 1)")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the untimed h5py run after generating each size")
    p.add_argument("--latency-files", type=int,
                   help="files the rig writes (8; --quick: 3); 0 skips")
    p.add_argument("--latency-frames", type=int, default=300, help="frames per rig file (300)")
    p.add_argument("--latency-rate", type=float, default=300.0,
                   help="rig frame rate in Hz (300: 10x a real 30 Hz rig, to keep the run short)")
    p.add_argument("--latency-settle", type=float, default=2.0,
                   help="completion.settle_seconds of the daemon (2)")
    p.add_argument("--latency-signals", default="",
                   help="completion.signals of the daemon, comma-separated (default: rig2nwb's)")
    p.add_argument("--latency-compression", default="blosc-lz4", choices=COMPRESSIONS,
                   help="output.compression of the daemon (blosc-lz4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic frames")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 0.2 GB and 1 GB sessions, 1 repeat, 3 latency files "
                        "(options given explicitly still win)")
    args = p.parse_args(argv)
    defaults = {"small_gb": (1.0, 0.2), "large_gb": (4.2, 1.0), "repeats": (3, 1),
                "latency_files": (8, 3)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    comps = [c.strip() for c in args.compressions.split(",") if c.strip()]
    bad = [c for c in comps if c not in COMPRESSIONS]
    if bad:
        p.error(f"unknown compression(s) {', '.join(bad)}; choose from {', '.join(COMPRESSIONS)}")
    args.compressions = comps
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def make_workdir(given: Path | None) -> Path:
    """A fresh folder: inside --workdir if given (never reusing old data), else under /tmp."""
    if given is None:
        return Path(tempfile.mkdtemp(prefix="rig2nwb-bench-"))
    given.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="rig2nwb-bench-", dir=given))


def say(text: str) -> None:
    print(text, flush=True)


def benchmark_size(gb: float, args: argparse.Namespace, workdir: Path,
                   source: FrameSource) -> tuple[list[RunResult], str]:
    rig_root = workdir / "rig"
    t0 = time.monotonic()
    ds = write_dataset(rig_root, gb, source)
    note = cache_note(ds)
    say(f"generated {ds.label} in {time.monotonic() - t0:.1f} s; {note}")
    if not args.no_warmup:
        # Untimed: right after the TIFFs were written (and synced), the first run measured up to
        # 2x slower on a VM disk, whichever method went first; that would bias the comparison.
        w = run_h5py(ds, workdir / "runs" / f"{ds.session}-warmup", keep=False)
        say(f"  {w.size} warm-up (h5py, not counted) wall {w.m.wall:6.2f} s  {w.mbps:6.0f} MB/s")
    runs: dict[str, list[RunResult]] = {}
    for rep in range(args.repeats):
        # Interleaved, so slow drift of the machine (other load) affects every method alike.
        comp: str | None
        for comp in [None, *args.compressions]:  # None: the h5py baseline
            run_dir = workdir / "runs" / f"{ds.session}-{comp or 'h5py'}-{rep + 1}"
            if comp is None:
                r = run_h5py(ds, run_dir, args.keep)
            else:
                r = run_convert(ds, comp, rig_root, run_dir, args.keep)
            say(f"  {r.size} {r.method:<18} wall {r.m.wall:6.2f} s  {r.mbps:6.0f} MB/s  peak RSS "
                f"{r.m.peak_rss / 1e6:4.0f} MB  {r.check}")
            runs.setdefault(r.method, []).append(r)
    if not args.keep:
        shutil.rmtree(ds.folder, ignore_errors=True)
    return [median_run(v) for v in runs.values()], note


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == H5PY_CHILD:
        return h5py_child(argv[1:])
    args = parse_args(argv)
    workdir = make_workdir(args.workdir)
    for line in environment_lines(workdir):
        say(line)
    source = FrameSource(args.seed)
    results: list[RunResult] = []
    notes: list[str] = []
    latency: LatencyResult | None = None
    try:
        for gb in (args.small_gb, args.large_gb):
            if gb > 0:
                rows, note = benchmark_size(gb, args, workdir, source)
                results += rows
                notes.append(note)
        if args.latency_files > 0:
            say(f"latency: starting the daemon, then writing {args.latency_files} file(s)")
            latency = run_latency(args, workdir / "latency", source)
    finally:
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if results:
        say("")
        for line in [*throughput_table(results), "", *goal_lines(results), *notes]:
            say(line)
    if latency is not None:
        say("")
        for line in latency_lines(latency):
            say(line)
    # Timings never fail the run; a failed child, wrong output or a file never committed does.
    failed = any(not r.ok for r in results)
    if latency is not None:
        failed = failed or latency.startup_s is None or any(
            x.committed is None for x in latency.latencies)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
