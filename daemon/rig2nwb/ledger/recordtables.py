"""What happened and what was asked: quarantine and worker deaths, requests of one-shot commands
to the running daemon, problems, the event history and feed, and small key/value state."""

from __future__ import annotations

import time
from typing import Any

from rig2nwb.ledger.connection import LedgerConnection
from rig2nwb.ledger.rows import EventRow, ProblemRow, RequestRow, row_of


class RecordTables(LedgerConnection):
    # --- quarantine and worker deaths -----------------------------------------------------

    def quarantine(self, session_id: int, phase: str, reason: str) -> None:
        """Park a session: nothing works on it until ``lift_quarantine`` (``rig2nwb retry``).
        Its ledger rows and committed frames stay exactly as they are."""
        now = time.time()
        with self.transaction() as db:
            db.execute("UPDATE sessions SET quarantine_phase=?, quarantine_reason=?,"
                       " quarantined_at=?, updated_at=? WHERE id=?",
                       (phase, reason, now, now, session_id))

    def lift_quarantine(self, session_id: int) -> None:
        now = time.time()
        with self.transaction() as db:
            db.execute("UPDATE sessions SET quarantine_phase=NULL, quarantine_reason=NULL,"
                       " quarantined_at=NULL, updated_at=? WHERE id=?", (now, session_id))
            db.execute("DELETE FROM crashes WHERE session_id=?", (session_id,))
            db.execute("UPDATE problems SET active=0, last_at=? WHERE session_id=? AND"
                       " code='quarantined' AND active=1", (now, session_id))

    def record_death(self, session_id: int, phase: str, detail: str) -> int:
        """Count one more worker death in ``phase`` of a session; returns the count."""
        now = time.time()
        with self.transaction() as db:
            db.execute("INSERT INTO crashes (session_id, phase, deaths, last_at, detail)"
                       " VALUES (?, ?, 1, ?, ?) ON CONFLICT (session_id, phase) DO UPDATE SET"
                       " deaths=deaths+1, last_at=excluded.last_at, detail=excluded.detail",
                       (session_id, phase, now, detail))
            row = db.execute("SELECT deaths FROM crashes WHERE session_id=? AND phase=?",
                             (session_id, phase)).fetchone()
        return int(row[0])

    def crash_counts(self) -> dict[tuple[int, str], int]:
        return {(int(r[0]), str(r[1])): int(r[2])
                for r in self._all("SELECT session_id, phase, deaths FROM crashes")}

    def clear_deaths(self, session_id: int, phase: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM crashes WHERE session_id=? AND phase=?", (session_id, phase))

    # --- requests from one-shot commands to the running daemon ------------------------------

    def add_request(self, kind: str, session_id: int, args: str = "{}") -> int:
        with self.transaction() as db:
            cur = db.execute("INSERT INTO requests (kind, session_id, args, created_at)"
                             " VALUES (?, ?, ?, ?)", (kind, session_id, args, time.time()))
            return int(cur.lastrowid or 0)

    def open_requests(self) -> list[RequestRow]:
        return list(self._memo("requests", lambda: [
            row_of(RequestRow, r) for r in self._all(
                "SELECT * FROM requests WHERE done_at IS NULL ORDER BY id")]))

    def request(self, request_id: int) -> RequestRow | None:
        rows = self._all("SELECT * FROM requests WHERE id=?", request_id)
        return row_of(RequestRow, rows[0]) if rows else None

    def take_request(self, request_id: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE requests SET taken_at=? WHERE id=?", (time.time(), request_id))

    def answer_request(self, request_id: int, ok: bool, answer: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE requests SET done_at=?, ok=?, answer=? WHERE id=?",
                       (time.time(), int(ok), answer, request_id))

    # --- problems and history -------------------------------------------------------------

    def report_problem(self, session_id: int | None, code: str, message: str, file: str = "",
                       *, severity: str = "error") -> bool:
        """Record (or refresh) an active problem; True when it is new or was inactive."""
        now = time.time()
        with self.transaction() as db:
            prev = db.execute(
                "SELECT active, message FROM problems WHERE session_id IS ? AND file=? AND code=?",
                (session_id, file, code),
            ).fetchone()
            db.execute(
                "INSERT INTO problems (session_id, file, code, message, first_at, last_at, active,"
                " severity) VALUES (?, ?, ?, ?, ?, ?, 1, ?) ON CONFLICT (session_id, file, code) DO"
                " UPDATE SET message=excluded.message, last_at=excluded.last_at, active=1,"
                " severity=excluded.severity",
                (session_id, file, code, message, now, now, severity),
            )
        return prev is None or not prev["active"] or prev["message"] != message

    def clear_problem(self, session_id: int | None, code: str, file: str = "") -> bool:
        """Mark a problem resolved; True when it was active."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE problems SET active=0, last_at=? WHERE session_id IS ? AND file=? AND"
                " code=? AND active=1",
                (time.time(), session_id, file, code),
            )
            return cur.rowcount > 0

    def problems(self, session_id: int | None = None, *, active_only: bool = True) -> list[ProblemRow]:
        sql = ("SELECT session_id, file, code, message, first_at, last_at, active, severity"
               " FROM problems")
        conds, args = [], []
        if session_id is not None:
            conds.append("session_id=?")
            args.append(session_id)
        if active_only:
            conds.append("active=1")
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        return [row_of(ProblemRow, r) for r in self._all(sql + " ORDER BY id", *args)]

    def add_event(self, session_id: int | None, stage: str, message: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO events (session_id, at, stage, message) VALUES (?, ?, ?, ?)",
                (session_id, time.time(), stage, message),
            )

    def events(self, session_id: int) -> list[tuple[float, str, str]]:
        rows = self._all(
            "SELECT at, stage, message FROM events WHERE session_id=? ORDER BY id", session_id
        )
        return [(r[0], r[1], r[2]) for r in rows]

    # --- event feed (notifications) --------------------------------------------------------

    def last_event_id(self, *, before: float | None = None) -> int:
        """The newest event id (0 for none); with ``before``, the newest written before that
        time."""
        sql = "SELECT MAX(id) FROM events" + (" WHERE at < ?" if before is not None else "")
        row = self._all(sql, *(() if before is None else (before,)))[0]
        return int(row[0] or 0)

    def event_time(self, event_id: int) -> float:
        """When an event was written (now, for an id not written yet)."""
        rows = self._all("SELECT at FROM events WHERE id >= ? ORDER BY id LIMIT 1", event_id)
        return float(rows[0][0]) if rows else time.time()

    def events_after(self, event_id: int, *, session_id: int | None = None,
                     stages: tuple[str, ...] = (), limit: int = 1000) -> list[EventRow]:
        """Events with an id above ``event_id``, oldest first (optionally one session's, of
        some stages only)."""
        sql, args = "SELECT * FROM events WHERE id > ?", list[Any]([event_id])
        if session_id is not None:
            sql += " AND session_id = ?"
            args.append(session_id)
        if stages:
            sql += f" AND stage IN ({', '.join('?' for _ in stages)})"
            args += list(stages)
        rows = self._all(sql + " ORDER BY id LIMIT ?", *args, limit)
        return [row_of(EventRow, r) for r in rows]

    def event_before(self, event_id: int, session_id: int, stages: tuple[str, ...]) -> EventRow | None:
        """The newest event of a session, of one of ``stages``, older than ``event_id``."""
        marks = ", ".join("?" for _ in stages)
        rows = self._all(f"SELECT * FROM events WHERE id < ? AND session_id = ? AND stage IN ({marks})"
                         " ORDER BY id DESC LIMIT 1", event_id, session_id, *stages)
        return row_of(EventRow, rows[0]) if rows else None

    # --- small key/value state (e.g. the notification cursor) ------------------------------

    def get_meta(self, key: str) -> str | None:
        rows = self._all("SELECT value FROM meta WHERE key=?", key)
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
                       " SET value=excluded.value", (key, value))

    def delete_meta(self, key: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM meta WHERE key=?", (key,))
