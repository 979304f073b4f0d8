"""One frozen dataclass per ledger table row, read tolerant of columns it does not know."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TypeVar

from rig2nwb.states import FileState, JobState, SessionState, Suite2pState

R = TypeVar("R")


@dataclass(frozen=True)
class SessionRow:
    id: int
    subject: str
    session: str
    site: str
    nwb_path: str
    state: str
    identifier: str | None
    start_time: str | None
    start_source: str | None
    frame_shape: str | None
    dtype: str | None
    nwb_created: int
    created_at: float
    updated_at: float
    finished_at: float | None
    timestamps_source: str | None = None
    layout: str | None = None  # PageLayout JSON, fixed by the session's first file
    validation: str | None = None  # CheckSummary JSON of the finished file
    # Set while the session is quarantined (an unexpected error, or the worker died in it
    # repeatedly): nothing touches the session until `rig2nwb retry` clears them.
    quarantine_phase: str | None = None
    quarantine_reason: str | None = None
    quarantined_at: float | None = None
    trials: int | None = None  # rows of the trials table, set when finalized
    duration_s: float | None = None  # first to last frame time (+ one frame), when finalized

    @property
    def quarantined(self) -> bool:
        return self.quarantined_at is not None


# Columns added after the first release: ledgers created before get them on open.


@dataclass(frozen=True)
class Suite2pRow:
    """Where a session's suite2p output stands (see suite2p_stage for the states)."""

    session_id: int
    folder: str
    state: str
    detail: str
    seen: str | None  # fingerprint digest of the files last looked at
    seen_at: float | None  # since when that fingerprint has been unchanged
    attached: str | None  # fingerprint digest of the results in the NWB file (or staged)
    summary: str | None  # JSON: planes, ROIs, cells, seconds, ...
    requested_at: float | None  # `rig2nwb attach` asked while the daemon runs
    updated_at: float


@dataclass(frozen=True)
class FileRow:
    id: int
    session_id: int
    path: str
    size: int | None
    mtime_ns: int | None
    frames: int | None
    first_frame: int | None
    frames_committed: int
    state: str
    error: str | None
    first_seen: float
    updated_at: float


@dataclass(frozen=True)
class EventRow:
    id: int
    session_id: int | None
    at: float
    stage: str
    message: str


@dataclass(frozen=True)
class ProblemRow:
    session_id: int | None
    file: str
    code: str
    message: str
    first_at: float
    last_at: float
    active: int
    severity: str = "error"  # or "warning": recorded and shown, nothing is held back


@dataclass(frozen=True)
class RequestRow:
    """A one-shot command's request to the running daemon (``rig2nwb attach`` ...)."""

    id: int
    kind: str
    session_id: int
    args: str
    created_at: float
    taken_at: float | None
    done_at: float | None
    ok: int | None
    answer: str | None


@dataclass(frozen=True)
class JobRow:
    """One suite2p job of a session (one row per attempt)."""

    id: int
    session_id: int
    token: str  # names the job to the scheduler (rig2nwb-<token>) and its folder
    executor: str  # local | slurm
    attempt: int
    state: str  # JobState
    scheduler_id: str | None  # SLURM job id, or pid:<pid>:<start time>; None until it is submitted
    created_at: float
    submitted_at: float | None
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    log: str
    detail: str | None
    submit_failures: int = 0  # submits refused in a row (scheduler down)
    next_try_at: float | None = None
    requested: int = 0  # started by `rig2nwb process`


# The states a ledger row may hold (anything else is reported by consistency_problems).
SESSION_STATES = frozenset(SessionState) - {SessionState.QUARANTINED}  # shown, never stored
FILE_STATES = frozenset(FileState)
SUITE2P_STATES = frozenset(Suite2pState)
JOB_STATES = frozenset(JobState)


def row_of(cls: type[R], r: sqlite3.Row) -> R:
    """A row as its dataclass, ignoring columns this version does not know (a ledger written by
    a newer rig2nwb keeps working with an older one)."""
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return cls(**{k: r[k] for k in r.keys() if k in names})  # noqa: SIM118 (a Row iterates values)
