"""Processing jobs, pure: when a session's suite2p job starts, what it runs, what a scheduler's
word means, and how long to wait before asking a scheduler that was down.

No I/O here: the processing package gathers the facts (ledger rows, scheduler answers, files)
and carries out the verdicts.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rig2nwb.states import JobState

# Placeholders a command template may use (config suite2p.run.command).
PLACEHOLDERS: Mapping[str, str] = {
    "session_folder": "the session's TIFF folder",
    "suite2p_folder": "where the results go (where the attach stage looks: suite2p.folder)",
    "nwb": "the session's NWB file",
    "subject": "the subject",
    "session": "the session",
    "fs": "frames per second of one plane",
    "nplanes": "planes",
    "nchannels": "channels",
    "settings": "the lab's suite2p settings file ('' when none)",
    "python": "the Python that runs rig2nwb (the default command runs suite2p with it)",
}

# Waits between submits while the scheduler cannot be reached, in polls (suite2p.run.
# poll_seconds, 15 s by default: 30 s, 1, 2, 5 min, then every 10 minutes).
SCHEDULER_BACKOFF_POLLS = (2, 4, 8, 20, 40)


def command_problems(template: Sequence[str]) -> list[str]:
    """What is wrong with a command template (every problem, each naming its placeholder)."""
    if not template:
        return ["is empty: give the program and its arguments as a list of strings"]
    problems = []
    for i, arg in enumerate(template):
        try:
            fields = [f for _, f, spec, conv in string.Formatter().parse(arg) if f is not None]
        except ValueError as exc:
            problems.append(f"[{i}] {arg!r}: {exc} (write a literal brace as '{{{{' or '}}}}')")
            continue
        for f in fields:
            if f not in PLACEHOLDERS:
                known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                problems.append(f"[{i}] {arg!r}: unknown placeholder {{{f}}} (known: {known})")
    return problems


def render_command(template: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """The argv of one job: every placeholder filled in (``command_problems`` was empty)."""
    return [arg.format_map(dict(values)) for arg in template]


@dataclass(frozen=True)
class SessionJobFacts:
    """What decides whether a session's suite2p job starts now."""

    finished: bool  # acquisition over, NWB file final
    checked: bool  # its check has reported (or checks are off)
    quarantined: bool
    results_present: bool  # suite2p output is there, complete (made elsewhere, or by a job)
    latest: JobState | None  # the latest job's state (None: never ran)
    attempts: int  # jobs run for the session since the last request by hand
    requested: bool  # `rig2nwb process` asked for a (new) run
    timed_out: bool = False  # the latest job failed by running past timeout_minutes
    before_enabled: bool = False  # finished before suite2p.run was turned on (not automatic)


@dataclass(frozen=True)
class Launch:
    attempt: int  # 1 for the first job of a request or of the session


def launch_verdict(f: SessionJobFacts, *, retries: int, running: int,
                   max_running: int) -> Launch | None:
    """Should the session's job start now? Once the session is finished and checked, unless
    results already exist; again only when asked by hand, or after a failure (or a lost job)
    while retries remain. A timeout is not retried: it would time out again. ``max_running``
    jobs at a time; the rest wait their turn. Sessions that finished before jobs were turned
    on get no first job unless asked (turning jobs on must not queue a lab's whole archive);
    once asked, their retries are as for any other."""
    if f.quarantined or not f.finished or not f.checked or running >= max_running:
        return None
    if f.latest in (JobState.QUEUED, JobState.RUNNING):
        return None  # never a second job while one is alive
    if f.requested:
        return Launch(1)
    if f.results_present:
        return None
    if f.latest is None:
        return None if f.before_enabled else Launch(1)
    if f.latest in (JobState.FAILED, JobState.LOST) and not f.timed_out and f.attempts <= retries:
        return Launch(f.attempts + 1)
    return None  # done (results to come or attached), cancelled by someone, retries used


def timed_out(started_at: float | None, now: float, timeout_minutes: float) -> bool:
    """Has a running job run longer than allowed? (Queue time does not count.)"""
    return started_at is not None and now - started_at > timeout_minutes * 60


def scheduler_backoff(failures: int, poll_seconds: float) -> float:
    """Seconds before the next submit after ``failures`` failed ones in a row (>= 1)."""
    polls = SCHEDULER_BACKOFF_POLLS[min(max(failures, 1), len(SCHEDULER_BACKOFF_POLLS)) - 1]
    return polls * poll_seconds


# SLURM job states (``scontrol show job``: JobState) as rig2nwb's.
_SLURM: Mapping[str, JobState] = {
    "PENDING": JobState.QUEUED, "CONFIGURING": JobState.QUEUED, "REQUEUED": JobState.QUEUED,
    "REQUEUE_FED": JobState.QUEUED, "REQUEUE_HOLD": JobState.QUEUED,
    "RESV_DEL_HOLD": JobState.QUEUED, "SPECIAL_EXIT": JobState.QUEUED,
    "RUNNING": JobState.RUNNING, "COMPLETING": JobState.RUNNING, "SUSPENDED": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING, "SIGNALING": JobState.RUNNING, "RESIZING": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "COMPLETED": JobState.DONE,
    "CANCELLED": JobState.CANCELLED,
    "FAILED": JobState.FAILED, "TIMEOUT": JobState.FAILED, "NODE_FAIL": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED, "BOOT_FAIL": JobState.FAILED,
    "DEADLINE": JobState.FAILED, "PREEMPTED": JobState.FAILED,
}


def slurm_state(job_state: str) -> JobState:
    """A ``JobState=...`` word (``CANCELLED by 0`` and the like included) as rig2nwb's state;
    an unknown word counts as running (asked again at the next poll)."""
    word = job_state.split()[0].rstrip("+") if job_state.split() else ""
    return _SLURM.get(word, JobState.RUNNING)


def slurm_exit_code(text: str) -> int | None:
    """``ExitCode=3:0`` -> 3; a signal (``0:9``) -> 128 + 9, as a shell reports it."""
    code, _, sig = text.partition(":")
    try:
        c, s = int(code), int(sig or 0)
    except ValueError:
        return None
    return 128 + s if s and not c else c
