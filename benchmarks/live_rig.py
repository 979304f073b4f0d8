#!/usr/bin/env python3
"""The daemon running beside a rig: latency, CPU, memory, and the rig's own frame timing.

A simulated rig (its own process) writes 512x512 int16 pages at a real 30 Hz per channel into the
rig folder, flushing every page, while ``rig2nwb run`` (default settings) converts them. Measured:
latency from each file's completion signal to its ``tiff appended`` log line, the CPU and peak
RSS of the daemon's whole process tree, and pages the rig wrote late, with the daemon and (as a
control) without it. The NWB file is then checked against the pages written.

The compression is rig2nwb's default, read back from the written config (never assumed here).
``--output-dir`` puts the NWB output and state folders on another file system (repeatable: one
run each, ``rig`` = beside the rig folder); ``--control-same-length`` makes each control as long
as the acquisition it is compared with.

Prints figures and asserts no timing: the exit status is 1 only when a run failed or an output
check failed. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil  # type: ignore[import-untyped]  # no stubs installed

from benchmarks.kit.configs import base_sections, end_marker, write_daemon_config
from benchmarks.kit.daemon import (
    Daemon,
    TreeSample,
    proc_status,
    sample_tree,
    wait_finished,
    worker_pid,
)
from benchmarks.kit.frames import FRAME_BYTES, FrameSource, session_folder
from benchmarks.kit.latency import Latency, RigFile, completion_signals
from benchmarks.kit.machine import environment_lines, machine_description
from benchmarks.kit.paths import command_line, make_workdir, module_command, module_env
from benchmarks.kit.report import rounded, say, spec_table, write_json

MODULE = "benchmarks.live_rig"
WRITER_CHILD = "_rig-writer"  # hidden subcommand: the simulated rig runs in its own process
LATENCY_GOAL_S = 2.0
CPU_GOAL_PCT = 15.0  # the issue: at most 15% of one core at 32 MB/s
RIG_DISK = "rig"  # --output-dir value: the output and state beside the rig folder (its disk)
RSS_GOAL_MB = 300.0


@dataclass(frozen=True)
class Variant:
    name: str
    planes: int
    channels: int
    page_rate: float  # pages per second the rig writes

    @property
    def pages_per_volume(self) -> int:
        return self.planes * self.channels

    @property
    def mb_per_s(self) -> float:
        return self.page_rate * FRAME_BYTES / 1e6


# 2ch4p: 30 scan frames/s, each one page per channel (60 pages/s); the 4 planes share those
# frames, so each of the 8 series gets 7.5 frames/s.
VARIANTS = {
    "1ch": Variant("1ch", planes=1, channels=1, page_rate=30.0),
    "2ch4p": Variant("2ch4p", planes=4, channels=2, page_rate=60.0),
}


# --- the simulated rig (child process) -------------------------------------------------------


def rig_writer(argv: Sequence[str]) -> int:
    """Write ``--pages`` pages on a fixed schedule: page k is due at t0 + k / rate. The writer
    sleeps until a page is due and never writes ahead of schedule; a page behind schedule is
    written at once (a rig's acquisition buffer would hold it), so a stall of d seconds shows
    as about d x rate late pages. Prints "start <time>" and "end <time>" (time.time())."""
    import tifffile

    p = argparse.ArgumentParser(prog=f"python -m {MODULE} {WRITER_CHILD}")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--session", required=True)
    p.add_argument("--pages", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--frames-per-file", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--result", type=Path, required=True)
    args = p.parse_args(argv)
    source = FrameSource(args.seed)  # ~1 s of noise generation, before the clock starts
    folder = session_folder(args.root, args.session)
    folder.mkdir(parents=True, exist_ok=True)
    period = 1.0 / args.rate
    lateness = np.zeros(args.pages, dtype=np.float64)
    files: list[dict[str, Any]] = []
    t0 = time.monotonic()
    print(f"start {time.time()!r}", flush=True)
    g = 0
    n_files = -(-args.pages // args.frames_per_file)
    for i in range(n_files):
        path = folder / f"{args.session}_{i + 1:05d}.tif"
        with tifffile.TiffWriter(path) as tw:
            created = last_page = time.time()
            for _ in range(min(args.frames_per_file, args.pages - g)):
                due = t0 + g * period
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                tw.write(source.frame(g), contiguous=False, photometric="minisblack")
                tw.filehandle.flush()
                lateness[g] = time.monotonic() - due
                last_page = time.time()
                g += 1
        files.append({"rel": path.relative_to(args.root).as_posix(), "created": created,
                      "last_page": last_page, "closed": time.time()})
    print(f"end {time.time()!r}", flush=True)
    np.save(args.result.with_suffix(".npy"), lateness)
    args.result.write_text(json.dumps({"files": files, "pages": g, "rate": args.rate}))
    return 0


@dataclass(frozen=True)
class RigRun:
    files: list[RigFile]
    pages: int
    rate: float
    lateness: np.ndarray  # seconds after due, per page
    start: float  # time.time() of the first page's due time
    end: float  # time.time() after the last page
    start_sample: TreeSample | None  # the daemon tree at start / end (None: no daemon)
    end_sample: TreeSample | None
    rc: int

    @property
    def period(self) -> float:
        return 1.0 / self.rate

    @property
    def late(self) -> int:
        """Pages that finished more than one page period after they were due."""
        return int(np.count_nonzero(self.lateness > self.period))

    @property
    def stalls(self) -> int:
        """Runs of consecutive late pages (one stall of the writer makes several late pages)."""
        late = self.lateness > self.period
        return int(np.count_nonzero(late[1:] & ~late[:-1]) + (1 if late.size and late[0] else 0))

    def lateness_ms(self, q: float) -> float:
        return float(np.percentile(self.lateness, q) * 1000) if self.lateness.size else 0.0


def run_rig(root: Path, session: str, pages: int, rate: float, frames_per_file: int, seed: int,
            result: Path, daemon_pid: int | None) -> RigRun:
    """Run the writer child; snapshot the daemon tree's CPU at its start and end lines."""
    cmd = module_command(MODULE, WRITER_CHILD, "--root", str(root), "--session", session,
                         "--pages", str(pages), "--rate", str(rate), "--frames-per-file",
                         str(frames_per_file), "--seed", str(seed), "--result", str(result))
    start = end = 0.0
    s0 = s1 = None
    with open(result.with_suffix(".stderr.log"), "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                env=module_env())
        assert proc.stdout is not None
        for line in proc.stdout:
            word, _, value = line.partition(" ")
            if word == "start":
                s0 = sample_tree(daemon_pid) if daemon_pid else None
                start = float(value)
            elif word == "end":
                s1 = sample_tree(daemon_pid) if daemon_pid else None
                end = float(value)
        rc = proc.wait()
    if rc != 0 or not result.exists():
        return RigRun([], 0, rate, np.zeros(0), start, end, s0, s1, rc or 1)
    data = json.loads(result.read_text())
    files = [RigFile(f["rel"], f["created"], f["last_page"], f["closed"]) for f in data["files"]]
    lateness = np.load(result.with_suffix(".npy"))
    return RigRun(files, int(data["pages"]), rate, lateness, start, end, s0, s1, 0)


# --- one variant -----------------------------------------------------------------------------


@dataclass
class VariantResult:
    variant: Variant
    place: str = "rig disk"  # where the output and state went: "rig disk" / "other disk"
    devices: str = ""  # the rig's and the output's devices, as printed
    compression: str = ""  # the daemon's frame compression, from its config
    nwb_filters: str = ""  # the frames' filters as stored in the NWB file
    control: RigRun | None = None
    rig: RigRun | None = None
    daemon: Daemon | None = None
    latencies: list[Latency] | None = None
    settle: float = 5.0
    finished_at: float | None = None  # time.time() the session was finished and checked
    after_sample: TreeSample | None = None  # the tree at that moment
    worker_hwm: int | None = None
    validation: str | None = None
    nwb: Path | None = None
    check: str = "NOT RUN"
    problems: list[str] | None = None

    @property
    def ok(self) -> bool:
        return self.check == "OK"


def total_pages(v: Variant, minutes: float) -> int:
    """Whole volumes only: rig2nwb drops a final incomplete volume at finalize."""
    pages = int(minutes * 60 * v.page_rate)
    return max(v.pages_per_volume, pages - pages % v.pages_per_volume)


def variant_config(base: Path, v: Variant, out: Path) -> Path:
    """The daemon's config: the rig folder under ``base``, the NWB output and state under
    ``out`` (``base`` itself, or a folder on another file system)."""
    sections = base_sections(base / "rig", out / "nwb", out / "state")
    if v.pages_per_volume > 1:
        # Plain TIFFs describe no layout; the config does (channel fastest, then plane).
        sections["imaging"] = {"planes": v.planes, "channels": v.channels}
    for folder in (base / "rig", out / "nwb", out / "state"):
        folder.mkdir(parents=True, exist_ok=True)
    cfg = base / "config.toml"
    write_daemon_config(cfg, sections, "live_rig.py")
    return cfg


def compression_of(cfg_path: Path) -> str:
    """The frames' compression the daemon will use, from its config as rig2nwb reads it (the
    defaults included), e.g. "gzip 1 + shuffle, 2 compress threads"."""
    from rig2nwb.config.loading import load_config
    from rig2nwb.nwb.chunks import resolve_threads
    from rig2nwb.nwb.writer import compression_args

    cfg = load_config(cfg_path, check_paths=False)
    name = cfg.output.compression
    kw = compression_args(cfg)
    if name == "gzip":
        threads = resolve_threads(cfg.append.compress_threads)
        return (f"gzip {kw['compression_opts']}{' + shuffle' if kw.get('shuffle') else ''}, "
                f"{threads} compress thread{'s' if threads != 1 else ''}")
    if name in ("none", "lzf"):
        return name
    level = cfg.output.compression_level
    return f"{name} {'default level' if level is None else f'level {level}'}"


def device_of(path: Path) -> tuple[int, str]:
    """st_dev of ``path`` and a description: major:minor, file system type, mount point."""
    st_dev = os.stat(path).st_dev
    resolved = path.resolve()
    mounts = [m for m in psutil.disk_partitions(all=True)
              if resolved.is_relative_to(m.mountpoint)]
    m = max(mounts, key=lambda m: len(m.mountpoint), default=None)
    where = f" ({m.fstype} {m.device} on {m.mountpoint})" if m else ""
    return st_dev, f"device {os.major(st_dev)}:{os.minor(st_dev)}{where}"


def control_pages(v: Variant, args: argparse.Namespace) -> int:
    if args.control_same_length:
        return total_pages(v, args.minutes)  # exactly as many pages as the acquisition
    return int(args.control_seconds * v.page_rate)


def run_variant(v: Variant, args: argparse.Namespace, workdir: Path, output_dir: str,
                tag: str) -> VariantResult:
    """One variant with its output and state beside the rig (``output_dir`` == RIG_DISK) or in
    a new folder under ``output_dir``; its own control first."""
    from rig2nwb.config.schema import CompletionConfig

    res = VariantResult(v, settle=CompletionConfig().settle_seconds)  # the default settle time
    top = workdir / v.name / tag
    # Control: the same writer with no daemon running, so its late pages are the machine's own.
    ctl = top / "control"
    ctl.mkdir(parents=True)
    n_ctl = control_pages(v, args)
    say(f"{v.name} [{tag}]: control, the rig alone for {n_ctl / v.page_rate:g} s ({n_ctl} pages)")
    res.control = run_rig(ctl / "rig", "control", n_ctl, v.page_rate, args.frames_per_file,
                          args.seed, ctl / "rig.json", None)
    shutil.rmtree(ctl / "rig", ignore_errors=True)

    base = top / "live"
    base.mkdir(parents=True)
    out = base
    if output_dir != RIG_DISK:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        out = Path(tempfile.mkdtemp(prefix=f"live-{v.name}-", dir=output_dir))
    cfg = variant_config(base, v, out)
    rig_dev, rig_desc = device_of(base / "rig")
    out_dev, out_desc = device_of(out / "nwb")
    res.place = "rig disk" if out_dev == rig_dev else "other disk"
    res.devices = (f"rig folder {base / 'rig'}: {rig_desc}; output+state {out}: {out_desc}"
                   f"{' (the same device)' if out_dev == rig_dev else ''}")
    res.compression = compression_of(cfg)
    say(f"{v.name} [{tag}]: {res.devices}")
    say(f"{v.name} [{tag}]: compression {res.compression}")
    daemon = res.daemon = Daemon(cfg, base)
    try:
        if not daemon.start():
            res.check = "FAILED: the daemon never logged 'watching'"
            return res
        say(f"{v.name} [{tag}]: daemon watching after {daemon.watching_after:.1f} s; the rig "
            f"writes {args.minutes:g} min at {v.page_rate:g} pages/s ({v.mb_per_s:.1f} MB/s)")
        session = f"live_{v.name}_" + datetime.now().strftime("%Y%m%d_%H%M%S")
        pages = total_pages(v, args.minutes)
        res.rig = run_rig(base / "rig", session, pages, v.page_rate, args.frames_per_file,
                          args.seed, base / "rig.json", daemon.proc.pid)
        if res.rig.rc != 0:
            res.check = f"FAILED: the rig writer exited with {res.rig.rc}"
            return res
        # The rig is done: the end marker finishes the session without session_idle_seconds.
        end_marker(session_folder(base / "rig", session)).write_text("done\n")
        finish_session(res, daemon, session, args)
    finally:
        if daemon.sampler is not None and daemon.proc.returncode is None:
            w = worker_pid(daemon.proc.pid)
            hwm = proc_status(w).get("VmHWM", 0) if w else 0
            res.worker_hwm = max(hwm, daemon.sampler.worker_hwm) or None
        daemon.stop()
        res.problems = daemon.problems()
        if daemon.sampler is not None:
            daemon.sampler.dump(base / "tree_samples.json")
    if res.rig is not None and res.rig.files:
        res.latencies = completion_signals(res.rig.files, res.settle, daemon.log.appended_at())
        if res.check == "NOT RUN":
            res.check = verify(res, args.seed)
    if not args.keep:
        shutil.rmtree(base / "rig", ignore_errors=True)  # up to ~19 GB per variant at full size
        if out != base:
            shutil.rmtree(out, ignore_errors=True)  # on tmpfs it holds RAM
    return res


def finish_session(res: VariantResult, daemon: Daemon, session: str,
                   args: argparse.Namespace) -> None:
    """Wait for every file to be committed, then for the session to be finished and checked."""
    assert res.rig is not None
    wanted = {f.rel for f in res.rig.files}
    deadline = time.monotonic() + res.settle + 30 + 60  # settle + a rescan + the append
    while time.monotonic() < deadline and daemon.proc.poll() is None:
        if wanted <= set(daemon.log.appended_at()):
            break
        time.sleep(0.2)
    rows, at = wait_finished(daemon, {session}, args.finish_timeout, checked=True)
    row = next((r for r in rows if r.get("session") == session), None)
    if at is None:
        state = row.get("state") if row else "not in the ledger"
        res.check = f"FAILED: session not finished and checked after {args.finish_timeout:g} s " \
                    f"(state {state}, validation {row.get('validation') if row else None})"
        return
    res.finished_at = at
    res.after_sample = sample_tree(daemon.proc.pid)
    res.validation = row.get("validation") if row else None
    res.nwb = Path(row["nwb_path"]) if row else None


def verify(res: VariantResult, seed: int) -> str:
    """Frame counts per series equal the pages written, and the first, middle and last frame of
    each series equal the pages the writer wrote (regenerated from the same seed)."""
    import h5py
    import hdf5plugin  # noqa: F401  (registers the Blosc filter)

    assert res.rig is not None
    v = res.variant
    nwb = res.nwb
    if nwb is None or not nwb.exists():
        return "MISMATCH: no NWB file"
    expected = res.rig.pages // v.pages_per_volume
    source = FrameSource(seed)
    channels = range(1, v.channels + 1)  # plain TIFFs: channels numbered 1..N
    try:
        with h5py.File(nwb, "r") as f:
            for p in range(v.planes):
                for ci, ch in enumerate(channels):
                    name = ("TwoPhotonSeries" if v.pages_per_volume == 1
                            else f"TwoPhotonSeries_plane{p}_ch{ch}")
                    data = f[f"acquisition/{name}/data"]
                    if not res.nwb_filters:
                        res.nwb_filters = (f"{data.compression} {data.compression_opts}"
                                           f"{' + shuffle' if data.shuffle else ''}")
                    if data.shape[0] != expected:
                        return f"MISMATCH {name}: {data.shape[0]} frames, expected {expected}"
                    for j in sorted({0, expected // 2, expected - 1}):
                        page = j * v.pages_per_volume + p * v.channels + ci
                        if not np.array_equal(data[j], source.frame(page)):
                            return f"MISMATCH {name} frame {j} (page {page})"
    except (OSError, KeyError) as exc:
        return f"MISMATCH ({exc})"
    return "OK"


# --- reporting ---------------------------------------------------------------------------------


COLUMNS = ["variant", "output", "MB/s", "pages", "files", "latency p50 s", "latency p95 s", "latency max s",
           "last file s", "CPU % acq", "CPU % after", "CPU % whole", "CPU s whole",
           "worker peak RSS MB", "worker RSS MB acq", "tree peak RSS MB", "late alone", "control pages",
           "late with daemon", "late p99 ms", "late max ms", "check"]
SPECS = {"MB/s": ".1f", "pages": "d", "files": "d", "latency p50 s": ".2f",
         "latency p95 s": ".2f", "latency max s": ".2f", "last file s": ".2f", "CPU % acq": ".1f",
         "CPU % after": ".1f", "CPU % whole": ".1f", "CPU s whole": ".1f",
         "worker peak RSS MB": ".0f", "worker RSS MB acq": ".0f", "tree peak RSS MB": ".0f",
         "late alone": "d", "control pages": "d", "late with daemon": "d", "late p99 ms": ".1f",
         "late max ms": ".1f"}


def cpu_pct(a: TreeSample | None, b: TreeSample | None) -> float | None:
    if a is None or b is None or b.t <= a.t:
        return None
    return 100.0 * (b.cpu - a.cpu) / (b.t - a.t)


def next_file_latencies(res: VariantResult) -> list[float]:
    return [x.latency for x in res.latencies or [] if x.signal == "next_file"
            and x.latency is not None]


def row_of(res: VariantResult) -> dict[str, Any]:
    rig, ctl, d = res.rig, res.control, res.daemon
    nxt = next_file_latencies(res)
    last = [x.latency for x in res.latencies or [] if x.signal == "stable"]
    acq_rss = (d.sampler.peak_worker_rss(rig.start, rig.end)
               if d and d.sampler and rig and rig.rc == 0 else None)
    whole = (100.0 * d.total_cpu / d.lifetime if d and d.total_cpu is not None and d.lifetime
             else None)
    return {
        "variant": res.variant.name,
        "output": res.place,
        "MB/s": round(res.variant.mb_per_s, 2),
        "pages": rig.pages if rig else None,
        "files": len(rig.files) if rig else None,
        "latency p50 s": rounded(float(np.percentile(nxt, 50))) if nxt else None,
        "latency p95 s": rounded(float(np.percentile(nxt, 95))) if nxt else None,
        "latency max s": rounded(max(nxt)) if nxt else None,
        "last file s": rounded(last[0]) if last and last[0] is not None else None,
        "CPU % acq": rounded(cpu_pct(rig.start_sample, rig.end_sample)) if rig else None,
        "CPU % after": rounded(cpu_pct(rig.end_sample, res.after_sample)) if rig else None,
        "CPU % whole": rounded(whole),
        "CPU s whole": rounded(d.total_cpu) if d else None,
        "worker peak RSS MB": rounded(res.worker_hwm / 1e6, 1) if res.worker_hwm else None,
        "worker RSS MB acq": (rounded(acq_rss / 1e6, 1) if acq_rss else None),
        "tree peak RSS MB": (rounded(d.sampler.peak_rss_sum() / 1e6, 1)
                             if d and d.sampler and d.sampler.samples else None),
        "late alone": ctl.late if ctl and ctl.rc == 0 else None,
        "control pages": ctl.pages if ctl and ctl.rc == 0 else None,
        "late with daemon": rig.late if rig and rig.rc == 0 else None,
        "late p99 ms": rounded(rig.lateness_ms(99), 1) if rig and rig.rc == 0 else None,
        "late max ms": rounded(rig.lateness_ms(100), 1) if rig and rig.rc == 0 else None,
        "check": res.check,
    }


def goal(text: str, target: str, measured: str, met: bool | None) -> dict[str, Any]:
    return {"goal": text, "target": target, "measured": measured, "met": met}


def run_name(res: VariantResult) -> str:
    return f"{res.variant.name}, output on the {res.place}"


def goals_of(results: list[VariantResult]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for res in results:
        name = run_name(res)
        nxt = next_file_latencies(res)
        if nxt:
            p95 = float(np.percentile(nxt, 95))
            out.append(goal(f"latency p95 after the next_file signal ({name})",
                            f"<= {LATENCY_GOAL_S:g} s", f"{p95:.2f} s (n={len(nxt)})",
                            p95 <= LATENCY_GOAL_S))
        else:
            out.append(goal(f"latency p95 after the next_file signal ({name})",
                            f"<= {LATENCY_GOAL_S:g} s", "not measured: fewer than 2 files or "
                            "none committed", None))
        out.append(late_goal(res))
        hwm = res.worker_hwm
        out.append(goal(f"daemon peak RSS ({name}, the worker's VmHWM)", f"<= {RSS_GOAL_MB:g} MB",
                        f"{hwm / 1e6:.0f} MB" if hwm else "not measured", (
                            hwm / 1e6 <= RSS_GOAL_MB) if hwm else None))
    target = f"<= {CPU_GOAL_PCT:g}% of one core"
    twos = [r for r in results if r.variant.name == "2ch4p"]
    if not twos:
        out.append(goal("daemon CPU during acquisition at 32 MB/s (2ch4p)", target,
                        "not measured (2ch4p not run)", None))
    for two in twos:
        text = (f"daemon CPU during acquisition at 32 MB/s ({run_name(two)}, default "
                f"compression: {two.compression or 'unknown'})")
        pct = cpu_pct(two.rig.start_sample, two.rig.end_sample) if two.rig else None
        if pct is None:
            out.append(goal(text, target, "not measured (the run failed)", None))
        else:
            out.append(goal(text, target, f"{pct:.1f}%", pct <= CPU_GOAL_PCT))
    return out


def late_goal(res: VariantResult) -> dict[str, Any]:
    """Late pages with the daemon, less what the control rate predicts for as many pages."""
    text = f"rig pages late because of the daemon ({run_name(res)})"
    rig, ctl = res.rig, res.control
    if rig is None or rig.rc != 0 or ctl is None or ctl.rc != 0 or not ctl.pages:
        return goal(text, "0", "not measured (a rig run failed)", None)
    predicted = ctl.late / ctl.pages * rig.pages
    excess = rig.late - predicted
    measured = (f"{rig.late} of {rig.pages} late with the daemon ({rig.stalls} stall(s), max "
                f"{rig.lateness_ms(100):.0f} ms), {ctl.late} of {ctl.pages} alone -> "
                f"{max(0.0, excess):.1f} attributable to the daemon")
    return goal(text, "0", measured, rig.late == 0 or excess <= 0)


def notes_of(results: list[VariantResult], args: argparse.Namespace) -> list[str]:
    notes = [
        "latency = the 'tiff appended' log timestamp - the file's completion signal (the moment "
        "the next file was created); 'last file s' = committed - (last page + settle_seconds "
        f"{results[0].settle if results else 5:g} s): negative because close_write (a default "
        "signal) completes the last file when the rig closes it, before 'stable' could",
        "CPU % = CPU seconds of the daemon's whole process tree (supervisor, worker, check "
        "children, reaped children included) / wall seconds, 100% = one core; acq = while the "
        "rig wrote, after = from the last page until the session was finished and its file "
        "checked, whole = launch to exit (wait4 rusage)",
        "a page is late when its write+flush finished more than one page period after it was "
        "due; the rig never writes ahead of its schedule and writes a page that is behind at "
        "once",
        f"settings: rig2nwb defaults (compression "
        f"{'; '.join(sorted({r.compression for r in results if r.compression})) or 'unknown'}, "
        f"signals, settle, status page, preview, file check) except rig/output/state/logging, "
        f"the layout's end marker and [imaging] planes/channels; {args.frames_per_file} pages "
        f"per file",
        "control = the same writer with no daemon, run just before each measured run, "
        + ("with as many pages as the acquisition" if args.control_same_length
           else f"for {args.control_seconds:g} s"),
    ]
    for res in results:
        name = run_name(res)
        notes.append(f"{name}: {res.devices}")
        if res.nwb_filters:
            notes.append(f"{name}: frames stored as {res.nwb_filters} (read from the NWB file)")
        tree_max = res.daemon.max_rss if res.daemon else None
        if tree_max:
            notes.append(f"{name}: largest single process of the tree over its life "
                         f"(wait4 ru_maxrss, the file-check child included): "
                         f"{tree_max / 1e6:.0f} MB; validation: {res.validation}")
        for p in (res.problems or [])[:8]:
            notes.append(f"{name}: daemon {p}")
    return notes


def print_report(result: dict[str, Any], results: list[VariantResult]) -> None:
    say("")
    for line in spec_table(result["columns"], result["rows"], SPECS):
        say(line)
    say("")
    for g in result["goals"]:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
        say(f"goal {g['goal']}: {g['target']}: {g['measured']} ({verdict})")
    for n in result["notes"]:
        say(f"note: {n}")
    for res in results:
        for x in res.latencies or []:
            say(f"  {res.variant.name} {res.place:<10} {Path(x.file).name:<34}{x.signal:<10} "
                f"committed - signal "
                f"{'-' if x.latency is None else format(x.latency, '6.2f')} s")


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="rig2nwb's daemon beside a simulated 30 Hz rig: latency, CPU, peak RSS and "
                    "the rig's late frames. Prints figures; asserts no timing.")
    p.add_argument("--minutes", type=float, help="acquisition per variant (10; --quick: 1)")
    p.add_argument("--control-seconds", type=float,
                   help="the rig alone first, per variant (60; --quick: 15)")
    p.add_argument("--control-same-length", action="store_true",
                   help="each control writes as many pages as the acquisition (--minutes)")
    p.add_argument("--output-dir", action="append", metavar="DIR",
                   help="put the NWB output and state in a new folder under DIR (e.g. on "
                        f"another disk, or /dev/shm); '{RIG_DISK}' = beside the rig folder (the "
                        "default). Repeatable: each variant runs once per DIR, each run with "
                        "its own control")
    p.add_argument("--frames-per-file", type=int, default=900,
                   help="pages per TIFF (900 = 30 s at 30 pages/s)")
    p.add_argument("--variants", default="1ch,2ch4p",
                   help=f"comma-separated, of {', '.join(VARIANTS)} (default both)")
    p.add_argument("--finish-timeout", type=float, default=900.0,
                   help="seconds to wait for the session to be finished and checked (900)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, help="folder for the rig and outputs (default: new "
                   "under /tmp); the full run needs ~30 GB free while 2ch4p runs")
    p.add_argument("--keep", action="store_true", help="keep TIFFs, outputs and logs")
    p.add_argument("--json", type=Path, help="write the shared JSON result here")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 min per variant, 15 s "
                   "control (options given explicitly still win)")
    args = p.parse_args(argv)
    if args.control_same_length and args.control_seconds is not None:
        p.error("--control-seconds and --control-same-length exclude each other")
    for name, (full, quick) in {"minutes": (10.0, 1.0), "control_seconds": (60.0, 15.0)}.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.control_same_length:
        args.control_seconds = args.minutes * 60
    args.output_dir = args.output_dir or [RIG_DISK]
    names = [x.strip() for x in args.variants.split(",") if x.strip()]
    bad = [x for x in names if x not in VARIANTS]
    if bad or not names:
        p.error(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    args.variants = [VARIANTS[x] for x in names]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == WRITER_CHILD:
        return rig_writer(argv[1:])
    args = parse_args(argv)
    command = command_line(MODULE, argv)
    workdir = make_workdir(args.workdir)
    env = environment_lines(workdir)
    for line in env:
        say(line)
    machine = machine_description(workdir)  # the suite's shared machine description
    results: list[VariantResult] = []
    try:
        for v in args.variants:
            for i, out in enumerate(args.output_dir):
                tag = "rigdisk" if out == RIG_DISK else f"out{i + 1}"
                results.append(run_variant(v, args, workdir, out, tag))
                r = row_of(results[-1])
                say(f"{v.name} [{tag}, {r['output']}]: {r['check']}; latency p95 "
                    f"{r['latency p95 s']} s, CPU {r['CPU % acq']}% during acquisition, late "
                    f"{r['late with daemon']} (alone {r['late alone']} of {r['control pages']})")
    finally:
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "benchmark": "live", "title": "The daemon beside a live 30 Hz rig", "command": command,
        "machine": {**machine, "environment": env},
        "params": {"minutes": args.minutes, "control_seconds": args.control_seconds,
                   "control_same_length": args.control_same_length,
                   "output_dirs": args.output_dir,
                   "frames_per_file": args.frames_per_file,
                   "variants": [v.name for v in args.variants], "settle_seconds":
                   results[0].settle if results else None, "quick": args.quick},
        "columns": COLUMNS, "rows": [row_of(r) for r in results], "goals": goals_of(results),
        "notes": notes_of(results, args),
    }
    print_report(result, results)
    if args.json:
        write_json(args.json, result)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
