#!/usr/bin/env python3
"""The daemon with nothing to do: CPU, wake-ups, memory and fds of an idle ``rig2nwb run``.

The rig folder holds many old, small TIFFs in finished sessions, converted first by the daemon
itself (not measured). Then, for each mode (native observer with no periodic rescan, the default
30 s rescan, watchdog's polling observer), a fresh daemon starts over the same folders and is
left alone for ``--minutes``; the CPU of its whole process tree over that window is the figure.

Prints figures and asserts no timing: the exit status is 1 only when a run failed or an output
check failed. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil  # type: ignore[import-untyped]  # no stubs installed

from benchmarks.kit.configs import TomlValue, base_sections, end_marker, write_daemon_config
from benchmarks.kit.daemon import (
    Daemon,
    context_switches,
    inotify_watches,
    open_fds,
    proc_status,
    sample_tree,
    status_rows,
    wait_finished,
    worker_pid,
)
from benchmarks.kit.frames import session_folder
from benchmarks.kit.machine import environment_lines, machine_description
from benchmarks.kit.paths import command_line, make_workdir
from benchmarks.kit.report import rounded, say, spec_table, write_json

MODULE = "benchmarks.idle"
CPU_GOAL_PCT = 1.0
SHAPE = (64, 64)
# mode -> its [watch] section; every other key keeps rig2nwb's default
MODES: dict[str, dict[str, TomlValue]] = {
    "inotify": {"observer": "native", "rescan_seconds": 86400.0},  # events only, no rescan
    "rescan": {"observer": "native"},  # + the default periodic rescan (30 s)
    "polling": {"observer": "polling"},  # watchdog's PollingObserver, its default interval
}


# --- the old sessions ------------------------------------------------------------------------


def old_page(session: int, file: int, page: int) -> np.ndarray:
    """Deterministic, distinct 64x64 int16 pages (cheap: the content is not what is measured)."""
    base = (session * 1000 + file) * 10 + page
    return (np.arange(SHAPE[0] * SHAPE[1], dtype=np.int64).reshape(SHAPE) + base).astype(np.int16)


def session_name(s: int) -> str:
    return f"old_{s:04d}"


def write_old_sessions(rig_root: Path, n_files: int, per_session: int, pages: int) -> list[str]:
    """``n_files`` small TIFFs in sessions of ``per_session``, each with its end marker."""
    import tifffile

    names: list[str] = []
    for s in range(-(-n_files // per_session)):
        name = session_name(s)
        folder = session_folder(rig_root, name)
        folder.mkdir(parents=True)
        for f in range(min(per_session, n_files - s * per_session)):
            with tifffile.TiffWriter(folder / f"{name}_{f + 1:05d}.tif") as tw:
                for p in range(pages):
                    tw.write(old_page(s, f, p), contiguous=False, photometric="minisblack")
        end_marker(folder).write_text("done\n")
        names.append(name)
    return names


@dataclass
class Prepared:
    sessions: list[str]
    files: int
    write_seconds: float
    convert_seconds: float | None = None  # launch to every session finished
    convert_cpu: float | None = None
    check: str = "NOT RUN"
    frames: dict[str, int] = field(default_factory=dict)  # session -> committed frames


def prepare(workdir: Path, args: argparse.Namespace) -> Prepared:
    rig = workdir / "rig"
    t0 = time.monotonic()
    names = write_old_sessions(rig, args.old_files, args.files_per_session, args.pages_per_file)
    prep = Prepared(names, args.old_files, time.monotonic() - t0)
    say(f"wrote {args.old_files} TIFFs in {len(names)} sessions in {prep.write_seconds:.1f} s; "
        "converting them with the daemon (not measured)")
    cfg = config_for(workdir, "prepare", {})
    daemon = Daemon(cfg, workdir / "prepare")
    try:
        if not daemon.start(timeout=600):
            prep.check = "FAILED: the preparing daemon never logged 'watching'"
            return prep
        # checked=True: also wait for each session's summary picture (made after finishing,
        # even with check_files = false). A first full run did not, and the first measured
        # daemon spent its 5 minutes drawing 100 pictures (40% of a core), which is catch-up
        # work, not idling.
        rows, at = wait_finished(daemon, set(names), args.prepare_timeout, poll=5.0,
                                 checked=True)
        if at is None:
            done = sum(1 for r in rows if r.get("state") == "finished")
            prep.check = f"FAILED: {done} of {len(names)} sessions finished after " \
                         f"{args.prepare_timeout:g} s"
            return prep
        prep.convert_seconds = at - daemon.started
        prep.frames = {str(r["session"]): int(r["frames"]) for r in rows}
    finally:
        daemon.stop()
    prep.convert_cpu = daemon.total_cpu
    prep.check = verify_prepared(prep, rows, args)
    return prep


def verify_prepared(prep: Prepared, rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Every session holds all its pages; the first session's file equals its TIFF pages at the
    first, middle and last frame."""
    import h5py
    import hdf5plugin  # noqa: F401  (registers the Blosc filter)

    for s, name in enumerate(prep.sessions):
        files = min(args.files_per_session, prep.files - s * args.files_per_session)
        if prep.frames.get(name) != files * args.pages_per_file:
            return f"MISMATCH {name}: {prep.frames.get(name)} frames, expected " \
                   f"{files * args.pages_per_file}"
    row = next(r for r in rows if r.get("session") == prep.sessions[0])
    n = min(args.files_per_session, prep.files) * args.pages_per_file
    try:
        with h5py.File(row["nwb_path"], "r") as f:
            data = f["acquisition/TwoPhotonSeries/data"]
            for g in sorted({0, n // 2, n - 1}):
                file, page = divmod(g, args.pages_per_file)
                if not np.array_equal(data[g], old_page(0, file, page)):
                    return f"MISMATCH {prep.sessions[0]} frame {g}"
    except (OSError, KeyError) as exc:
        return f"MISMATCH ({exc})"
    return "OK"


def config_for(workdir: Path, name: str, watch: dict[str, TomlValue]) -> Path:
    """One config per run, all on the same rig, output and state folders."""
    sections = base_sections(workdir / "rig", workdir / "nwb", workdir / "state")
    # The sessions are old and finished: nothing is ever checked in the measured windows, and
    # the preparation should not spend minutes checking 100 tiny files.
    sections["output"]["check_files"] = False
    if watch:
        sections["watch"] = watch
    (workdir / "nwb").mkdir(exist_ok=True)
    run = workdir / name
    run.mkdir()
    cfg = run / "config.toml"
    write_daemon_config(cfg, sections, "idle.py")
    return cfg


# --- one idle run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerStats:
    t: float
    pid: int | None
    cpu_supervisor: float  # the supervisor's own CPU seconds (children excluded)
    switches: int | None
    rss: int | None
    fds: int | None
    watches: int | None


def worker_stats(supervisor: int) -> WorkerStats:
    w = worker_pid(supervisor)
    try:
        t = psutil.Process(supervisor).cpu_times()
        sup = t.user + t.system
    except psutil.Error:
        sup = 0.0
    return WorkerStats(time.time(), w, sup, context_switches(w) if w else None,
                       proc_status(w).get("VmRSS") if w else None, open_fds(w) if w else None,
                       inotify_watches(w) if w else None)


@dataclass
class IdleResult:
    mode: str
    watch: dict[str, TomlValue]
    observer: str | None = None  # as the daemon logged it
    startup_s: float | None = None
    cpu_seconds: float | None = None
    window_s: float | None = None
    start: WorkerStats | None = None
    end: WorkerStats | None = None
    worker_cpu: float | None = None
    log_lines: int | None = None
    problems: list[str] = field(default_factory=list)
    check: str = "NOT RUN"

    @property
    def cpu_pct(self) -> float | None:
        if self.cpu_seconds is None or not self.window_s:
            return None
        return 100.0 * self.cpu_seconds / self.window_s


def run_mode(mode: str, workdir: Path, prep: Prepared, args: argparse.Namespace) -> IdleResult:
    res = IdleResult(mode, MODES[mode])
    cfg = config_for(workdir, f"idle-{mode}", MODES[mode])
    daemon = Daemon(cfg, cfg.parent)
    try:
        if not daemon.start(timeout=300):
            res.check = "FAILED: the daemon never logged 'watching'"
            return res
        res.startup_s = daemon.watching_after
        watching = next((r for r in daemon.log.records() if r.get("event") == "watching"), {})
        res.observer = str(watching.get("observer"))
        # The start-up's full scan (the ledger against every file) is done before "watching";
        # the warm-up lets the first status page, suite2p survey and the like settle too.
        time.sleep(args.warmup_seconds)
        n0 = len(daemon.log.records())
        s0, res.start = sample_tree(daemon.proc.pid), worker_stats(daemon.proc.pid)
        w0 = _worker_cpu(res.start.pid)
        time.sleep(args.minutes * 60)
        s1, res.end = sample_tree(daemon.proc.pid), worker_stats(daemon.proc.pid)
        w1 = _worker_cpu(res.end.pid)
        res.cpu_seconds, res.window_s = s1.cpu - s0.cpu, s1.t - s0.t
        res.worker_cpu = w1 - w0 if w0 is not None and w1 is not None else None
        res.log_lines = len(daemon.log.records()) - n0
        rows = status_rows(cfg)
    finally:
        daemon.stop()
        res.problems = daemon.problems()
    res.check = check_idle(res, daemon, rows, prep)
    return res


def _worker_cpu(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(t.user + t.system)


def check_idle(res: IdleResult, daemon: Daemon, rows: list[dict[str, Any]], prep: Prepared) -> str:
    """The same worker all along, a clean exit, and every old session untouched."""
    if res.start is None or res.end is None or res.start.pid != res.end.pid:
        return "FAILED: the worker restarted during the window"
    if daemon.exit_rc != 0:
        return f"FAILED: exit code {daemon.exit_rc} after SIGTERM"
    changed = [r["session"] for r in rows if r.get("state") != "finished"
               or prep.frames.get(str(r["session"])) != r.get("frames")]
    if changed or len(rows) != len(prep.sessions):
        return f"FAILED: {len(changed)} session(s) changed, {len(rows)} in the ledger"
    return "OK"


# --- reporting -------------------------------------------------------------------------------


COLUMNS = ["mode", "observer", "rescan s", "window s", "CPU s", "CPU % core", "worker %",
           "supervisor %", "wakeups/s", "RSS MB start", "RSS MB end", "fds start", "fds end",
           "inotify watches", "log lines", "start-up s", "check"]
SPECS = {"rescan s": "g", "window s": ".0f", "CPU s": ".2f", "CPU % core": ".2f",
         "worker %": ".2f", "supervisor %": ".2f", "wakeups/s": ".1f", "RSS MB start": ".0f",
         "RSS MB end": ".0f", "fds start": "d", "fds end": "d", "inotify watches": "d",
         "log lines": "d", "start-up s": ".1f"}


def pct_of(cpu: float | None, window: float | None) -> float | None:
    return 100.0 * cpu / window if cpu is not None and window else None


def row_of(res: IdleResult) -> dict[str, Any]:
    a, b, w = res.start, res.end, res.window_s
    wake = ((b.switches - a.switches) / w if a and b and w and a.switches is not None
            and b.switches is not None else None)
    return {
        "mode": res.mode,
        "observer": res.observer,
        "rescan s": float(res.watch.get("rescan_seconds", 30.0)),  # type: ignore[arg-type]
        "window s": rounded(w, 1),
        "CPU s": rounded(res.cpu_seconds, 3),
        "CPU % core": rounded(res.cpu_pct, 3),
        "worker %": rounded(pct_of(res.worker_cpu, w), 3),
        "supervisor %": rounded(pct_of(b.cpu_supervisor - a.cpu_supervisor, w), 3) if a and b
        else None,
        "wakeups/s": rounded(wake, 1),
        "RSS MB start": rounded(a.rss / 1e6, 1) if a and a.rss else None,
        "RSS MB end": rounded(b.rss / 1e6, 1) if b and b.rss else None,
        "fds start": a.fds if a else None,
        "fds end": b.fds if b else None,
        "inotify watches": b.watches if b else None,
        "log lines": res.log_lines,
        "start-up s": rounded(res.startup_s, 1),
        "check": res.check,
    }


def goals_of(results: list[IdleResult]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        pct = r.cpu_pct
        measured = (f"{pct:.2f}% over {r.window_s:.0f} s" if pct is not None and r.window_s
                    else f"not measured ({r.check})")
        out.append({"goal": f"idle daemon CPU ({r.mode})",
                    "target": f"<= {CPU_GOAL_PCT:g}% of one core", "measured": measured,
                    "met": pct <= CPU_GOAL_PCT if pct is not None else None})
    return out


def notes_of(prep: Prepared, results: list[IdleResult], args: argparse.Namespace) -> list[str]:
    notes = [
        f"rig folder: {prep.files} old TIFFs ({SHAPE[0]}x{SHAPE[1]} int16, {args.pages_per_file} "
        f"pages) in {len(prep.sessions)} finished sessions; written in {prep.write_seconds:.1f} s, "
        f"converted by the daemon in "
        f"{'-' if prep.convert_seconds is None else format(prep.convert_seconds, '.1f')} s "
        f"(launch to every session finished; CPU "
        f"{'-' if prep.convert_cpu is None else format(prep.convert_cpu, '.1f')} s): {prep.check}",
        "CPU = CPU seconds of the daemon's whole process tree (supervisor, worker, any children) "
        "over the window / window seconds; 100% = one core. The window starts "
        f"{args.warmup_seconds:g} s after the 'watching' line (start-up scan excluded)",
        "wakeups/s = voluntary context switches of the worker's live threads over the window "
        "(threads that ended meanwhile are not counted)",
        "settings: rig2nwb defaults (status page, preview, suite2p survey every 300 s, ...) except "
        "rig/output/state/logging, the end marker, check_files = false and [watch] per mode: "
        + "; ".join(f"{m} = {MODES[m]}" for m in MODES),
    ]
    for r in results:
        if r.window_s and r.mode != "inotify":
            rescan = float(r.watch.get("rescan_seconds", 30.0))  # type: ignore[arg-type]
            polls = (f" and {r.window_s / 5.0:.0f} polls (every 5 s, the default)"
                     if r.watch.get("observer") == "polling" else "")
            notes.append(f"{r.mode}: about {r.window_s / rescan:.1f} rescan(s) of "
                         f"{prep.files} files{polls} fell in the window")
        for p in r.problems[:5]:
            notes.append(f"{r.mode}: daemon {p}")
    return notes


def print_report(result: dict[str, Any]) -> None:
    say("")
    for line in spec_table(result["columns"], result["rows"], SPECS):
        say(line)
    say("")
    for g in result["goals"]:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
        say(f"goal {g['goal']}: {g['target']}: {g['measured']} ({verdict})")
    for n in result["notes"]:
        say(f"note: {n}")


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="CPU, wake-ups, RSS and fds of an idle rig2nwb daemon over a folder of old "
                    "sessions, per watch mode. Prints figures; asserts no timing.")
    p.add_argument("--minutes", type=float, help="measured window per mode (5; --quick: 0.5)")
    p.add_argument("--old-files", type=int, help="old TIFFs in the rig folder (10000; --quick: "
                   "1000)")
    p.add_argument("--files-per-session", type=int, default=100)
    p.add_argument("--pages-per-file", type=int, default=3)
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated, of {', '.join(MODES)} (default all)")
    p.add_argument("--warmup-seconds", type=float, default=15.0,
                   help="wait after 'watching' before the window starts (15)")
    p.add_argument("--prepare-timeout", type=float, default=3600.0,
                   help="seconds the preparing daemon may take to finish every session (3600)")
    p.add_argument("--workdir", type=Path, help="default: a new folder under /tmp")
    p.add_argument("--keep", action="store_true", help="keep the rig, outputs and logs")
    p.add_argument("--json", type=Path, help="write the shared JSON result here")
    p.add_argument("--quick", action="store_true", help="smoke test: 1000 files, 30 s per mode "
                   "(options given explicitly still win)")
    args = p.parse_args(argv)
    for name, (full, quick) in {"minutes": (5.0, 0.5), "old_files": (10000, 1000)}.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        p.error(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(MODES)}")
    args.modes = modes
    if args.old_files < 1 or args.files_per_session < 1 or args.pages_per_file < 1:
        p.error("--old-files, --files-per-session and --pages-per-file must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = command_line(MODULE, argv)
    workdir = make_workdir(args.workdir)
    env = environment_lines(workdir)
    for line in env:
        say(line)
    machine = machine_description(workdir)  # the suite's shared machine description
    results: list[IdleResult] = []
    try:
        prep = prepare(workdir, args)
        say(f"prepared: {prep.check}")
        if prep.check == "OK":
            for mode in args.modes:
                say(f"{mode}: idle for {args.minutes:g} min")
                results.append(run_mode(mode, workdir, prep, args))
                say(f"{mode}: {results[-1].check}; CPU {rounded(results[-1].cpu_pct, 2)}% of one core")
    finally:
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "benchmark": "idle", "title": "The daemon with nothing to do", "command": command,
        "machine": {**machine, "environment": env},
        "params": {"minutes": args.minutes, "old_files": args.old_files,
                   "files_per_session": args.files_per_session,
                   "pages_per_file": args.pages_per_file, "modes": args.modes,
                   "warmup_seconds": args.warmup_seconds, "quick": args.quick,
                   "prepare_write_seconds": rounded(prep.write_seconds, 1),
                   "prepare_convert_seconds": rounded(prep.convert_seconds, 1)},
        "columns": COLUMNS, "rows": [row_of(r) for r in results], "goals": goals_of(results),
        "notes": notes_of(prep, results, args),
    }
    print_report(result)
    if args.json:
        write_json(args.json, result)
    failed = prep.check != "OK" or any(r.check != "OK" for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
