"""``rig2nwb repack NWB_OR_SESSION``: rewrite a finished file with the built-in filters (see
nwb.repack), refused while the daemon owns the session; the file is checked again afterwards."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rig2nwb.commands.retry import find_by_name
from rig2nwb.config.paths import ledger_path
from rig2nwb.config.schema import Config
from rig2nwb.engine.engine import Engine
from rig2nwb.errors import AlreadyRunning, RepackError, UsageError
from rig2nwb.ledger.store import Ledger, open_verified
from rig2nwb.nwb.checksummary import CheckSummary
from rig2nwb.nwb.chunks import resolve_threads
from rig2nwb.nwb.repack import RepackResult, repack_file
from rig2nwb.service.lock import lock_state
from rig2nwb.states import SessionState


def repack_command(cfg: Config, target: str) -> tuple[bool, str]:
    """``rig2nwb repack NWB_OR_SESSION``: (ok, one line). ``target`` is an NWB file, or a
    session as SUBJECT/SESSION (or SESSION when unique)."""
    path = Path(target)
    ledger_file = ledger_path(cfg)
    try:
        lock = lock_state(cfg)
    except AlreadyRunning:
        lock = None
    try:
        ledger = open_verified(ledger_file) if ledger_file.exists() else None
        try:
            sess = None
            if ledger is not None:
                if path.suffix == ".nwb" and path.exists():
                    full = os.path.realpath(path)
                    sess = next((s for s in ledger.sessions()
                                 if os.path.realpath(s.nwb_path) == full), None)
                else:
                    try:
                        sess = find_by_name(ledger, target)
                    except UsageError as exc:
                        return False, str(exc)
                    path = Path(sess.nwb_path)
            if not path.is_file():
                return False, f"{path}: no such NWB file"
            if sess is not None:
                name = f"{sess.subject}/{sess.session}"
                if lock is None:
                    return False, (f"{path.name} belongs to session {name}, and the running "
                                   "daemon owns it (it may write it again); stop the daemon, "
                                   "repack, start it again")
                if sess.state != SessionState.FINISHED or sess.quarantined:
                    return False, (f"session {name} is {'quarantined' if sess.quarantined else sess.state}"
                                   "; only finished files are repacked")
            result = repack_file(path, threads=resolve_threads(cfg.append.compress_threads))
            if sess is not None and ledger is not None:
                _recheck(cfg, ledger, sess.id, result)
            return True, result.message
        finally:
            if ledger is not None:
                ledger.close()
    except (RepackError, OSError) as exc:
        return False, f"{path.name}: not repacked: {exc}"
    finally:
        if lock is not None:
            lock.release()


def _recheck(cfg: Config, ledger: Ledger, session_id: int, result: RepackResult) -> None:
    """After a repack, the file's check (which says whether it opens without plugins) and its
    summary picture are made again, as after any change of the file."""
    sess = ledger.session_by_id(session_id)
    stale = sess.validation and CheckSummary.from_json(sess.validation).plugin_datasets != []
    if not result.changed and not stale:
        return
    if result.changed:
        ledger.add_event(session_id, "repack", result.message)
    ledger.update_session(session_id, validation=None)
    engine = Engine(cfg, ledger)
    while engine.checks_pending():
        engine.run_checks()
        time.sleep(0.1)
    engine.close()
