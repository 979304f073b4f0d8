"""``rig2nwb attach SESSION_FOLDER``: attach (or replace) a session's suite2p results now.

The session must have been converted and finished (by the daemon or ``rig2nwb convert``). When no
daemon holds the state folder, the attach runs here, through the same engine; when the daemon
runs, it is the only writer of the NWB file, so the request goes through the ledger and this
command waits for the daemon's answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rig2nwb.config import Config
from rig2nwb.convert import resolve_session_folder
from rig2nwb.engine import Engine
from rig2nwb.ledger import Ledger, SessionRow
from rig2nwb.service import AlreadyRunning, ledger_path, lock_state
from rig2nwb.suite2p_nwb import AttachSummary
from rig2nwb.suite2p_stage import suite2p_folder
from rig2nwb.validation import CheckSummary

POLL_SECONDS = 0.5


@dataclass(frozen=True)
class AttachResult:
    ok: bool
    message: str


def find_session(cfg: Config, ledger: Ledger, folder: Path) -> SessionRow:
    """The one session whose TIFFs lie in ``folder`` (or below it)."""
    scope = resolve_session_folder(cfg, folder)
    root = cfg.rig.root.resolve()
    found = []
    for sess in ledger.sessions():
        files = ledger.files(sess.id)
        parents = {(root / PurePosixPath(r.path).parent) for r in files}
        if any(p == scope or scope in p.parents for p in parents):
            found.append(sess)
    if not found:
        raise ValueError(f"{folder}: no converted session has its TIFFs here "
                         "(convert it first: rig2nwb convert FOLDER)")
    if len(found) > 1:
        names = ", ".join(f"{s.subject}/{s.session}" for s in found)
        raise ValueError(f"{folder}: holds several sessions ({names}); give one session's folder")
    return found[0]


def attach(cfg: Config, folder: Path, *, wait_seconds: float = 3600.0) -> AttachResult:
    if not ledger_path(cfg).exists():
        raise ValueError(f"no ledger in {cfg.state.folder}: nothing has been converted yet")
    try:
        lock = lock_state(cfg)
    except AlreadyRunning:
        return _ask_daemon(cfg, folder, wait_seconds)
    ledger = Ledger(ledger_path(cfg))
    try:
        sess = find_session(cfg, ledger, folder)
        if sess.state != "finished":
            return AttachResult(False, f"session {sess.session} is not finished yet "
                                f"(state: {sess.state}); suite2p results are attached to "
                                "finished sessions")
        engine = Engine(cfg, ledger)
        engine.suite2p.recover(sess)
        outcome = engine.attach_suite2p(sess.id, on_demand=True)
        if outcome.state not in ("attached", "unchanged"):
            return AttachResult(False, outcome.message)
        while engine.checks_pending():
            engine.run_checks()
            time.sleep(0.1)
        engine.close()
        return _result(ledger, sess.id, outcome.message)
    finally:
        ledger.close()
        lock.release()


def _ask_daemon(cfg: Config, folder: Path, wait_seconds: float) -> AttachResult:
    ledger = Ledger(ledger_path(cfg))
    try:
        sess = find_session(cfg, ledger, folder)
        if sess.state != "finished":
            return AttachResult(False, f"session {sess.session} is not finished yet "
                                f"(state: {sess.state})")
        where = suite2p_folder(cfg, ledger, sess)
        row = ledger.suite2p(sess.id)
        asked = time.time()
        ledger.set_suite2p(sess.id, folder=str(where), state=row.state if row else "ready",
                           requested_at=asked)
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            row = ledger.suite2p(sess.id)
            if row is None or row.requested_at is not None or row.state in (
                    "ready", "attaching", "staged"):
                continue  # not yet taken up, or still being written
            if row.state != "attached":
                return AttachResult(False, f"{row.detail} (state: {row.state})")
            s = ledger.session_by_id(sess.id)
            if cfg.output.check_files and s.validation is None:
                continue  # the daemon checks the file next
            return _result(ledger, sess.id, row.detail)
        return AttachResult(False, f"the running daemon did not finish within {wait_seconds:g} s; "
                            "see rig2nwb status")
    finally:
        ledger.close()


def _result(ledger: Ledger, session_id: int, message: str) -> AttachResult:
    sess = ledger.session_by_id(session_id)
    row = ledger.suite2p(session_id)
    if row is not None and row.summary:
        message = f"{AttachSummary.from_json(row.summary).short()} in {sess.nwb_path}"
    if sess.validation:
        check = CheckSummary.from_json(sess.validation)
        message += f" (checked: {check.short()})"
        if not check.ok:
            return AttachResult(False, f"attached, but the file check found problems: {message}")
    return AttachResult(True, message)
