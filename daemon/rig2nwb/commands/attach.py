"""``rig2nwb attach SESSION_FOLDER``: attach (or replace) a session's suite2p results now.

The session must have been converted and finished (by the daemon or ``rig2nwb convert``). When no
daemon holds the state folder, the attach runs here, through the same engine; when the daemon
runs, it is the only writer of the NWB file, so the request goes through the ledger's
``requests`` table and this command waits for the daemon's answer.

Either way, what can be answered without writing anything is answered here, at once: a session
that is not finished or is quarantined, no suite2p folder, an incomplete one, results already
attached and unchanged. ``--wait`` only bounds real work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rig2nwb.config.paths import ledger_path, resolve_session_folder
from rig2nwb.config.schema import Config
from rig2nwb.errors import AlreadyRunning, UsageError
from rig2nwb.ledger.quarantine import quarantine_text
from rig2nwb.ledger.rows import SessionRow
from rig2nwb.ledger.store import Ledger, open_verified
from rig2nwb.nwb.checksummary import CheckSummary
from rig2nwb.rig.safeopen import is_rig_dir
from rig2nwb.service.oneshot import OneShot, after_one_shot, finish_checks, one_shot
from rig2nwb.states import AttachState, SessionState, Suite2pState
from rig2nwb.suite2p.listing import fingerprint, plane_link_problems, suite2p_link_problem
from rig2nwb.suite2p.nwbobjects import AttachSummary
from rig2nwb.suite2p.stage import Suite2pStage, digest, suite2p_folder, suite2p_root

POLL_SECONDS = 0.2


@dataclass(frozen=True)
class AttachResult:
    ok: bool
    message: str


def find_session(cfg: Config, ledger: Ledger, folder: Path) -> SessionRow:
    """The one session whose TIFFs lie in ``folder`` (or below it)."""
    scope = resolve_session_folder(cfg, folder)
    root = cfg.rig.root
    found = []
    for sess in ledger.sessions():
        files = ledger.files(sess.id)
        parents = {(root / PurePosixPath(r.path).parent) for r in files}
        if any(p == scope or scope in p.parents for p in parents):
            found.append(sess)
    if not found:
        raise UsageError(f"{folder}: no converted session has its TIFFs here "
                         "(convert it first: rig2nwb convert FOLDER)")
    if len(found) > 1:
        names = ", ".join(f"{s.subject}/{s.session}" for s in found)
        raise UsageError(f"{folder}: holds several sessions ({names}); give one session's folder")
    return found[0]


def precheck(cfg: Config, ledger: Ledger, sess: SessionRow, *,
             complete: bool = True) -> AttachResult | None:
    """The answer when there is nothing to write (None: there is work to do). ``complete``:
    also answer for an incomplete folder here (without the daemon, the attach itself looks, and
    records in the ledger what it saw, as the daemon's survey would)."""
    if sess.quarantined:
        return AttachResult(False, quarantine_text(sess))
    if sess.state != SessionState.FINISHED or not sess.nwb_created:
        return AttachResult(False, f"session {sess.session} is not finished yet (state: "
                            f"{sess.state}); suite2p results are attached to finished sessions")
    where = suite2p_folder(cfg, ledger, sess)
    if where is None:
        return AttachResult(False, f"session {sess.session} has no TIFF folder in the ledger")
    root = suite2p_root(cfg, where)
    refused = suite2p_link_problem(where, root)
    if refused is None and is_rig_dir(root, where):
        refused = "; ".join(plane_link_problems(where, root)) or None
    if refused is not None:
        return AttachResult(False, refused)
    if not is_rig_dir(root, where):
        return AttachResult(False, f"no suite2p folder at {where} (suite2p.folder = "
                            f"{cfg.suite2p.folder!r}); run suite2p on the session first")
    missing = Suite2pStage.missing(where, root) if complete else ""
    if missing:
        return AttachResult(False, f"{where}: suite2p output incomplete: {missing}")
    row = ledger.suite2p(sess.id)
    if row is not None and row.state == Suite2pState.ATTACHED and row.attached == digest(
            fingerprint(where, root)):
        if cfg.output.check_files and sess.validation is None:
            return None  # attached, but its check is still to come: wait for it
        return _result(ledger, sess.id, "already attached")
    return None


def attach(cfg: Config, folder: Path, *, wait_seconds: float = 3600.0,
           notify: bool = False) -> AttachResult:
    if not ledger_path(cfg).exists():
        raise UsageError(f"no ledger in {cfg.state.folder}: nothing has been converted yet")
    try:
        with one_shot(cfg) as run:  # AlreadyRunning comes from taking the lock, only
            return _attach_here(cfg, run, folder, notify)
    except AlreadyRunning:
        return _ask_daemon(cfg, folder, wait_seconds)


def _attach_here(cfg: Config, run: OneShot, folder: Path, notify: bool) -> AttachResult:
    ledger = run.ledger
    sess = find_session(cfg, ledger, folder)
    early = precheck(cfg, ledger, sess, complete=False)
    if early is not None:
        return early
    return attach_in(cfg, run, sess, notify=notify, by="rig2nwb attach")


def attach_in(cfg: Config, run: OneShot, sess: SessionRow, *, notify: bool,
              by: str) -> AttachResult:
    """Attach the session's results in this one-shot run (no daemon), check the file again,
    and end the run as the daemon would (page, notifications)."""
    engine, ledger = run.engine, run.ledger
    outcome = None
    with engine.guard(sess.id, f"attaching suite2p results ({by})") as g:
        engine.suite2p.recover(sess)
        outcome = engine.attach_suite2p(sess.id, on_demand=True)
    if g.failed or outcome is None:
        after_one_shot(cfg, run, notify=notify)
        return AttachResult(False, quarantine_text(ledger.session_by_id(sess.id)))
    if outcome.state not in (AttachState.ATTACHED, AttachState.UNCHANGED):
        after_one_shot(cfg, run, notify=notify)
        return AttachResult(False, outcome.message)
    finish_checks(engine)
    after_one_shot(cfg, run, notify=notify)
    return _result(ledger, sess.id, outcome.message)


def _ask_daemon(cfg: Config, folder: Path, wait_seconds: float) -> AttachResult:
    ledger = open_verified(ledger_path(cfg))
    try:
        sess = find_session(cfg, ledger, folder)
        early = precheck(cfg, ledger, sess)
        if early is not None:
            return early
        request = ledger.add_request("attach", sess.id)
        deadline = time.monotonic() + wait_seconds
        answered = False
        while time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            if not answered:
                req = ledger.request(request)
                if req is None or req.done_at is None:
                    continue
                if not req.ok:
                    return AttachResult(False, req.answer or "refused by the daemon")
                answered = True
            s = ledger.session_by_id(sess.id)
            if s.quarantined:
                return AttachResult(False, quarantine_text(s))
            if cfg.output.check_files and s.validation is None:
                continue  # the daemon checks the file next
            row = ledger.suite2p(sess.id)
            return _result(ledger, sess.id, row.detail if row else "attached")
        what = "check the file" if answered else "answer"
        return AttachResult(False, f"the running daemon did not {what} within {wait_seconds:g} s "
                            "(it works on one thing at a time; see rig2nwb status); the request "
                            "stays queued")
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
