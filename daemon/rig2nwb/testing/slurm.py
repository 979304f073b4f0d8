"""A real single-node SLURM cluster for the tests, in a temporary folder.

A private ``munged -F`` (its own key, socket, pid and seed files), then ``slurmctld -D -i`` and
``slurmd -D``, all children of the test that stops them by pid (``pgrep`` would also match
zombies, so nothing is looked up by name). ``slurm.conf`` uses proctrack/linuxproc and task/none
(no cgroups needed), jobacct_gather/none (accounting is off: job states come from ``scontrol
show job``), select/cons_tres, and one node with this machine's CPUs and memory. Clients find it
through ``SLURM_CONF`` (see ``env``). Needs Debian's slurmctld, slurmd, slurm-client and munge;
``why_not`` says what is missing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
START_TIMEOUT_SECONDS = 60.0


def why_not() -> str | None:
    """Why a cluster cannot be started here (None: it can be tried)."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return (f"SLURM/munge tools not installed ({', '.join(missing)}); Debian: apt-get install "
                "slurmctld slurmd slurm-client munge")
    if os.name != "posix" or os.geteuid() != 0:
        return "the private slurmd runs jobs as their submitter and needs to be root here"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """``start()`` it, use ``env`` for every SLURM client call, ``stop()`` it. ``stop_controller``
    and ``start_controller`` take slurmctld down and up (for the 'controller down' tests)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o755)
        for sub in ("spool", "state", "log"):
            (base / sub).mkdir(exist_ok=True)
        self.conf = base / "slurm.conf"
        self.socket = base / "munge.socket"
        self.host = socket.gethostname()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def env(self) -> Mapping[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_conf(self) -> None:
        cpus = os.cpu_count() or 1
        mem = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
        b = self.base
        self.conf.write_text("\n".join([
            "ClusterName=rig2nwbtest",
            f"SlurmctldHost={self.host}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.socket}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={b / 'state'}",
            f"SlurmdSpoolDir={b / 'spool'}",
            f"SlurmctldPidFile={b / 'slurmctld.pid'}",
            f"SlurmdPidFile={b / 'slurmd.pid'}",
            f"SlurmctldLogFile={b / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={b / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            "MinJobAge=600",  # finished jobs stay known to scontrol for 10 min
            "SchedulerParameters=sched_interval=1",
            f"NodeName={self.host} CPUs={cpus} RealMemory={mem} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
            ""]))

    def start(self) -> None:
        key = self.base / "munge.key"
        key.write_bytes(secrets.token_bytes(128))
        os.chmod(key, 0o600)
        self._write_conf()
        b = self.base
        self._spawn("munged", ["munged", "-F", "--force", f"--socket={self.socket}",
                               f"--key-file={key}", f"--pid-file={b / 'munged.pid'}",
                               f"--seed-file={b / 'munged.seed'}",
                               f"--log-file={b / 'log' / 'munged.log'}"])
        self._wait(self.socket.exists, "munged's socket")
        self.start_controller()
        self._spawn("slurmd", ["slurmd", "-D"])
        self._wait(lambda: self._node_state() in ("idle", "mixed", "allocated"), "the node idle")

    def start_controller(self) -> None:
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        self._wait(self.controller_up, "slurmctld answering")

    def stop_controller(self) -> None:
        self._stop("slurmctld")

    def controller_up(self) -> bool:
        out = subprocess.run(["scontrol", "ping"], env=dict(self.env), capture_output=True,
                             text=True, timeout=30)
        return "UP" in out.stdout

    def _node_state(self) -> str:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=dict(self.env),
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip().rstrip("*")

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.base / "log" / f"{name}.stderr", "ab")  # noqa: SIM115 - the child's
        self.procs[name] = subprocess.Popen(argv, env=dict(self.env), stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL)
        log.close()

    def _wait(self, ready: object, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for "
                                       f"{what}; see {self.base / 'log'}")
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}; see {self.base / 'log'}")

    def _stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld", "munged"):
            self._stop(name)

    def jobs_named(self, prefix: str) -> list[dict[str, str]]:
        """Every job scontrol knows whose name starts with ``prefix`` (finished ones too)."""
        out = subprocess.run(["scontrol", "show", "job", "-o"], env=dict(self.env),
                             capture_output=True, text=True, timeout=30)
        jobs = []
        for line in out.stdout.splitlines():
            fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
            if fields.get("JobName", "").startswith(prefix):
                jobs.append(fields)
        return jobs
