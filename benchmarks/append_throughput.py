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
import math
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import psutil  # type: ignore[import-untyped]  # no stubs installed
import tifffile

from benchmarks.kit.childrun import Measured, failure_text, last_lines, measure
from benchmarks.kit.configs import write_config
from benchmarks.kit.daemonlog import DaemonLog, one_line, read_json_lines
from benchmarks.kit.frames import (
    SERIES_DATA,
    Dataset,
    FrameSource,
    cache_note,
    child_timeout,
    session_folder,
    verify,
    write_dataset,
)
from benchmarks.kit.h5append import run_limit
from benchmarks.kit.latency import Latency, RigFile, completion_signals
from benchmarks.kit.machine import environment_lines
from benchmarks.kit.paths import make_workdir
from benchmarks.kit.report import fmt, say

MODULE = "benchmarks.append_throughput"
WRITER = "append_throughput.py"  # named in the configs it writes
COMPRESSIONS = ("none", "gzip", "lzf", "blosc-lz4", "blosc-zstd")
RSS_GOAL_MB = 300.0
RATIO_GOAL = 0.8
LATENCY_GOAL_S = 2.0

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


def run_h5py(ds: Dataset, run_dir: Path, keep: bool) -> RunResult:
    r = run_limit(ds, run_dir, keep)
    return RunResult(ds.label, "h5py append", r.m, ds.raw_bytes, r.loop_seconds, r.output_bytes,
                     r.check)


def run_convert(ds: Dataset, compression: str, rig_root: Path, run_dir: Path,
                keep: bool) -> RunResult:
    out_dir = run_dir / "nwb"
    out_dir.mkdir(parents=True)  # output.folder must exist; a fresh ledger per run
    cfg = run_dir / "config.toml"
    write_config(cfg, writer=WRITER, rig_root=rig_root, output=out_dir, state=run_dir / "state",
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
    check = verify(nwbs[0], SERIES_DATA, ds) if m.rc == 0 and nwbs else failure_text(m, run_dir, tail=2)
    if not keep:
        shutil.rmtree(out_dir, ignore_errors=True)
    return RunResult(ds.label, f"rig2nwb {compression}", m, ds.raw_bytes, loop_s, size, check)


# --- latency of the running daemon -----------------------------------------------------------


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
    write_config(cfg, writer=WRITER, rig_root=rig_root, output=out_dir, state=base / "state",
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
        prog=f"python -m {MODULE}",
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
