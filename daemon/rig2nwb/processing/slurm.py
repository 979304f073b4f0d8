"""SLURM through its command-line tools: ``sbatch --parsable`` to submit, ``squeue`` and ``scontrol
show job`` to follow, ``scancel`` to cancel.

Why the CLI and not submitit or pyslurm: the commands are what every SLURM site provides and
keeps compatible across versions (the lab's admin already has them on the login node), they
need no Python on the compute nodes beyond what the job itself runs, and their output is the
same text an admin reads. pyslurm must be built against the cluster's exact libslurm version;
submitit pickles Python functions into its own folder layout and expects the same Python on
every node. A job here is a plain batch script in the state folder, which the admin can read
and run by hand.

Accounting (``sacct``) is often off on small clusters: states come from ``scontrol show job``,
which keeps finished jobs for ``MinJobAge`` (300 s by default); a job it no longer knows is
told by its folder (``exit_code``), else it is lost.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Sequence

from rig2nwb.core.jobs import slurm_exit_code, slurm_state
from rig2nwb.errors import JobError, SchedulerUnavailable
from rig2nwb.processing.executors import JobStatus, ended_by_folder
from rig2nwb.processing.jobfolder import JobFolder
from rig2nwb.states import JobState

CALL_TIMEOUT_SECONDS = 60.0
# What the tools say when the controller cannot be reached (SLURM 20-24).
_DOWN = re.compile(r"unable to contact slurm controller|connection refused|socket timed out|"
                   r"communication connection failure|slurm_receive_msg|"
                   r"zero bytes were transmitted|slurmctld.*(down|not responding)", re.I)
_FIELD = re.compile(r"(\w+)=(\S*)")

Run = Callable[..., "subprocess.CompletedProcess[str]"]


def job_name(token: str) -> str:
    return f"rig2nwb-{token}"


class SlurmExecutor:
    name = "slurm"

    def __init__(self, options: Sequence[str] = (), *, run: Run = subprocess.run,
                 env: dict[str, str] | None = None) -> None:
        self.options = list(options)
        self._run = run
        self.env = env

    def _call(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        try:
            return self._run(argv, capture_output=True, text=True, timeout=CALL_TIMEOUT_SECONDS,
                             env=self.env, stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise JobError(f"{argv[0]} not found: the SLURM client tools are not installed "
                           "on this machine (Debian: slurm-client)") from exc
        except subprocess.TimeoutExpired as exc:
            raise SchedulerUnavailable(f"{argv[0]} did not answer within "
                                       f"{CALL_TIMEOUT_SECONDS:g} s") from exc

    def _checked(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        out = self._call(argv)
        if out.returncode != 0:
            text = " ".join((out.stderr or out.stdout).split())
            if _DOWN.search(text):
                raise SchedulerUnavailable(f"{argv[0]}: {text}")
            raise JobError(f"{argv[0]} refused: {text or f'exit status {out.returncode}'}")
        return out

    def submit(self, folder: JobFolder) -> str | None:
        out = self._checked(["sbatch", "--parsable", f"--job-name={job_name(folder.token)}",
                             f"--output={folder.log}", f"--chdir={folder.path}",
                             *self.options, str(folder.script)])
        job_id = out.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise JobError(f"sbatch answered {out.stdout.strip()!r}, not a job id")
        return job_id

    def find(self, folder: JobFolder) -> str | None:
        name = job_name(folder.token)
        out = self._checked(["squeue", "-h", "-o", "%i", f"--name={name}"])
        ids = out.stdout.split()
        if ids:
            return ids[0]
        for job in self._all_jobs():  # finished ones too, while scontrol still knows them
            if job.get("JobName") == name:
                return job.get("JobId")
        return None

    def _all_jobs(self) -> list[dict[str, str]]:
        out = self._call(["scontrol", "show", "job", "-o"])
        if out.returncode != 0:
            text = " ".join(out.stderr.split())
            if _DOWN.search(text):
                raise SchedulerUnavailable(f"scontrol: {text}")
            return []
        return [dict(_FIELD.findall(line)) for line in out.stdout.splitlines() if line.strip()]

    def status(self, job_id: str, folder: JobFolder) -> JobStatus:
        out = self._call(["scontrol", "show", "job", "-o", job_id])
        if out.returncode != 0:
            text = " ".join(out.stderr.split())
            if _DOWN.search(text):
                raise SchedulerUnavailable(f"scontrol: {text}")
            return ended_by_folder(folder, "the scheduler no longer knows the job, and it left "
                                   "no exit status")
        fields = dict(_FIELD.findall(out.stdout))
        raw_state = re.search(r"JobState=(\S+)", out.stdout)
        state = slurm_state(raw_state.group(1) if raw_state else "")
        reason = fields.get("Reason", "None")
        detail = ""
        if raw_state and raw_state.group(1) == "TIMEOUT":
            detail = "SLURM's time limit (--time) ended it"
        elif state is JobState.QUEUED and reason not in ("None", ""):
            detail = f"waiting: {reason}"
        return JobStatus(state, _time(fields.get("StartTime")), _time(fields.get("EndTime")),
                         slurm_exit_code(fields.get("ExitCode", "")), detail)

    def cancel(self, job_id: str, folder: JobFolder) -> None:
        self._checked(["scancel", job_id])

    def reap(self) -> None:
        pass


def _time(text: str | None) -> float | None:
    """scontrol's local ``2026-12-03T15:50:01`` (or Unknown/None) as epoch seconds."""
    if not text or not text[0].isdigit():
        return None
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


