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
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from rig2nwb.errors import LedgerDamaged

T = TypeVar("T")
R = TypeVar("R")

SERIES = "TwoPhotonSeries"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    subject TEXT NOT NULL,
    session TEXT NOT NULL,
    site TEXT NOT NULL DEFAULT '',
    nwb_path TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'waiting',
    identifier TEXT,
    start_time TEXT,
    start_source TEXT,
    frame_shape TEXT,
    dtype TEXT,
    nwb_created INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    timestamps_source TEXT,
    layout TEXT,
    validation TEXT,
    quarantine_phase TEXT,
    quarantine_reason TEXT,
    quarantined_at REAL,
    trials INTEGER,
    duration_s REAL,
    UNIQUE (subject, session)
);
CREATE TABLE IF NOT EXISTS series (
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    name TEXT NOT NULL,
    frames_committed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, name)
);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    path TEXT NOT NULL UNIQUE,
    size INTEGER,
    mtime_ns INTEGER,
    frames INTEGER,
    first_frame INTEGER,
    frames_committed INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'waiting',
    error TEXT,
    first_seen REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS problems (
    id INTEGER PRIMARY KEY,
    session_id INTEGER REFERENCES sessions(id),
    file TEXT NOT NULL DEFAULT '',
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    severity TEXT NOT NULL DEFAULT 'error',
    UNIQUE (session_id, file, code)
);
CREATE TABLE IF NOT EXISTS suite2p (
    session_id INTEGER PRIMARY KEY REFERENCES sessions(id),
    folder TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    seen TEXT,
    seen_at REAL,
    attached TEXT,
    summary TEXT,
    requested_at REAL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    session_id INTEGER REFERENCES sessions(id),
    at REAL NOT NULL,
    stage TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS crashes (
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    phase TEXT NOT NULL,
    deaths INTEGER NOT NULL DEFAULT 0,
    last_at REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (session_id, phase)
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    args TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    taken_at REAL,
    done_at REAL,
    ok INTEGER,
    answer TEXT
);
"""


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
_ADDED_COLUMNS = {
    "sessions": [("timestamps_source", "TEXT"), ("layout", "TEXT"), ("validation", "TEXT"),
                 ("quarantine_phase", "TEXT"), ("quarantine_reason", "TEXT"),
                 ("quarantined_at", "REAL"), ("trials", "INTEGER"), ("duration_s", "REAL")],
    "problems": [("severity", "TEXT NOT NULL DEFAULT 'error'")],
}


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


SESSION_STATES = frozenset({"waiting", "acquiring", "paused", "finished"})
FILE_STATES = frozenset({"waiting", "appending", "committed", "failed", "vanished",
                         "out_of_order"})
SUITE2P_STATES = frozenset({"incomplete", "settling", "ready", "attaching", "staged", "attached",
                            "problem", "stale"})


class Ledger:
    """Thread-safe access to the ledger database (one connection, one lock)."""

    def __init__(self, path: Path, *, readonly: bool = False, verify: bool = False) -> None:
        """Open (or create) the ledger. ``verify``: run ``integrity_check`` first and refuse a
        damaged ledger (LedgerDamaged) before anything is written to it."""
        self.path = path
        try:
            self._db = self._open(path, readonly, verify)
        except sqlite3.DatabaseError as exc:
            raise LedgerDamaged(damaged_message(path, exc)) from exc
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        # Queries the service loop asks every tick (0.5 s), answered again only after a commit:
        # with 100 finished sessions they cost ~2% of a core while nothing happened.
        self._memos: dict[str, tuple[tuple[int, int], Any]] = {}

    @staticmethod
    def _open(path: Path, readonly: bool, verify: bool) -> sqlite3.Connection:
        if readonly:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                                 timeout=30)
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # "not a database"
            return db
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False, timeout=30)
        try:
            if verify:  # before anything is written to it
                problems = _integrity(db)
                if problems:
                    raise LedgerDamaged(damaged_message(path, "; ".join(problems[:3])))
            lost = _lost_tables(db)
            if lost:
                raise LedgerDamaged(damaged_message(path, lost))
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            for table, columns in _ADDED_COLUMNS.items():
                have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
                for name, decl in columns:
                    if name not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
        except BaseException:
            db.close()
            raise
        return db

    def integrity_problems(self) -> list[str]:
        """SQLite's own ``integrity_check`` (pages, indexes, constraints): [] when sound."""
        with self._lock:
            return _integrity(self._db)

    def verify(self) -> None:
        """Raise LedgerDamaged unless the ledger passes ``integrity_check`` and holds every
        table rig2nwb uses: a damaged ledger is reported, never trusted (it says which frames
        are committed)."""
        problems = self.integrity_problems()
        if not problems:
            with self._lock:
                lost = _lost_tables(self._db)
            problems = [lost] if lost else []
        if problems:
            raise LedgerDamaged(damaged_message(self.path, "; ".join(problems[:3])))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def change_token(self) -> tuple[int, int]:
        """Changes once anything was committed, by another connection (``PRAGMA data_version``)
        or by this one (``total_changes``): a cheap "is a fresh status needed?" test."""
        with self._lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0]), self._db.total_changes

    def _memo(self, name: str, build: Callable[[], T]) -> T:
        """``build()``, cached until anything is committed (rows are frozen dataclasses)."""
        with self._lock:
            token = self.change_token()
            hit = self._memos.get(name)
            if hit is not None and hit[0] == token:
                return cast(T, hit[1])
            value = build()
            self._memos[name] = (token, value)
            return value

    def _all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    # --- sessions -------------------------------------------------------------------------

    def sessions(self) -> list[SessionRow]:
        return list(self._memo("sessions", lambda: [
            _row(SessionRow, r) for r in self._all("SELECT * FROM sessions ORDER BY id")]))

    def session(self, subject: str, session: str) -> SessionRow | None:
        rows = self._all("SELECT * FROM sessions WHERE subject=? AND session=?", subject, session)
        return _row(SessionRow, rows[0]) if rows else None

    def session_by_id(self, session_id: int) -> SessionRow:
        rows = self._all("SELECT * FROM sessions WHERE id=?", session_id)
        if not rows:
            raise KeyError(f"no session with id {session_id} in the ledger")
        return _row(SessionRow, rows[0])

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
        return [_row(FileRow, r) for r in rows]

    def file(self, path: str) -> FileRow | None:
        rows = self._all("SELECT * FROM files WHERE path=?", path)
        return _row(FileRow, rows[0]) if rows else None

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
                row = _row(FileRow, r)
                keep = max(0, frames - (row.first_frame or 0))
                db.execute(
                    "UPDATE files SET frames_committed=?, state=?, updated_at=? WHERE id=?",
                    (keep, "appending" if keep else "waiting", now, row.id),
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
                            dtype=None, state="waiting", layout=None, validation=None)

    # --- suite2p stage --------------------------------------------------------------------

    def suite2p(self, session_id: int) -> Suite2pRow | None:
        rows = self._all("SELECT * FROM suite2p WHERE session_id=?", session_id)
        return _row(Suite2pRow, rows[0]) if rows else None

    def suite2p_rows(self) -> dict[int, Suite2pRow]:
        return dict(self._memo("suite2p", lambda: {
            r["session_id"]: _row(Suite2pRow, r) for r in self._all("SELECT * FROM suite2p")}))

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
            _row(RequestRow, r) for r in self._all(
                "SELECT * FROM requests WHERE done_at IS NULL ORDER BY id")]))

    def request(self, request_id: int) -> RequestRow | None:
        rows = self._all("SELECT * FROM requests WHERE id=?", request_id)
        return _row(RequestRow, rows[0]) if rows else None

    def take_request(self, request_id: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE requests SET taken_at=? WHERE id=?", (time.time(), request_id))

    def answer_request(self, request_id: int, ok: bool, answer: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE requests SET done_at=?, ok=?, answer=? WHERE id=?",
                       (time.time(), int(ok), answer, request_id))

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
        for r in (_row(FileRow, x) for x in self._all("SELECT * FROM files ORDER BY id")):
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
            if r.state == "committed" and (r.first_frame is None or r.frames is None):
                out.append(f"{where}: committed without a position in the series")
        for sid, items in spans.items():
            items.sort()
            for (a0, a1, ap), (b0, _b1, bp) in itertools.pairwise(items):
                if b0 < a1:
                    out.append(f"session {sid}: {ap} (pages {a0}-{a1}) overlaps {bp} (from {b0})")
        for table in ("suite2p", "series", "crashes", "requests"):
            for (owner,) in self._all(f"SELECT session_id FROM {table}"):
                if owner not in sessions:
                    out.append(f"{table}: a row of session {owner}, which does not exist")
        for sid, row in self.suite2p_rows().items():
            if row.state not in SUITE2P_STATES:
                out.append(f"suite2p of session {sid}: unknown state {row.state!r}")
        return out

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
        return [_row(ProblemRow, r) for r in self._all(sql + " ORDER BY id", *args)]

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
        return [_row(EventRow, r) for r in rows]

    def event_before(self, event_id: int, session_id: int, stages: tuple[str, ...]) -> EventRow | None:
        """The newest event of a session, of one of ``stages``, older than ``event_id``."""
        marks = ", ".join("?" for _ in stages)
        rows = self._all(f"SELECT * FROM events WHERE id < ? AND session_id = ? AND stage IN ({marks})"
                         " ORDER BY id DESC LIMIT 1", event_id, session_id, *stages)
        return _row(EventRow, rows[0]) if rows else None

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


def _lost_tables(db: sqlite3.Connection) -> str | None:
    """The tables that say what was committed (series, files) are missing while sessions say
    NWB files were made: creating them empty would forget what is in those files (and append
    their frames again). A ledger from before a table existed has no such sessions."""
    have = {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    missing = sorted({"series", "files"} - have)
    if not missing or "sessions" not in have:
        return None
    made = db.execute("SELECT COUNT(*) FROM sessions WHERE nwb_created").fetchone()[0]
    if not made:
        return None
    return (f"table(s) {', '.join(missing)} missing although {made} session(s) have NWB files: "
            "what was committed is unknown")


def _integrity(db: sqlite3.Connection) -> list[str]:
    try:
        rows = [str(r[0]) for r in db.execute("PRAGMA integrity_check(20)")]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    return [] if rows == ["ok"] else rows


def _row(cls: type[R], r: sqlite3.Row) -> R:
    """A row as its dataclass, ignoring columns this version does not know (a ledger written by
    a newer rig2nwb keeps working with an older one)."""
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return cls(**{k: r[k] for k in r.keys() if k in names})  # noqa: SIM118 (a Row iterates values)


def damaged_message(path: Path, why: object) -> str:
    return (f"the ledger {path} is damaged ({why}); it is not used. Stop rig2nwb, move it aside "
            "(with its -wal and -shm files) to keep it for inspection, and start again: the "
            "sessions are converted again from the TIFFs into new NWB files (rename or move "
            "the old NWB files first, rig2nwb never overwrites a file it does not own)")
