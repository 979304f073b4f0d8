"""A measured ``rig2nwb run``, shared by live_rig and idle: start the daemon as a child, sample
the CPU and memory of its whole process tree (supervisor, worker, check children), read its
status, stop it.

Linux only: CPU, RSS, context switches and fds come from /proc (through psutil), and the final
CPU of the tree from ``wait4``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed

from benchmarks.kit.childrun import last_lines
from benchmarks.kit.daemonlog import DaemonLog, one_line

# --- the process tree ------------------------------------------------------------------------


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def worker_pid(supervisor: int) -> int | None:
    """``rig2nwb run`` is a small supervisor; its child ``run --worker`` does the work."""
    for p in tree(supervisor)[1:]:
        try:
            if "--worker" in p.cmdline():
                return int(p.pid)
        except psutil.Error:
            continue
    return None


@dataclass(frozen=True)
class TreeSample:
    t: float  # time.time()
    cpu: float  # user + system seconds of the live tree, plus everything its members reaped
    rss: int  # sum of the members' RSS, bytes
    procs: int


def sample_tree(pid: int) -> TreeSample:
    """CPU of a process tree so far. A member's ``children_*`` times hold the children it has
    reaped (and theirs), so a check child that came and went between two samples still counts:
    alive it is summed directly, after exit its parent's children times carry it."""
    cpu = 0.0
    rss = 0
    n = 0
    for p in tree(pid):
        try:
            with p.oneshot():
                t = p.cpu_times()
                mem = p.memory_info().rss
        except psutil.Error:
            continue  # exited between listing and reading: its parent's children times take it
        cpu += t.user + t.system + t.children_user + t.children_system
        rss += mem
        n += 1
    return TreeSample(time.time(), cpu, rss, n)


def proc_status(pid: int) -> dict[str, int]:
    """Numeric fields of /proc/PID/status (kB values in bytes), e.g. VmHWM, VmRSS."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return out


def context_switches(pid: int) -> int | None:
    """Voluntary context switches of every live thread of ``pid`` (each one a wake-up from a
    sleep). Threads that ended since are not counted, so this is a lower bound."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def inotify_watches(pid: int) -> int | None:
    """Watches held by the process's inotify instances (one per watched folder)."""
    total = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        total += sum(1 for line in info.splitlines() if line.startswith("inotify wd:"))
    return total


class TreeSampler:
    """Samples a process tree every ``interval`` seconds on a thread (RSS peaks, CPU history)."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[TreeSample] = []
        self.worker_hwm = 0  # largest VmHWM seen of any worker (a restarted one starts afresh)
        self.worker_rss: list[tuple[float, int]] = []  # (time.time(), the worker's VmRSS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(sample_tree(self.pid))
            w = worker_pid(self.pid)
            if w is not None:
                st = proc_status(w)
                self.worker_hwm = max(self.worker_hwm, st.get("VmHWM", 0))
                self.worker_rss.append((time.time(), st.get("VmRSS", 0)))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def peak_rss_sum(self, since: float = 0.0) -> int:
        return max((s.rss for s in self.samples if s.t >= since), default=0)

    def peak_worker_rss(self, start: float, end: float) -> int | None:
        """The worker's largest sampled RSS between two time.time() values."""
        return max((r for t, r in self.worker_rss if start <= t <= end), default=None)

    def dump(self, path: Path) -> None:
        """The samples as JSON, for a look at where the CPU went over time."""
        path.write_text(json.dumps({
            "tree": [[round(s.t, 3), round(s.cpu, 3), s.rss, s.procs] for s in self.samples],
            "worker_rss": [[round(t, 3), r] for t, r in self.worker_rss]}))


# --- running the daemon ----------------------------------------------------------------------


@dataclass
class Daemon:
    """``python -m rig2nwb run --config CFG`` with its JSON log read on a thread."""

    config: Path
    base: Path  # log files go here
    proc: subprocess.Popen[str] = field(init=False)
    log: DaemonLog = field(init=False)
    started: float = field(init=False)  # time.time() at launch
    watching_after: float | None = None  # seconds from launch to the "watching" line
    sampler: TreeSampler | None = None
    exit_seconds: float | None = None
    exit_rc: int | None = None
    total_cpu: float | None = None  # the whole tree's CPU seconds over its life (wait4)
    max_rss: int | None = None  # wait4: the largest single process of the tree, bytes
    lifetime: float | None = None

    def start(self, timeout: float = 120.0) -> bool:
        """Launch and wait for the "watching" line; False when it never came."""
        self.started = time.time()
        with open(self.base / "daemon.stdout.log", "wb") as stdout:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rig2nwb", "run", "--config", str(self.config)],
                stdout=stdout, stderr=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stderr is not None
        self.log = DaemonLog(self.proc.stderr, self.base / "daemon.log")
        self.sampler = TreeSampler(self.proc.pid)
        # Poll, so a daemon that exits at start-up (bad config, lock held) is reported at once.
        while not self.log.watching.wait(0.2) and self.proc.poll() is None:
            if time.time() - self.started > timeout:
                break
        if self.log.watching.is_set():
            self.watching_after = time.time() - self.started
            return True
        return False

    def stop(self) -> None:
        """SIGTERM, then reap with wait4: its rusage is the supervisor plus every descendant it
        (and they) waited for, i.e. the CPU of the whole tree over its whole life."""
        if self.sampler is not None:
            self.sampler.stop()
        if self.proc.returncode is None:
            t0 = time.monotonic()
            with contextlib.suppress(ProcessLookupError, psutil.Error):
                self.proc.send_signal(signal.SIGTERM)
            status, ru = _wait4(self.proc.pid, timeout=60.0)
            if status is None:  # hung: kill the whole group we can see, then reap
                for p in reversed(tree(self.proc.pid)):
                    with contextlib.suppress(ProcessLookupError, psutil.Error):
                        p.kill()
                status, ru = _wait4(self.proc.pid, timeout=30.0)
            else:
                self.exit_seconds = time.monotonic() - t0
            if status is not None:
                self.exit_rc = os.waitstatus_to_exitcode(status)
                self.proc.returncode = self.exit_rc  # reaped here; Popen must not wait again
            if ru is not None:
                self.total_cpu = ru.ru_utime + ru.ru_stime
                self.max_rss = ru.ru_maxrss * 1024  # KiB on Linux
        self.lifetime = time.time() - self.started
        self.log.thread.join(timeout=10)

    def problems(self) -> list[str]:
        """Warnings and errors the daemon logged, one short line each."""
        out = [one_line(f"{r.get('level')}: {r.get('event')} "
                        f"{r.get('problem') or r.get('error') or r.get('reason') or ''}")
               for r in self.log.records() if r.get("level") in ("warning", "error", "critical")]
        if self.watching_after is None:
            out.append(f"never logged 'watching'; stderr ends: {last_lines(self.base / 'daemon.log')}")
        return out


def _wait4(pid: int, timeout: float) -> tuple[int | None, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got, status, ru = os.wait4(pid, os.WNOHANG)
        except ChildProcessError:
            return None, None
        if got == pid:
            return status, ru
        time.sleep(0.05)
    return None, None


def status_rows(config: Path) -> list[dict[str, Any]]:
    """``rig2nwb status --json``: one dict per session (empty on failure)."""
    r = subprocess.run([sys.executable, "-m", "rig2nwb", "status", "--json", "--config", str(config)],
                       capture_output=True, text=True, check=False)
    try:
        rows = json.loads(r.stdout)
    except ValueError:
        return []
    return rows if isinstance(rows, list) else []


def wait_finished(daemon: Daemon, sessions: set[str], timeout: float, poll: float = 2.0,
                  checked: bool = False) -> tuple[list[dict[str, Any]], float | None]:
    """Poll status until every session is ``finished`` (and, with ``checked``, its file check is
    no longer pending). Returns the last rows and the time.time() it happened (None: timeout)."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline and daemon.proc.poll() is None:
        rows = status_rows(daemon.config)
        done = {r["session"] for r in rows if r.get("state") == "finished"
                and not (checked and r.get("validation") == "pending")}
        if sessions <= done:
            return rows, time.time()
        time.sleep(poll)
    return rows, None
