"""A small supervisor around the daemon's worker process.

Why a second process: after HDF5 fails a write (a full disk, an I/O error) the library's
in-memory state of that file is broken. Retrying the flush "works" but leaves a corrupt chunk
index, and closing or even garbage-collecting the file object segfaults (measured, h5py 3.16 /
HDF5 2.0). The only safe recovery is a fresh process, which is exactly what crash safety already
handles: the new worker trims the NWB file to the ledger's committed count and carries on. So the
worker exits with RESTART_CODE right after recording what happened, and this supervisor, which
never imports h5py, starts a new one. It also restarts a worker that crashed (with backoff), so
an acquisition PC without systemd keeps converting.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType

from rig2nwb.engine.quarantine import PREVIOUS_EXIT_ENV
from rig2nwb.logs import Logger, get_logger
from rig2nwb.service import sdnotify

# How the previous worker ended (set for the next one; read by quarantine.py).

RESTART_CODE = 75  # EX_TEMPFAIL: "start me again"
CONFIG_ERROR_CODE = 2
ALREADY_RUNNING_CODE = 3  # another daemon owns the state folder
LEDGER_DAMAGED_CODE = 4  # the ledger fails integrity_check: restarting cannot help
MAX_BACKOFF_SECONDS = 60.0
# After SIGTERM the worker commits its batch and exits, normally within a second or two. One stuck
# in a read that never returns (a hung share, a file that lies about its size) is killed after
# this long, so the service always stops within 10 s: killing it is safe, the NWB file and the
# ledger are crash-safe by design.
STOP_GRACE_SECONDS = 8.0
HEALTHY_AFTER_SECONDS = 60.0  # a worker that ran this long resets the backoff


def supervise(worker_argv: list[str]) -> int:
    """Run the worker until it stops by itself or we are asked to stop; return its exit code."""
    log = get_logger("rig2nwb.service.supervisor")
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    stop_asked = 0.0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping, stop_asked
        if not stopping:
            stop_asked = time.monotonic()
        stopping = True
        sdnotify.notify("STOPPING=1", "STATUS=stopping: the worker commits its batch and exits")
        if child is not None and child.poll() is None:
            _ask_to_stop(child)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if hasattr(signal, "SIGBREAK"):
        signal.signal(signal.SIGBREAK, on_signal)

    # systemd's watchdog (WATCHDOG_PID is ours): fed here only before a worker starts and while
    # waiting to restart one, never while a worker runs, so a hung worker loop is restarted.
    keepalive = sdnotify.Keepalive(sdnotify.watchdog_seconds(), extend_start=False)
    backoff = 1.0
    previous_exit: str | None = None  # how the last worker ended, when it did not end cleanly
    while True:
        started = time.monotonic()
        keepalive.beat(force=True)  # the new worker's imports and start-up get a full interval
        child = _spawn(worker_argv, previous_exit)
        rc = _wait(child, lambda: stopping and time.monotonic() - stop_asked > STOP_GRACE_SECONDS,
                   log)
        ran = time.monotonic() - started
        if stopping:
            # Stopped as asked, killed after the grace period included (see STOP_GRACE_SECONDS).
            return 0 if rc in (0, -signal.SIGTERM, -getattr(signal, "SIGKILL", 9)) else rc
        if rc == 0:
            return 0  # the worker decided to stop (e.g. its own signal handling)
        if rc in (CONFIG_ERROR_CODE, LEDGER_DAMAGED_CODE):
            return rc  # a bad config or a damaged ledger does not get better by restarting
        if rc == ALREADY_RUNNING_CODE:
            return 1  # a second daemon on the same state folder: the worker said so
        if ran >= HEALTHY_AFTER_SECONDS:
            backoff = 1.0
        if rc == RESTART_CODE and ran >= 5:
            delay = 0.0  # a requested restart after real work: at once
        else:
            delay = backoff
            backoff = min(MAX_BACKOFF_SECONDS, backoff * 2)
        reason = "requested a restart" if rc == RESTART_CODE else f"exited with code {rc}"
        # The next worker counts this death against the session its predecessor was working
        # on (quarantine.py): a session that kills every worker is quarantined, not retried.
        previous_exit = describe_exit(rc)
        log.warning("worker stopped; starting a new one", stage="supervisor", reason=reason,
                    ran_seconds=round(ran, 1), restart_in_seconds=delay)
        sdnotify.notify(f"STATUS=worker {reason}, restarting in {delay:g} s")
        keepalive.beat(force=True)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not stopping:
            time.sleep(0.1)
            keepalive.beat()  # correctly recovering: systemd must not kill us for the wait
        if stopping:
            return 0


def describe_exit(rc: int) -> str:
    """``killed by SIGKILL`` / ``exit code 1`` / ``restart requested after a failed write``."""
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    if rc == RESTART_CODE:
        return "restart requested after a failed write"
    return f"exit code {rc}"


def _spawn(argv: list[str], previous_exit: str | None = None) -> subprocess.Popen[bytes]:
    kwargs: dict[str, object] = {}
    if sys.platform == "win32":
        # Its own process group, so CTRL_BREAK_EVENT reaches only the worker (a clean stop).
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    env = {**os.environ, "RIG2NWB_SUPERVISOR_PID": str(os.getpid())}
    env.pop(PREVIOUS_EXIT_ENV, None)
    if previous_exit:
        env[PREVIOUS_EXIT_ENV] = previous_exit
    return subprocess.Popen(argv, env=env, **kwargs)  # type: ignore[call-overload, no-any-return]


def _wait(child: subprocess.Popen[bytes], overdue: Callable[[], bool], log: Logger) -> int:
    """The worker's exit code; a worker still running when ``overdue()`` is killed."""
    killed = False
    while True:
        try:
            return child.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if overdue() and not killed:
                log.warning("worker did not stop in time; killing it (its committed work is "
                            "safe)", stage="supervisor", grace_seconds=STOP_GRACE_SECONDS)
                child.kill()
                killed = True
        except InterruptedError:  # pragma: no cover - PEP 475 retries, but be safe
            continue


def _ask_to_stop(child: subprocess.Popen[bytes]) -> None:
    if sys.platform == "win32":
        child.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
    else:
        child.send_signal(signal.SIGTERM)


def die_with_supervisor() -> None:
    """In the worker: be killed when the supervisor dies (Linux), so a SIGKILLed service never
    leaves an orphan writing the NWB file. Elsewhere the state-folder lock still prevents a
    second writer: a new worker waits until the orphan is gone."""
    parent = os.environ.get("RIG2NWB_SUPERVISOR_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(parent):  # the supervisor died before prctl took effect
        os._exit(1)
