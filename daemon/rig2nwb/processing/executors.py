"""What every executor answers: submit a job folder, find a job by its token after a crash,
tell a job's state, cancel it."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Protocol

from rig2nwb.processing.jobfolder import JobFolder
from rig2nwb.states import JobState


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    detail: str = ""


def ended_by_folder(folder: JobFolder, lost: str) -> JobStatus:
    """A job no scheduler or process knows any more, as its folder tells it: done or failed by
    the exit status it wrote, else lost (``lost`` says why)."""
    seen = folder.status()
    if seen.exit_code is not None:
        ended = None
        with contextlib.suppress(OSError):
            ended = os.stat(folder.path / "exit_code").st_mtime
        return JobStatus(JobState.DONE if seen.exit_code == 0 else JobState.FAILED,
                         seen.started_at, ended, seen.exit_code)
    return JobStatus(JobState.LOST, seen.started_at, None, None, lost)


class Executor(Protocol):
    name: str

    def submit(self, folder: JobFolder) -> str | None:
        """Start the job; its id (None when it is started but its id is not known yet: found
        later by its token). Raises JobError (SchedulerUnavailable: try again later)."""

    def find(self, folder: JobFolder) -> str | None:
        """The id of the job submitted under the folder's token, if there is one (a daemon
        killed between submitting and recording). Raises SchedulerUnavailable."""

    def status(self, job_id: str, folder: JobFolder) -> JobStatus:
        """Where the job stands. Raises SchedulerUnavailable."""

    def cancel(self, job_id: str, folder: JobFolder) -> None:
        """Stop the job (it ends as cancelled, or the caller records why it stopped it)."""

    def reap(self) -> None:
        """Collect children that ended (local jobs started by this process)."""
