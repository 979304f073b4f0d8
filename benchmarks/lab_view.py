#!/usr/bin/env python3
"""Does the lab view slow the rigs? Three real daemons, three simulated rigs acquiring at the same
time, with and without ``rig2nwb lab`` refreshing every second over all three.

Three rigs (rigA, rigB, rigC), each its own rig/output/state folders and config (``Lab`` of
rig2nwb.testing.labs), each watched by its own ``rig2nwb run``. A writer child acquires one
session per rig at the same time, in real time (default 3 TIFFs x 100 pages of 256x256 int16 at
30 Hz, written page by page and flushed like a rig), then writes the session's end marker.
Conditions, interleaved and repeated: ``none`` (no lab view, the baseline), ``page`` (``rig2nwb
lab CONFIGS --page lab.html --watch 1``), ``json`` (``rig2nwb lab CONFIGS --json --watch 1``, one
process printing a JSON document a second) and ``json-poll`` (``rig2nwb lab CONFIGS --json``
started anew every second, as a naive poller would). The view runs for the whole session.

Measured per rig and run: convert time (last TIFF closed -> the session ``finished_at`` in its
ledger: the last file's append plus finalize), commit latency of every TIFF (its ``tiff appended``
log line, written right after the ledger commit, minus the moment the rig closed it) and the
daemon tree's CPU; per view: its CPU and how many times it refreshed. Prints figures and asserts
no timing: the exit status is 1 only when a run failed or an output check failed.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.kit.daemon import Daemon, TreeSample, sample_tree
from benchmarks.kit.machine import environment_lines, machine_description
from benchmarks.kit.paths import command_line, make_workdir, module_command, module_env
from benchmarks.kit.report import format_table, say, write_json

MODULE = "benchmarks.lab_view"
WRITER_CHILD = "_rigs-writer"  # hidden subcommand: the three simulated rigs, in their own process
RIGS = ("rigA", "rigB", "rigC")
SUBJECT, SITE = "m1", "site1"
END_MARKER = "acquisition_done"
BASELINE = "none"
CONDITIONS = {
    "none": "no lab view (baseline)",
    "page": "rig2nwb lab CONFIGS --page lab.html --watch S",
    "json": "rig2nwb lab CONFIGS --json --watch S (one process, a JSON document every S s)",
    "json-poll": "rig2nwb lab CONFIGS --json started anew every S s (a naive poller)",
}
PAGE_LINE = re.compile(r"lab page written.*?seconds=([0-9.]+)")


# --- the simulated rigs (child process) ----------------------------------------------------------


def rigs_writer(argv: Sequence[str]) -> int:
    """Write one session per rig at the same time, one thread per rig, each page flushed and paced
    at ``rate`` by rig2nwb.testing.simrig.write_tiff, then the session's end marker. Prints
    "start <time>" when every thread is ready and "end <time>"; the result file gives every
    file's creation and close times (time.time())."""
    from zoneinfo import ZoneInfo

    from rig2nwb.testing.simrig import write_tiff

    spec = json.loads(Path(argv[0]).read_text())
    rigs = spec["rigs"]
    per_file, n_files, interval = spec["frames_per_file"], spec["files"], 1.0 / spec["rate"]
    barrier = threading.Barrier(len(rigs) + 1)
    out: dict[str, Any] = {}

    def one(rig: dict[str, str]) -> None:
        files: list[dict[str, Any]] = []
        try:
            frames = np.load(rig["frames"])  # in memory before the clock starts
            folder = Path(rig["folder"])
            folder.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(ZoneInfo(spec["tz"])).replace(microsecond=0, tzinfo=None)
        except Exception as exc:  # reported, and the barrier still released
            out[rig["name"]] = {"error": repr(exc), "files": files}
            barrier.wait()
            return
        barrier.wait()
        try:
            for i in range(n_files):
                path = folder / f"{spec['session']}_{i + 1:05d}.tif"
                created = time.time()
                write_tiff(path, iter(frames[i * per_file:(i + 1) * per_file]),
                           page_interval=interval, stamp=stamp if i == 0 else None)
                # write_tiff sleeps one interval after the last page, then closes the file
                files.append({"rel": path.relative_to(rig["root"]).as_posix(),
                              "created": created, "closed": time.time()})
            (folder / END_MARKER).write_text("done\n")
            out[rig["name"]] = {"files": files, "marker": time.time()}
        except Exception as exc:
            out[rig["name"]] = {"error": repr(exc), "files": files}

    threads = [threading.Thread(target=one, args=(r,), name=r["name"]) for r in rigs]
    for t in threads:
        t.start()
    barrier.wait()
    print(f"start {time.time()!r}", flush=True)
    for t in threads:
        t.join()
    print(f"end {time.time()!r}", flush=True)
    Path(spec["result"]).write_text(json.dumps(out))
    return 0 if all("error" not in v for v in out.values()) else 1


# --- the lab view under test ---------------------------------------------------------------------


def _cpu_of(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system + t.children_user + t.children_system)


def _reap(proc: subprocess.Popen[Any], timeout: float) -> tuple[int | None, float | None]:
    """wait4 the child: (exit code, CPU seconds of its whole life), None when it did not end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got, status, ru = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return proc.returncode, None
        if got == proc.pid:
            code = os.waitstatus_to_exitcode(status)
            proc.returncode = code  # reaped here; Popen must not wait again
            return code, ru.ru_utime + ru.ru_stime
        time.sleep(0.05)
    return None, None


@dataclass
class ViewResult:
    refreshes: int = 0
    write_seconds: list[float] = field(default_factory=list)  # page: write_lab_page's own time
    poll_wall: list[float] = field(default_factory=list)  # json-poll: each command's wall time
    life_cpu: float | None = None
    life_wall: float = 0.0
    exit_codes: list[int | None] = field(default_factory=list)
    stderr_issues: list[str] = field(default_factory=list)
    final_rows: list[dict[str, Any]] | None = None  # what the view showed last


class LabView:
    """One condition's view over the three configs, started before the rigs and stopped after the
    sessions are finished. ``cpu()`` is its CPU seconds so far (for the run's window)."""

    def __init__(self, condition: str, configs: list[Path], folder: Path, refresh: float) -> None:
        self.condition = condition
        self.configs = [str(c) for c in configs]
        self.folder = folder
        self.refresh = refresh
        self.page = folder / "lab.html"
        self.proc: subprocess.Popen[Any] | None = None
        self.started = 0.0
        self.result = ViewResult()
        self._polls: list[tuple[float, float]] = []  # json-poll: (end time, CPU s) of each command
        self._poll_stop = threading.Event()
        self._poller: threading.Thread | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def base_command(self) -> list[str]:
        return [sys.executable, "-m", "rig2nwb", "lab", *self.configs]

    def start(self) -> None:
        self.started = time.time()
        if self.condition == "json-poll":
            self._poller = threading.Thread(target=self._poll, name="lab-poller", daemon=True)
            self._poller.start()
            return
        extra = (["--page", str(self.page)] if self.condition == "page" else ["--json"])
        cmd = [*self.base_command(), *extra, "--watch", f"{self.refresh:g}"]
        with open(self.folder / "stdout", "wb") as out, open(self.folder / "stderr", "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err)

    def _poll(self) -> None:
        """One ``lab --json`` at a time, started every ``refresh`` s on a fixed schedule (at once
        when the previous one took longer); its CPU from wait4."""
        k = 0
        t0 = time.monotonic()
        while not self._poll_stop.is_set():
            began = time.monotonic()
            with open(self.folder / "stdout", "wb") as out, \
                    open(self.folder / "stderr", "ab") as err:
                proc = subprocess.Popen([*self.base_command(), "--json"], stdout=out, stderr=err)
            code, cpu = _reap(proc, timeout=120)
            if code is None:
                proc.kill()
                _reap(proc, timeout=10)
            self._polls.append((time.time(), cpu or 0.0))
            self.result.poll_wall.append(time.monotonic() - began)
            self.result.exit_codes.append(code)
            with contextlib.suppress(ValueError, OSError):
                self.result.final_rows = json.loads((self.folder / "stdout").read_text())
            k += 1
            self._poll_stop.wait(max(0.0, t0 + k * self.refresh - time.monotonic()))

    def cpu(self) -> float:
        if self.condition == "json-poll":
            return sum(c for _, c in list(self._polls))
        return _cpu_of(self.proc.pid) if self.proc is not None else 0.0

    def stop(self) -> ViewResult:
        res = self.result
        if self._poller is not None:
            self._poll_stop.set()
            self._poller.join(timeout=130)
            res.refreshes = len(self._polls)
            res.life_cpu = self.cpu()
        elif self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            code, cpu = _reap(self.proc, timeout=30)
            if code is None:
                self.proc.kill()
                code, cpu = _reap(self.proc, timeout=10)
            res.exit_codes.append(code)
            res.life_cpu = cpu
            self._read_output()
        res.life_wall = time.time() - self.started
        err = (self.folder / "stderr").read_text(errors="replace")
        res.stderr_issues = [ln.strip()[:200] for ln in err.splitlines()
                             if re.search(r"Traceback|Error|error|locked|busy", ln)][:5]
        return res

    def _read_output(self) -> None:
        res = self.result
        text = (self.folder / "stdout").read_text(errors="replace")
        if self.condition == "page":
            res.write_seconds = [float(m.group(1)) for m in PAGE_LINE.finditer(text)]
            res.refreshes = len(res.write_seconds)
            with contextlib.suppress(ValueError, OSError):
                res.final_rows = json.loads(self.page.with_suffix(".json").read_text())["sessions"]
            return
        decoder = json.JSONDecoder()  # json: documents one after another
        pos, docs, last = 0, 0, None
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                break
            try:
                last, pos = decoder.raw_decode(text, pos)
            except ValueError:
                break  # a document cut short by SIGTERM
            docs += 1
        res.refreshes = docs
        res.final_rows = last if isinstance(last, list) else None


# --- one run: three sessions at once, under one condition ----------------------------------------


@dataclass
class Rig:
    name: str
    lab: Any  # rig2nwb.testing.labs.Lab
    daemon: Daemon
    frames: Path  # the session's pages (.npy), written by every run


@dataclass
class RigRun:
    rig: str
    convert: float | None = None  # last TIFF closed -> session finished_at
    session_seconds: float | None = None  # first TIFF created -> finished_at
    latencies: list[float] = field(default_factory=list)  # per TIFF: committed - closed
    ledger_latencies: list[float] = field(default_factory=list)  # files.updated_at - closed
    daemon_cpu: float | None = None  # the daemon tree's CPU s over the run's window
    wal_bytes: int | None = None  # the ledger's -wal file when the session finished
    check: str = "NOT RUN"


@dataclass
class RunResult:
    condition: str
    repeat: int
    session: str
    rigs: dict[str, RigRun] = field(default_factory=dict)
    window: float = 0.0  # rig start -> every session finished, s
    view: ViewResult | None = None
    view_cpu: float | None = None  # the view's CPU s over the window
    view_check: str = "-"
    machine_busy: float | None = None  # the whole machine's CPU use over the window, % of all cores
    refresh: float = 1.0
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and all(r.check == "OK" for r in self.rigs.values()) and \
            self.view_check in ("-", "OK")


def write_sessions(rigs: list[Rig], session: str, args: argparse.Namespace, files: int,
                   folder: Path) -> tuple[dict[str, Any], float, float, int]:
    """Run the writer child; returns its result, its start and end times and its exit code."""
    spec = {"session": session, "files": files, "frames_per_file": args.frames,
            "rate": args.rate, "tz": rigs[0].lab.config().session.timezone,
            "result": str(folder / "writer.json"),
            "rigs": [{"name": r.name, "root": str(r.lab.root), "frames": str(r.frames),
                      "folder": str(r.lab.session_dir(session, SUBJECT, SITE))} for r in rigs]}
    spec_path = folder / "writer_spec.json"
    spec_path.write_text(json.dumps(spec))
    start = end = 0.0
    with open(folder / "writer.stderr", "wb") as err:
        proc = subprocess.Popen(module_command(MODULE, WRITER_CHILD, str(spec_path)),
                                stdout=subprocess.PIPE, stderr=err, text=True, env=module_env())
        assert proc.stdout is not None
        for line in proc.stdout:
            word, _, value = line.partition(" ")
            if word == "start":
                start = float(value)
            elif word == "end":
                end = float(value)
        rc = proc.wait()
    result = json.loads(Path(spec["result"]).read_text()) if Path(spec["result"]).exists() else {}
    return result, start, end, rc


def wait_finished(rigs: list[Rig], session: str, timeout: float) -> dict[str, float]:
    """Until every daemon logged "session finished" for ``session`` (from the logs the benchmark
    already reads: no command, no extra ledger reader). Returns rig -> time.time() seen."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(seen) < len(rigs):
        for r in rigs:
            if r.name in seen:
                continue
            if any(rec.get("event") == "session finished" and rec.get("session") == session
                   for rec in r.daemon.log.records()):
                seen[r.name] = time.time()
            elif r.daemon.proc.poll() is not None:
                return seen
        time.sleep(0.1)
    return seen


def ledger_facts(rig: Rig, session: str) -> tuple[float | None, dict[str, tuple[int, int, str,
                                                                                 float]]]:
    """The session's finished_at and per file (path -> frames, frames_committed, state,
    updated_at), read once after the run, read-only."""
    path = rig.lab.state / "ledger.sqlite"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        row = db.execute("SELECT id, finished_at FROM sessions WHERE subject = ? AND session = ?",
                         (SUBJECT, session)).fetchone()
        if row is None:
            return None, {}
        files = {p: (f or 0, fc, st, up) for p, f, fc, st, up in db.execute(
            "SELECT path, frames, frames_committed, state, updated_at FROM files "
            "WHERE session_id = ?", (row[0],))}
        return row[1], files
    finally:
        db.close()


def check_nwb(rig: Rig, session: str, n_frames: int) -> str:
    """The series holds every page; its first, middle and last frame equal the pages written."""
    import h5py

    nwb = rig.lab.nwb(session, SUBJECT)
    if not nwb.exists():
        return f"MISMATCH: no {nwb.name}"
    pages = np.load(rig.frames, mmap_mode="r")
    try:
        with h5py.File(nwb, "r", locking=False) as f:
            data = f["acquisition/TwoPhotonSeries/data"]
            if data.shape[0] != n_frames:
                return f"MISMATCH: {data.shape[0]} frames, expected {n_frames}"
            for j in sorted({0, n_frames // 2, n_frames - 1}):
                if not np.array_equal(data[j], pages[j]):
                    return f"MISMATCH: frame {j}"
    except (OSError, KeyError) as exc:
        return f"MISMATCH ({exc})"
    return "OK"


def check_view(rows: list[dict[str, Any]] | None, session: str, n_frames: int) -> str:
    """What the view showed last (after every session finished): each rig's session finished
    with every frame, and every daemon running."""
    if rows is None:
        return "no output read"
    for name in RIGS:
        mine = [r for r in rows if r.get("rig") == name and r.get("session") == session]
        if not mine:
            return f"{name}/{session} missing"
        r = mine[0]
        if r.get("state") != "finished" or r.get("frames") != n_frames:
            return f"{name}/{session}: {r.get('state')}, {r.get('frames')} frames"
        daemon = r.get("daemon") or {}
        if daemon.get("state") != "running":
            return f"{name}: daemon {daemon.get('state')} ({daemon.get('detail')})"
    return "OK"


def busy_cores() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, wall time): /proc/stat through psutil."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle, time.time()


def run_once(rigs: list[Rig], condition: str, repeat: int, args: argparse.Namespace,
             workdir: Path, files: int | None = None) -> RunResult:
    files = files or args.files
    session = f"r{repeat}_{condition.replace('-', '')}" if repeat else f"warmup_{condition}"
    folder = workdir / "runs" / session
    folder.mkdir(parents=True)
    res = RunResult(condition, repeat, session, refresh=args.refresh)
    n_frames = files * args.frames
    view = None
    if condition != BASELINE:
        view = LabView(condition, [r.lab.config_path for r in rigs], folder / "view", args.refresh)
        view.start()
        time.sleep(2 * args.refresh)  # refreshing before the rigs start, as on a lab server
    before: dict[str, TreeSample] = {r.name: sample_tree(r.daemon.proc.pid) for r in rigs}
    busy0 = busy_cores()
    view_cpu0 = view.cpu() if view else None
    written, start, _end, rc = write_sessions(rigs, session, args, files, folder)
    finished = wait_finished(rigs, session, args.finish_timeout) if rc == 0 else {}
    t_end = time.time()
    busy1 = busy_cores()
    after = {r.name: sample_tree(r.daemon.proc.pid) for r in rigs}
    res.window = t_end - start if start else 0.0
    if busy1[1] > busy0[1]:
        res.machine_busy = 100.0 * (busy1[0] - busy0[0]) / (busy1[1] - busy0[1]) / \
            (psutil.cpu_count() or 1)
    if view is not None:
        res.view_cpu = view.cpu() - (view_cpu0 or 0.0)
    wal = {r.name: (r.lab.state / "ledger.sqlite-wal") for r in rigs}
    wal_bytes = {n: (p.stat().st_size if p.exists() else 0) for n, p in wal.items()}
    if view is not None:
        time.sleep(args.refresh + 0.5)  # one more refresh: the view shows the finished sessions
        res.view = view.stop()
        res.view_check = check_view(res.view.final_rows, session, n_frames)
    if rc != 0:
        res.failure = f"the rig writer exited with {rc}: " + \
            "; ".join(f"{k}: {v.get('error')}" for k, v in written.items() if "error" in v)
    elif len(finished) < len(rigs):
        res.failure = (f"not finished after {args.finish_timeout:g} s: "
                       f"{', '.join(r.name for r in rigs if r.name not in finished)}")
    for r in rigs:
        rr = res.rigs[r.name] = RigRun(r.name, wal_bytes=wal_bytes[r.name])
        rr.daemon_cpu = after[r.name].cpu - before[r.name].cpu
        rig_files = (written.get(r.name) or {}).get("files") or []
        if not rig_files:
            rr.check = "FAILED: no files written"
            continue
        appended = r.daemon.log.appended_at()
        finished_at, ledger = ledger_facts(r, session)
        for f in rig_files:
            if f["rel"] in appended:
                rr.latencies.append(appended[f["rel"]] - f["closed"])
            if f["rel"] in ledger and ledger[f["rel"]][2] == "committed":
                rr.ledger_latencies.append(ledger[f["rel"]][3] - f["closed"])
        if finished_at is not None:
            rr.convert = finished_at - rig_files[-1]["closed"]
            rr.session_seconds = finished_at - rig_files[0]["created"]
        bad = [p for p, (fr, fc, st, _) in ledger.items() if st != "committed" or fc != fr
               or fr != args.frames]
        if finished_at is None:
            rr.check = "FAILED: session not finished in the ledger"
        elif len(ledger) != files or bad:
            rr.check = f"FAILED: {len(ledger)} files in the ledger, not committed: {bad[:3]}"
        elif len(rr.latencies) != files:
            rr.check = f"FAILED: {len(rr.latencies)} 'tiff appended' lines for {files} files"
        else:
            rr.check = check_nwb(r, session, n_frames)
    return res


# --- summaries -----------------------------------------------------------------------------------


def _median(xs: list[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


def _p95(xs: list[float]) -> float | None:
    return float(np.percentile(xs, 95)) if xs else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


@dataclass
class Cell:
    """One condition x rig (or every rig: ``rig`` = "all") over the repeats."""

    convert: list[float]
    latency: list[float]
    cpu: list[float]
    runs: int
    per_run: list[float]  # convert s per run (for "all": the median of the rigs), for the noise
    per_run_latency: list[float]  # each run's median commit latency


def cell_of(runs: list[RunResult], condition: str, rig: str) -> Cell:
    mine = [r for r in runs if r.condition == condition and r.repeat > 0]
    names = RIGS if rig == "all" else (rig,)
    per = [x.rigs[n] for x in mine for n in names if n in x.rigs]
    per_run = [_median([c for n in names if n in x.rigs
                        for c in (x.rigs[n].convert,) if c is not None]) for x in mine]
    return Cell([p.convert for p in per if p.convert is not None],
                [lat for p in per for lat in p.latencies],
                [p.daemon_cpu for p in per if p.daemon_cpu is not None], len(mine),
                [v for v in per_run if v is not None],
                [v for v in (_median([lat for n in names if n in x.rigs
                                      for lat in x.rigs[n].latencies]) for x in mine)
                 if v is not None])


MAIN_COLUMNS = ["condition", "rig", "runs", "convert s med", "convert s min", "convert s max",
                "commit s med", "commit s p95", "commit s max", "files", "daemon CPU s med"]
RATIO_COLUMNS = ["condition / none", "rig", "convert", "commit med", "commit p95",
                 "daemon CPU", "none's own convert range", "none's own commit med range"]
VIEW_COLUMNS = ["condition", "runs", "refreshes/run", "refresh/s", "view CPU s/run",
                "view CPU % of a core", "CPU ms/refresh", "life CPU s/run", "write ms med",
                "write ms max",
                "shown right", "exit codes", "stderr"]


def main_rows(runs: list[RunResult], conditions: list[str]) -> list[dict[str, Any]]:
    rows = []
    for c in conditions:
        for rig in (*RIGS, "all"):
            cell = cell_of(runs, c, rig)
            rows.append({
                "condition": c, "rig": rig, "runs": cell.runs,
                "convert s med": _median(cell.convert),
                "convert s min": min(cell.convert) if cell.convert else None,
                "convert s max": max(cell.convert) if cell.convert else None,
                "commit s med": _median(cell.latency), "commit s p95": _p95(cell.latency),
                "commit s max": max(cell.latency) if cell.latency else None,
                "files": len(cell.latency), "daemon CPU s med": _median(cell.cpu)})
    return rows


def ratio_rows(runs: list[RunResult], conditions: list[str]) -> list[dict[str, Any]]:
    rows = []
    for c in conditions:
        if c == BASELINE:
            continue
        for rig in (*RIGS, "all"):
            a, b = cell_of(runs, BASELINE, rig), cell_of(runs, c, rig)
            ma = _median(a.convert)
            mr = _median(a.per_run)
            spread = (f"{min(a.per_run) / mr:.2f}-{max(a.per_run) / mr:.2f}"
                      if a.per_run and mr else "-")
            ml = _median(a.per_run_latency)
            lat_spread = (f"{min(a.per_run_latency) / ml:.2f}-{max(a.per_run_latency) / ml:.2f}"
                          if a.per_run_latency and ml else "-")
            rows.append({
                "condition / none": c, "rig": rig,
                "convert": _ratio(_median(b.convert), ma),
                "commit med": _ratio(_median(b.latency), _median(a.latency)),
                "commit p95": _ratio(_p95(b.latency), _p95(a.latency)),
                "daemon CPU": _ratio(_median(b.cpu), _median(a.cpu)),
                "none's own convert range": spread, "none's own commit med range": lat_spread})
    return rows


def view_rows(runs: list[RunResult], conditions: list[str]) -> list[dict[str, Any]]:
    rows = []
    for c in conditions:
        mine = [r for r in runs if r.condition == c and r.repeat > 0 and r.view is not None]
        if c == BASELINE or not mine:
            continue
        views = [r.view for r in mine if r.view is not None]
        refreshes = [v.refreshes for v in views]
        cpu = [r.view_cpu for r in mine if r.view_cpu is not None]
        window = [r.window for r in mine if r.window]
        writes = [s for v in views for s in v.write_seconds]
        codes = [str(code) for v in views for code in v.exit_codes]
        issues = [i for v in views for i in v.stderr_issues]
        rows.append({
            "condition": c, "runs": len(mine),
            "refreshes/run": _median([float(x) for x in refreshes]),
            "refresh/s": sum(refreshes) / sum(v.life_wall for v in views),
            "view CPU s/run": _median(cpu),
            "view CPU % of a core": 100.0 * sum(cpu) / sum(window) if window else None,
            # steady state: the window's CPU over the refreshes due in it (start-up excluded)
            "CPU ms/refresh": 1000.0 * sum(cpu) / (sum(window) / mine[0].refresh)
            if window and cpu else None,
            "life CPU s/run": _median([v.life_cpu for v in views if v.life_cpu is not None]),
            "write ms med": 1000.0 * (_median(writes) or 0.0) if writes else None,
            "write ms max": 1000.0 * max(writes) if writes else None,
            "shown right": f"{sum(r.view_check == 'OK' for r in mine)}/{len(mine)}",
            "exit codes": ", ".join(f"{k} x{n}" for k, n in _counts(codes).items()),
            "stderr": "clean" if not issues else f"{len(issues)} lines, e.g. {issues[0][:60]}"})
    return rows


def _counts(xs: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out


def run_lines(runs: list[RunResult]) -> list[str]:
    lines = []
    for r in runs:
        rigs = "  ".join(
            f"{x.rig} {x.convert:.2f}/{max(x.latencies):.2f}" if x.convert is not None and
            x.latencies else f"{x.rig} -" for x in r.rigs.values())
        extra = "" if r.view is None else \
            f"; view {r.view.refreshes} refreshes, {r.view_cpu or 0:.2f} CPU s, shown {r.view_check}"
        checks = ",".join(sorted({x.check for x in r.rigs.values()}))
        busy = f"{r.machine_busy:.0f}%" if r.machine_busy is not None else "-"
        lines.append(f"  {r.session:<16} window {r.window:5.1f} s, machine busy {busy}; "
                     f"convert/max commit s: {rigs}{extra}; check {checks}"
                     + (f"; FAILED: {r.failure}" if r.failure else ""))
    return lines


def notes_of(runs: list[RunResult], rigs: list[Rig], args: argparse.Namespace,
             cfg_text: str) -> list[str]:
    measured = [r for r in runs if r.repeat > 0]
    lat = [x - y for r in measured for rr in r.rigs.values()
           for x, y in zip(rr.ledger_latencies, rr.latencies, strict=False)]
    busy = {c: _median([r.machine_busy for r in measured if r.condition == c
                        and r.machine_busy is not None]) for c in args.conditions}
    wal = max((rr.wal_bytes or 0 for r in measured for rr in r.rigs.values()), default=0)
    notes = [
        "convert s = the session's finished_at in its ledger - the moment the rig closed its "
        "last TIFF (and wrote the end marker): the last file's append plus finalize; commit s = "
        "each TIFF's 'tiff appended' log time (written right after the ledger commit) - the "
        "moment the rig closed it",
        f"ledger files.updated_at - 'tiff appended' log time: median "
        f"{_median(lat) or 0:+.3f} s over {len(lat)} files (the two clocks of a commit agree)",
        f"per rig and condition: {args.repeats} runs x {args.files} files = "
        f"{args.repeats * args.files} commit latencies, so p95 is about the largest; the 'all' "
        f"rows pool the three rigs",
        "conditions were interleaved (the order rotates every repeat); one untimed warm-up "
        "session per rig ran first; the same three daemons served every run; the view started "
        f"{2 * args.refresh:g} s before the rigs and stopped {args.refresh + 0.5:g} s after the "
        "last session finished; 'view CPU' = its CPU over rig start -> every session finished, "
        "'life CPU' includes its start-up (json-poll: every command's whole life, by wait4)",
        "none's own convert / commit med range = the baseline's run-to-run spread (min and max "
        "over its runs of the run's convert time (for 'all': its median over the rigs) or of the "
        "run's median commit latency, / their median): ratios inside it are within noise",
        "machine busy (whole machine, % of all cores, median over runs): "
        + ", ".join(f"{c} {v:.0f}%" for c, v in busy.items() if v is not None),
        f"largest ledger -wal file seen when a session finished: {wal / 1e6:.2f} MB (a high-"
        "water mark: SQLite's auto-checkpoint restarts the WAL every ~1000 pages, ~4 MB; a "
        "reader holding snapshots open would let it grow past that)",
        f"machine: {psutil.cpu_count()} CPUs shared with other work running at the same time "
        "(the three rigs, three daemons and the view all ran on it too); compare conditions "
        "against 'none's own convert range', not against zero",
        f"each rig's config: {cfg_text}",
    ]
    for r in rigs:
        for p in r.daemon.problems()[:5]:
            notes.append(f"{r.name}: daemon {p}")
    return notes


# --- main ----------------------------------------------------------------------------------------


def make_rigs(workdir: Path, args: argparse.Namespace) -> tuple[list[Rig], str]:
    """Three Labs, their configs as rig2nwb's defaults except what a bench needs, and each
    session's pages (rig2nwb.testing.simrig's synthetic movie, one seed per rig)."""
    from rig2nwb.config.schema import (
        AppendConfig,
        CompletionConfig,
        OutputConfig,
        ServiceConfig,
        WatchConfig,
    )
    from rig2nwb.testing.labs import Lab
    from rig2nwb.testing.simrig import MovieSpec, SyntheticMovie

    # Lab writes test settings (no compression, 2 s rescan, 0.5 s settle, 16-frame batches):
    # put rig2nwb's defaults back, so each daemon runs as on a rig.
    defaults = {
        "output": {"compression": OutputConfig.model_fields["compression"].default,
                   "check_files": False},
        "watch": {"rescan_seconds": WatchConfig().rescan_seconds},
        "completion": {"settle_seconds": CompletionConfig().settle_seconds,
                       "session_idle_seconds": CompletionConfig().session_idle_seconds},
        "append": {"batch_frames": AppendConfig().batch_frames,
                   "commit_every_frames": AppendConfig().commit_every_frames},
        "service": {"heartbeat_seconds": ServiceConfig().heartbeat_seconds},
        "status": {"summary_picture": False},
    }
    rigs = []
    n = args.files * args.frames
    for i, name in enumerate(RIGS):
        lab = Lab(workdir / name, rig={"name": name, "scan_file": "", "trial_file": "",
                                       "end_marker": "{subject}/tif/{site}/{session}/" + END_MARKER},
                  **defaults)
        movie = SyntheticMovie(MovieSpec(shape=(args.size, args.size), rate=args.rate,
                                         seed=args.seed + i))
        frames = workdir / f"{name}_frames.npy"
        np.save(frames, np.stack(list(movie.frames(0, n))))
        rigs.append(Rig(name, lab, Daemon(lab.config_path, lab.base), frames))
    cfg = (f"compression {defaults['output']['compression']} (the default), check_files false, "
           "summary_picture false, end marker, no scan/trial files, everything else rig2nwb's "
           "default")
    return rigs, cfg


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Does `rig2nwb lab` slow the rigs? 3 daemons, 3 simulated rigs acquiring "
                    "at once, with and without the lab view refreshing. Prints figures; asserts "
                    "no timing.")
    p.add_argument("--repeats", type=int, help="runs per condition, interleaved (3; --quick: 1)")
    p.add_argument("--files", type=int, help="TIFFs per session (3; --quick: 2)")
    p.add_argument("--frames", type=int, help="pages per TIFF (100; --quick: 60)")
    p.add_argument("--size", type=int, default=256, help="frame width = height, pixels (256)")
    p.add_argument("--rate", type=float, default=30.0, help="pages per second per rig (30)")
    p.add_argument("--refresh", type=float, default=1.0,
                   help="the view's --watch seconds (and the poller's period) (1)")
    p.add_argument("--conditions", default="none,page,json,json-poll",
                   help=f"comma-separated, of {', '.join(CONDITIONS)}; 'none' is always run "
                        "(the baseline)")
    p.add_argument("--finish-timeout", type=float, default=180.0,
                   help="seconds to wait for every session to finish (180)")
    p.add_argument("--gap", type=float, default=3.0, help="idle seconds between runs (3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, help="folder for rigs, outputs and state (default: "
                   "new under /tmp)")
    p.add_argument("--keep", action="store_true", help="keep TIFFs, NWB files, ledgers, logs")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument("--quick", action="store_true",
                   help="self-check, ~1.5 min: 1 repeat, 2 files x 60 pages (explicit options win)")
    args = p.parse_args(argv)
    for name, (full, quick) in {"repeats": (3, 1), "files": (3, 2), "frames": (100, 60)}.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    names = [x.strip() for x in args.conditions.split(",") if x.strip()]
    bad = [x for x in names if x not in CONDITIONS]
    if bad:
        p.error(f"unknown condition(s) {', '.join(bad)}; choose from {', '.join(CONDITIONS)}")
    args.conditions = [BASELINE, *[x for x in dict.fromkeys(names) if x != BASELINE]]
    if args.repeats < 1 or args.files < 1 or args.frames < 1 or args.refresh <= 0:
        p.error("--repeats, --files, --frames and --refresh must be above 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == WRITER_CHILD:
        return rigs_writer(argv[1:])
    args = parse_args(argv)
    t_start = time.monotonic()
    command = command_line(MODULE, argv)
    workdir = make_workdir(args.workdir, prefix="rig2nwb-labview-")
    env = environment_lines(workdir)
    for line in env:
        say(line)
    machine = machine_description(workdir)
    say(f"3 rigs x {args.files} TIFFs x {args.frames} pages of {args.size}x{args.size} int16 at "
        f"{args.rate:g} Hz ({args.files * args.frames / args.rate:.0f} s per session); "
        f"conditions {', '.join(args.conditions)}; {args.repeats} repeat(s); view refresh "
        f"{args.refresh:g} s")
    runs: list[RunResult] = []
    rigs: list[Rig] = []
    cfg_text = ""
    try:
        rigs, cfg_text = make_rigs(workdir, args)
        for r in rigs:
            if not r.daemon.start():
                say(f"{r.name}: the daemon never logged 'watching': {r.daemon.problems()}")
                return 1
            say(f"{r.name}: daemon watching after {r.daemon.watching_after:.1f} s")
        warm = run_once(rigs, BASELINE, 0, args, workdir, files=1)
        say(f"warm-up (1 file per rig, not counted): {'OK' if warm.ok else warm.failure}")
        runs.append(warm)
        for rep in range(1, args.repeats + 1):
            k = (rep - 1) % len(args.conditions)
            for cond in args.conditions[k:] + args.conditions[:k]:
                time.sleep(args.gap)
                res = run_once(rigs, cond, rep, args, workdir)
                runs.append(res)
                say(run_lines([res])[0].strip())
    finally:
        for r in rigs:
            if getattr(r.daemon, "proc", None) is not None:
                r.daemon.stop()
        if args.keep:
            say(f"kept {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    conds = args.conditions
    result: dict[str, Any] = {
        "benchmark": "lab_view", "title": "The lab view beside three live rigs",
        "command": command, "machine": {**machine, "environment": env},
        "params": {k: getattr(args, k) for k in ("repeats", "files", "frames", "size", "rate",
                                                 "refresh", "conditions", "quick")},
        "columns": MAIN_COLUMNS, "rows": main_rows(runs, conds),
        "ratio_columns": RATIO_COLUMNS, "ratios": ratio_rows(runs, conds),
        "view_columns": VIEW_COLUMNS, "view": view_rows(runs, conds),
        "runs": [{"session": r.session, "condition": r.condition, "repeat": r.repeat,
                  "window_s": r.window, "machine_busy_pct": r.machine_busy,
                  "view_cpu_s": r.view_cpu, "view_check": r.view_check, "failure": r.failure,
                  "rigs": {n: x.__dict__ for n, x in r.rigs.items()}} for r in runs],
        "notes": notes_of(runs, rigs, args, cfg_text),
        "wall_s": time.monotonic() - t_start,
    }
    say("")
    say("Per rig (medians over runs; commit latency over every TIFF of every run):")
    for line in format_table(MAIN_COLUMNS, result["rows"]):
        say(line)
    say("")
    say("Ratios to the run without a view (1.00 = the same):")
    for line in format_table(RATIO_COLUMNS, result["ratios"]):
        say(line)
    say("")
    say("The lab view itself (CPU over rig start -> every session finished):")
    for line in format_table(VIEW_COLUMNS, result["view"]):
        say(line)
    say("")
    for c in conds:
        say(f"condition {c}: {CONDITIONS[c].replace(' S', ' ' + format(args.refresh, 'g'))}")
    for n in result["notes"]:
        say(f"note: {n}")
    say("runs (convert s / largest commit s per rig):")
    for line in run_lines(runs):
        say(line)
    say(f"wall time {result['wall_s'] / 60:.1f} min")
    if args.json:
        write_json(args.json, result)
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
