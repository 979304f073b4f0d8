"""suite2p jobs: one row per attempt, written before the job is submitted (so a crash between
submitting and recording leaves a row to reconcile by its token, never a second job)."""

from __future__ import annotations

import time
from typing import Any

from rig2nwb.ledger.connection import LedgerConnection
from rig2nwb.ledger.rows import JobRow, row_of
from rig2nwb.states import ACTIVE_JOB_STATES, JobState


class JobTables(LedgerConnection):
    def add_job(self, session_id: int, *, token: str, executor: str, attempt: int, log: str,
                requested: bool = False) -> JobRow:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO jobs (session_id, token, executor, attempt, state, created_at, log,"
                " requested) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, token, executor, attempt, JobState.QUEUED, time.time(), log,
                 int(requested)))
            job_id = cur.lastrowid
        return self.job(int(job_id or 0))

    def update_job(self, row_id: int, **fields: Any) -> None:
        # Column names come from our own keyword arguments, never from outside input.
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE jobs SET {cols} WHERE id=?", (*fields.values(), row_id))

    def job(self, job_id: int) -> JobRow:
        rows = self._all("SELECT * FROM jobs WHERE id=?", job_id)
        if not rows:
            raise KeyError(job_id)
        return row_of(JobRow, rows[0])

    def _have_jobs(self) -> bool:
        """A ledger from before jobs existed, read by `status` before a daemon upgraded it
        (read-only: the table cannot be made here), has none."""
        return bool(self._all("SELECT 1 FROM sqlite_master WHERE type='table' AND name='jobs'"))

    def jobs(self, session_id: int) -> list[JobRow]:
        if not self._have_jobs():
            return []
        return [row_of(JobRow, r)
                for r in self._all("SELECT * FROM jobs WHERE session_id=? ORDER BY id", session_id)]

    def latest_jobs(self) -> dict[int, JobRow]:
        """Each session's latest job."""
        if not self._have_jobs():
            return {}
        return self._memo("latest_jobs", lambda: {
            r.session_id: r for r in (row_of(JobRow, x) for x in self._all(
                "SELECT * FROM jobs WHERE id IN (SELECT MAX(id) FROM jobs GROUP BY session_id)"))})

    def active_jobs(self) -> list[JobRow]:
        """Jobs queued or running, as far as the ledger knows."""
        if not self._have_jobs():
            return []
        marks = ", ".join("?" for _ in ACTIVE_JOB_STATES)
        return [row_of(JobRow, r) for r in self._all(
            f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", *sorted(ACTIVE_JOB_STATES))]
