"""Jobs on this machine: a detached, low-priority wrapper process (processing.runjob) that
outlives the daemon which started it; the next daemon adopts it by its pid and start time.

Under systemd the daemon's own sandbox would be inherited (``MemoryDenyWriteExecute=`` breaks
numba, which suite2p uses) and stopping the service would kill the job with it, so there the
job is started as an instance of the companion unit ``rig2nwb-suite2p@.service`` instead
(``launcher = "systemd"``, chosen automatically under systemd)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from rig2nwb.errors import JobError
from rig2nwb.processing.executors import JobStatus, ended_by_folder
from rig2nwb.processing.jobfolder import JobFolder
from rig2nwb.states import JobState

UNIT = "rig2nwb-suite2p@{}.service"
SYSTEMD_START_WAIT_SECONDS = 10.0
_BELOW_NORMAL = getattr(subprocess, "BELOW_NORMAL_PRIORITY_CLASS", 0)
_DETACHED = getattr(subprocess, "DETACHED_PROCESS", 0) | getattr(
    subprocess, "CREATE_NEW_PROCESS_GROUP", 0)


def under_systemd() -> bool:
    """Is this process a systemd service (a unit sets INVOCATION_ID for its processes)?"""
    return bool(os.environ.get("INVOCATION_ID")) and os.name == "posix"


def job_id_of(pid: int) -> str:
    """``pid:<pid>:<start time>``: a pid alone may be reused by another process later."""
    return f"pid:{pid}:{psutil.Process(pid).create_time():.2f}"


def unit_instance(folder: Path) -> str:
    """The systemd instance name of a job folder (``systemd-escape --path``): ``%f`` in the
    unit gives the path back."""
    out = subprocess.run(["systemd-escape", "--path", str(folder)], capture_output=True,
                         text=True, check=True, timeout=10)
    return out.stdout.strip()


class LocalExecutor:
    name = "local"

    def __init__(self, *, launcher: str = "auto", python: str = sys.executable,
                 systemctl: str = "systemctl",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.launcher = ("systemd" if under_systemd() else "process") if launcher == "auto" \
            else launcher
        self.python = python
        self.systemctl = systemctl
        self._clock = clock
        self._children: list[subprocess.Popen[bytes]] = []

    def submit(self, folder: JobFolder) -> str | None:
        if self.launcher == "systemd":
            return self._submit_unit(folder)
        argv = [self.python, "-m", "rig2nwb.processing.runjob", str(folder.path)]
        try:
            with open(folder.path / "wrapper.log", "ab") as err:
                child = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    cwd=folder.path, close_fds=True,
                    start_new_session=os.name == "posix",  # its own session: not our signals
                    creationflags=_DETACHED | _BELOW_NORMAL)
        except OSError as exc:
            raise JobError(f"cannot start the local job: {exc}") from exc
        self._children.append(child)
        return job_id_of(child.pid)

    def _submit_unit(self, folder: JobFolder) -> str | None:
        unit = UNIT.format(unit_instance(folder.path))
        try:
            out = subprocess.run([self.systemctl, "start", "--no-block", unit],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise JobError(f"systemctl start {unit}: {exc}") from exc
        if out.returncode != 0:
            raise JobError(f"systemctl start {unit} failed: {' '.join(out.stderr.split())} "
                           "(the service user may start it: see docs/cluster.md, polkit rule)")
        deadline = self._clock() + SYSTEMD_START_WAIT_SECONDS
        while self._clock() < deadline:
            found = self.find(folder)
            if found is not None:
                return found
            time.sleep(0.2)
        return None  # started, not yet running: found by its folder at the next poll

    def find(self, folder: JobFolder) -> str | None:
        pid = folder.status().pid
        if pid is not None:
            with contextlib.suppress(psutil.Error):
                if folder.path.as_posix() in " ".join(psutil.Process(pid).cmdline()):
                    return job_id_of(pid)
        target = str(folder.path)
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                cmd = proc.info["cmdline"] or []
                if "rig2nwb.processing.runjob" in cmd and target in cmd:
                    return job_id_of(proc.pid)
        return None

    def _process(self, job_id: str) -> psutil.Process | None:
        try:
            _, pid, started = job_id.split(":")
            proc = psutil.Process(int(pid))
            if abs(proc.create_time() - float(started)) > 0.05:
                return None  # the pid was reused by another process
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except (ValueError, psutil.Error):
            return None

    def status(self, job_id: str, folder: JobFolder) -> JobStatus:
        self.reap()
        seen = folder.status()
        if self._process(job_id) is not None:
            return JobStatus(JobState.RUNNING, seen.started_at)
        return ended_by_folder(folder, "its process is gone and left no exit status (killed, "
                               "or the machine restarted)")

    def cancel(self, job_id: str, folder: JobFolder) -> None:
        proc = self._process(job_id)
        if proc is None:
            return
        if os.name == "posix":
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGTERM)  # the wrapper and its command
            try:
                proc.wait(timeout=10)
            except psutil.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows
            for p in [*proc.children(recursive=True), proc]:
                with contextlib.suppress(psutil.Error):
                    p.kill()
        self.reap()

    def reap(self) -> None:
        self._children = [c for c in self._children if c.poll() is None]
