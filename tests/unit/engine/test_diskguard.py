"""The disk guard with its free-space call given (engine.diskguard): a session pauses when its
next file does not fit above output.min_free_mb, resumes by itself, and says why (real SQLite
ledger; the disk is a number the test sets)."""

from __future__ import annotations

from pathlib import Path

from rig2nwb.engine.diskguard import DiskGuard
from rig2nwb.engine.reporter import Reporter
from rig2nwb.ledger.store import Ledger
from rig2nwb.logs import get_logger
from rig2nwb.states import Problem, SessionState

MB = 1_000_000


def test_pause_and_resume_follow_the_free_space(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    sess = ledger.ensure_session("m1", "s1", "site1", str(tmp_path / "a.nwb"))
    free = [600 * MB]
    guard = DiskGuard(tmp_path, 500, Reporter(ledger, get_logger()), free=lambda _: free[0])
    log = get_logger()
    assert guard.room_for(sess, 100 * MB, log)  # 600 >= 500 + 100
    assert not guard.room_for(sess, 101 * MB, log)
    sess = ledger.session_by_id(sess.id)
    assert sess.state == SessionState.PAUSED
    problem = next(p for p in ledger.problems(sess.id) if p.code == Problem.DISK_FULL)
    assert "600 MB free" in problem.message and "101 MB needed" in problem.message
    assert not guard.still_full()  # the reserve itself is free: planning goes on
    free[0] = 400 * MB
    assert guard.still_full()
    free[0] = 700 * MB
    assert guard.room_for(sess, 101 * MB, log)
    sess = ledger.session_by_id(sess.id)
    assert sess.state == SessionState.ACQUIRING
    assert not any(p.code == Problem.DISK_FULL for p in ledger.problems(sess.id))


def test_unknown_free_space_lets_the_write_tell(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    sess = ledger.ensure_session("m1", "s1", "site1", str(tmp_path / "a.nwb"))
    guard = DiskGuard(tmp_path, 500, Reporter(ledger, get_logger()), free=lambda _: None)
    assert guard.room_for(sess, 10**15, get_logger())
    err = OSError(28, "No space left on device")
    assert guard.write_error(sess, err, get_logger()) == 0
    assert ledger.session_by_id(sess.id).state == SessionState.PAUSED
