"""The ledger's tables, the columns added since (older ledgers gain them when opened), and the
checks that a ledger still holds what rig2nwb needs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

SERIES = "TwoPhotonSeries"

SCHEMA = """
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
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    token TEXT NOT NULL UNIQUE,
    executor TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    scheduler_id TEXT,
    created_at REAL NOT NULL,
    submitted_at REAL,
    started_at REAL,
    ended_at REAL,
    exit_code INTEGER,
    log TEXT NOT NULL,
    detail TEXT,
    submit_failures INTEGER NOT NULL DEFAULT 0,
    next_try_at REAL,
    requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_session ON jobs (session_id, id);
"""


ADDED_COLUMNS = {
    "sessions": [("timestamps_source", "TEXT"), ("layout", "TEXT"), ("validation", "TEXT"),
                 ("quarantine_phase", "TEXT"), ("quarantine_reason", "TEXT"),
                 ("quarantined_at", "REAL"), ("trials", "INTEGER"), ("duration_s", "REAL")],
    "problems": [("severity", "TEXT NOT NULL DEFAULT 'error'")],
}


def lost_tables(db: sqlite3.Connection) -> str | None:
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


def integrity_problems_of(db: sqlite3.Connection) -> list[str]:
    try:
        rows = [str(r[0]) for r in db.execute("PRAGMA integrity_check(20)")]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    return [] if rows == ["ok"] else rows


def damaged_message(path: Path, why: object) -> str:
    return (f"the ledger {path} is damaged ({why}); it is not used. Stop rig2nwb, move it aside "
            "(with its -wal and -shm files) to keep it for inspection, and start again: the "
            "sessions are converted again from the TIFFs into new NWB files (rename or move "
            "the old NWB files first, rig2nwb never overwrites a file it does not own)")
