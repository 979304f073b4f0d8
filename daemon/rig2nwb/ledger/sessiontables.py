"""Sessions, their source files and committed frames, and their suite2p rows."""

from __future__ import annotations

import time
from typing import Any

from rig2nwb.ledger.connection import LedgerConnection
from rig2nwb.ledger.rows import FileRow, SessionRow, Suite2pRow, row_of
from rig2nwb.ledger.schema import SERIES
from rig2nwb.states import FileState, SessionState


class SessionTables(LedgerConnection):
    # --- sessions -------------------------------------------------------------------------

    def sessions(self) -> list[SessionRow]:
        return list(self._memo("sessions", lambda: [
            row_of(SessionRow, r) for r in self._all("SELECT * FROM sessions ORDER BY id")]))

    def session(self, subject: str, session: str) -> SessionRow | None:
        rows = self._all("SELECT * FROM sessions WHERE subject=? AND session=?", subject, session)
        return row_of(SessionRow, rows[0]) if rows else None

    def session_by_id(self, session_id: int) -> SessionRow:
        rows = self._all("SELECT * FROM sessions WHERE id=?", session_id)
        if not rows:
            raise KeyError(f"no session with id {session_id} in the ledger")
        return row_of(SessionRow, rows[0])

    def ensure_session(self, subject: str, session: str, site: str, nwb_path: str) -> SessionRow:
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO sessions (subject, session, site, nwb_path, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (subject, session, site, nwb_path, now, now),
            )
            db.execute(
                "INSERT OR IGNORE INTO series (session_id, name) SELECT id, ? FROM sessions"
                " WHERE subject=? AND session=?",
                (SERIES, subject, session),
            )
        row = self.session(subject, session)
        assert row is not None
        return row

    def update_session(self, session_id: int, **fields: Any) -> None:
        self._update("sessions", session_id, fields)

    def _update(self, table: str, row_id: int, fields: dict[str, Any]) -> None:
        # Column names come from our own keyword arguments, never from outside input.
        fields["updated_at"] = time.time()
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE {table} SET {cols} WHERE id=?", (*fields.values(), row_id))

    def frames_committed(self, session_id: int, series: str = SERIES) -> int:
        rows = self._all(
            "SELECT frames_committed FROM series WHERE session_id=? AND name=?", session_id, series
        )
        return int(rows[0][0]) if rows else 0

    def all_frames_committed(self, series: str = SERIES) -> dict[int, int]:
        """``frames_committed`` of every session in one query (status of many sessions)."""
        rows = self._all("SELECT session_id, frames_committed FROM series WHERE name=?", series)
        return {int(r[0]): int(r[1]) for r in rows}

    # --- files ----------------------------------------------------------------------------

    def file_counts(self) -> dict[int, tuple[int, int, int, int]]:
        """Per session, in one query: (files, committed, failed for good, committed bytes).
        Failed for good: failed, vanished or out of order, as ``rig2nwb status`` counts them."""
        return {sid: (v[0], v[1], v[2], v[3]) for sid, v in self.file_facts().items()}

    def file_facts(self) -> dict[int, tuple[int, int, int, int, float | None]]:
        """``file_counts`` plus when frames were last committed (None: never)."""
        rows = self._all(
            "SELECT session_id, COUNT(*), TOTAL(state='committed'),"
            " TOTAL(state IN ('failed', 'vanished', 'out_of_order')),"
            " TOTAL(CASE WHEN state='committed' THEN COALESCE(size, 0) ELSE 0 END),"
            " MAX(CASE WHEN frames_committed > 0 THEN updated_at END)"
            " FROM files GROUP BY session_id")
        return {int(r[0]): (int(r[1]), int(r[2]), int(r[3]), int(r[4]),
                            None if r[5] is None else float(r[5])) for r in rows}

    def files(self, session_id: int) -> list[FileRow]:
        rows = self._all("SELECT * FROM files WHERE session_id=? ORDER BY id", session_id)
        return [row_of(FileRow, r) for r in rows]

    def file(self, path: str) -> FileRow | None:
        rows = self._all("SELECT * FROM files WHERE path=?", path)
        return row_of(FileRow, rows[0]) if rows else None

    def unresolved_paths(self) -> list[str]:
        """Files still waiting for (or in the middle of) an append, or failed and retryable."""
        return list(self._memo("unresolved", lambda: [r[0] for r in self._all(
            "SELECT path FROM files WHERE state IN ('waiting', 'appending', 'failed')")]))

    def add_file(self, session_id: int, path: str, size: int, mtime_ns: int) -> FileRow:
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO files (session_id, path, size, mtime_ns, first_seen,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (session_id, path, size, mtime_ns, now, now),
            )
        row = self.file(path)
        assert row is not None
        return row

    def update_file(self, file_id: int, **fields: Any) -> None:
        self._update("files", file_id, fields)

    def commit_frames(
        self, session_id: int, file_id: int, *, file_frames_committed: int, file_state: str,
        series_frames: int, size: int, mtime_ns: int, frames: int, first_frame: int,
    ) -> None:
        """Record frames as committed (call only after the NWB file is flushed and fsynced)."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE files SET frames_committed=?, state=?, size=?, mtime_ns=?, frames=?,"
                " first_frame=?, error=NULL, updated_at=? WHERE id=?",
                (file_frames_committed, file_state, size, mtime_ns, frames, first_frame, now,
                 file_id),
            )
            db.execute(
                "UPDATE series SET frames_committed=? WHERE session_id=? AND name=?",
                (series_frames, session_id, SERIES),
            )
            db.execute("UPDATE sessions SET updated_at=? WHERE id=?", (now, session_id))

    def roll_back(self, session_id: int, frames: int) -> list[FileRow]:
        """Forget commits at and beyond series frame ``frames``; return the files affected.

        Files that started at or after ``frames`` go back to waiting; a file that spans it keeps
        the frames before it. Used when the NWB file is found shorter or damaged at start-up.
        """
        affected = []
        now = time.time()
        with self.transaction() as db:
            for r in db.execute(
                "SELECT * FROM files WHERE session_id=? AND first_frame IS NOT NULL AND"
                " first_frame + frames_committed > ?",
                (session_id, frames),
            ).fetchall():
                row = row_of(FileRow, r)
                keep = max(0, frames - (row.first_frame or 0))
                db.execute(
                    "UPDATE files SET frames_committed=?, state=?, updated_at=? WHERE id=?",
                    (keep, FileState.APPENDING if keep else FileState.WAITING, now, row.id),
                )
                if not keep:
                    db.execute("UPDATE files SET first_frame=NULL WHERE id=?", (row.id,))
                affected.append(row)
            db.execute(
                "UPDATE series SET frames_committed=? WHERE session_id=? AND name=?",
                (frames, session_id, SERIES),
            )
        return affected

    def reset_session(self, session_id: int) -> None:
        """Forget the NWB file of a session (it was lost or damaged): everything re-appends."""
        self.roll_back(session_id, 0)
        self.update_session(session_id, nwb_created=0, identifier=None, frame_shape=None,
                            dtype=None, state=SessionState.WAITING, layout=None, validation=None)

    # --- suite2p stage --------------------------------------------------------------------

    def suite2p(self, session_id: int) -> Suite2pRow | None:
        rows = self._all("SELECT * FROM suite2p WHERE session_id=?", session_id)
        return row_of(Suite2pRow, rows[0]) if rows else None

    def suite2p_rows(self) -> dict[int, Suite2pRow]:
        return dict(self._memo("suite2p", lambda: {
            r["session_id"]: row_of(Suite2pRow, r) for r in self._all("SELECT * FROM suite2p")}))

    def set_suite2p(self, session_id: int, **fields: Any) -> None:
        """Update a session's suite2p row, or create it (then ``folder`` and ``state`` are
        needed: a row without them would be a lie, so creating one without is refused)."""
        fields["updated_at"] = time.time()
        with self.transaction() as db:
            cols = ", ".join(f"{k}=?" for k in fields)
            cur = db.execute(f"UPDATE suite2p SET {cols} WHERE session_id=?",
                             (*fields.values(), session_id))
            if cur.rowcount:
                return
            if fields.get("folder") is None or fields.get("state") is None:
                raise ValueError(f"session {session_id} has no suite2p row to update, and "
                                 "creating one needs its folder and state")
            marks = ", ".join("?" for _ in fields)
            db.execute(f"INSERT INTO suite2p (session_id, {', '.join(fields)}) VALUES (?, {marks})",
                       (session_id, *fields.values()))
