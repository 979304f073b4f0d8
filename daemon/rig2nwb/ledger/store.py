"""The ledger: SQLite record of sessions, source files and committed frames.

It is the source of truth. A frame counts as committed only once the NWB file has been flushed
and fsynced *and* the ledger transaction recording it has committed; anything the NWB file holds
beyond the ledger's count is trimmed away at start-up and appended again from the TIFFs.

Counts are in pages of the session's page stream (its TIFFs' pages in run order): a file's
``first_frame``/``frames_committed`` and the session's ``series`` row are page positions, from
which every TwoPhotonSeries' frame count follows (see pagelayout).

WAL mode lets ``rig2nwb status`` read while the daemon writes; ``synchronous=FULL`` makes every
commit durable across power loss, not just across a crash of the process.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from rig2nwb.ledger.jobtables import JobTables
from rig2nwb.ledger.recordtables import RecordTables
from rig2nwb.ledger.rows import (
    FILE_STATES,
    JOB_STATES,
    SESSION_STATES,
    SUITE2P_STATES,
    FileRow,
    JobRow,
    row_of,
)
from rig2nwb.ledger.sessiontables import SessionTables
from rig2nwb.states import FileState


class Ledger(SessionTables, RecordTables, JobTables):
    """Thread-safe access to the ledger database (one connection, one lock): the session
    tables and the record tables over one LedgerConnection."""

    # --- consistency --------------------------------------------------------------------------

    def consistency_problems(self) -> list[str]:
        """rig2nwb's own rules about its rows (beyond SQLite's integrity_check): each file's
        committed pages lie inside its session's committed stream, committed files do not
        overlap, states are known ones, and every row belongs to a session."""
        out: list[str] = []
        committed = self.all_frames_committed()
        sessions = {s.id: s for s in self.sessions()}
        for s in sessions.values():
            if s.state not in SESSION_STATES:
                out.append(f"session {s.id} ({s.subject}/{s.session}): unknown state {s.state!r}")
            if s.quarantined and not s.quarantine_reason:
                out.append(f"session {s.id}: quarantined without a reason")
        spans: dict[int, list[tuple[int, int, str]]] = {}
        for r in (row_of(FileRow, x) for x in self._all("SELECT * FROM files ORDER BY id")):
            where = f"file {r.path}"
            if r.session_id not in sessions:
                out.append(f"{where}: belongs to no session ({r.session_id})")
                continue
            if r.state not in FILE_STATES:
                out.append(f"{where}: unknown state {r.state!r}")
            if r.frames_committed < 0 or (r.frames is not None and r.frames_committed > r.frames):
                out.append(f"{where}: {r.frames_committed} pages committed of {r.frames}")
            if r.first_frame is not None and r.frames_committed > 0:
                end = r.first_frame + r.frames_committed
                if end > committed.get(r.session_id, 0):
                    out.append(f"{where}: pages up to {end} committed but its session has "
                               f"{committed.get(r.session_id, 0)}")
                spans.setdefault(r.session_id, []).append((r.first_frame, end, r.path))
            if r.state == FileState.COMMITTED and (r.first_frame is None or r.frames is None):
                out.append(f"{where}: committed without a position in the series")
        for sid, items in spans.items():
            items.sort()
            for (a0, a1, ap), (b0, _b1, bp) in itertools.pairwise(items):
                if b0 < a1:
                    out.append(f"session {sid}: {ap} (pages {a0}-{a1}) overlaps {bp} (from {b0})")
        # A ledger from an older rig2nwb, read (read-only) before a daemon upgraded it, may lack
        # the tables added since: nothing in them to check.
        have = {str(r[0]) for r in self._all("SELECT name FROM sqlite_master WHERE type='table'")}
        for table in ("suite2p", "series", "crashes", "requests"):
            if table not in have:
                continue
            for (owner,) in self._all(f"SELECT session_id FROM {table}"):
                if owner not in sessions:
                    out.append(f"{table}: a row of session {owner}, which does not exist")
        for job in (row_of(JobRow, x) for x in (self._all("SELECT * FROM jobs ORDER BY id")
                                                if "jobs" in have else [])):
            if job.session_id not in sessions:
                out.append(f"job {job.token}: a job of session {job.session_id}, which does not exist")
            if job.state not in JOB_STATES:
                out.append(f"job {job.token}: unknown state {job.state!r}")
        for sid, row in self.suite2p_rows().items():
            if row.state not in SUITE2P_STATES:
                out.append(f"suite2p of session {sid}: unknown state {row.state!r}")
        return out


def open_verified(path: Path) -> Ledger:
    """The ledger for writing, after SQLite's ``integrity_check``: a damaged ledger is reported
    (LedgerDamaged, one line saying how to recover), never trusted."""
    return Ledger(path, verify=True)
