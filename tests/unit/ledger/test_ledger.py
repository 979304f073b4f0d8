"""The ledger opens state folders written by earlier versions (columns added since)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from rig2nwb.ledger.store import Ledger


def test_old_ledger_gets_new_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE sessions (id INTEGER PRIMARY KEY, subject TEXT NOT NULL,
            session TEXT NOT NULL, site TEXT NOT NULL DEFAULT '', nwb_path TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'waiting', identifier TEXT, start_time TEXT,
            start_source TEXT, frame_shape TEXT, dtype TEXT,
            nwb_created INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
            updated_at REAL NOT NULL, finished_at REAL, UNIQUE (subject, session));
        INSERT INTO sessions (subject, session, nwb_path, state, created_at, updated_at)
            VALUES ('m1', 's1', '/x.nwb', 'finished', 1, 2);
    """)
    db.commit()
    db.close()
    readonly = Ledger(path, readonly=True)  # `rig2nwb status` before the daemon migrated it
    assert readonly.sessions()[0].timestamps_source is None
    readonly.close()
    ledger = Ledger(path)
    row = ledger.session("m1", "s1")
    assert row is not None and row.state == "finished" and row.timestamps_source is None
    ledger.update_session(row.id, timestamps_source="measured frame onsets from s1_scan.txt")
    assert ledger.session_by_id(row.id).timestamps_source == "measured frame onsets from s1_scan.txt"
    ledger.close()


def test_cached_queries_follow_commits_from_this_and_other_connections(tmp_path: Path) -> None:
    """sessions(), unresolved_paths() and suite2p_rows() are answered from a cache between
    commits: every commit, by this connection or another process's, must show at once."""
    path = tmp_path / "ledger.sqlite"
    a, b = Ledger(path), Ledger(path)
    try:
        assert a.sessions() == [] and a.unresolved_paths() == []
        s1 = a.ensure_session("m1", "s1", "", "/out/s1.nwb")  # this connection
        assert [s.session for s in a.sessions()] == ["s1"]
        b.ensure_session("m1", "s2", "", "/out/s2.nwb")  # another connection (the CLI, say)
        assert [s.session for s in a.sessions()] == ["s1", "s2"]
        b.add_file(s1.id, "m1/s1/a_00001.tif", 10, 1)
        assert a.unresolved_paths() == ["m1/s1/a_00001.tif"]
        b.update_session(s1.id, state="finished")
        assert [s.state for s in a.sessions() if s.session == "s1"] == ["finished"]
        b.set_suite2p(s1.id, folder="/rig/suite2p", state="ready")
        assert list(a.suite2p_rows()) == [s1.id]
        a.sessions().clear()  # a caller's list is its own: the cache is not touched
        assert len(a.sessions()) == 2
    finally:
        a.close()
        b.close()
