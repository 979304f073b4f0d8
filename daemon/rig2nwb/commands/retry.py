"""``rig2nwb retry SESSION``: lift a session's quarantine.

Works with or without the daemon running: the quarantine lives in the ledger, which both read
(the daemon picks the session up at its next step). The session then carries on from what the
ledger says is committed; nothing is redone that was done.
"""

from __future__ import annotations

from rig2nwb.config.paths import ledger_path
from rig2nwb.config.schema import Config
from rig2nwb.errors import UsageError
from rig2nwb.ledger.rows import SessionRow
from rig2nwb.ledger.store import Ledger


def find_by_name(ledger: Ledger, name: str) -> SessionRow:
    """``SUBJECT/SESSION`` or a session name that is unique in the ledger."""
    rows = [s for s in ledger.sessions() if name in (s.session, f"{s.subject}/{s.session}")]
    if not rows:
        raise UsageError(f"no session {name!r} in the ledger (see rig2nwb status)")
    if len(rows) > 1:
        names = ", ".join(f"{s.subject}/{s.session}" for s in rows)
        raise UsageError(f"{name!r} names several sessions ({names}); give SUBJECT/SESSION")
    return rows[0]


def retry(cfg: Config, name: str) -> tuple[bool, str]:
    path = ledger_path(cfg)
    if not path.exists():
        return False, f"no ledger in {cfg.state.folder}: nothing has been converted yet"
    ledger = Ledger(path, verify=True)
    try:
        try:
            sess = find_by_name(ledger, name)
        except ValueError as exc:
            return False, str(exc)
        full = f"{sess.subject}/{sess.session}"
        if not sess.quarantined:
            return True, f"{full} is not quarantined; nothing to do"
        ledger.lift_quarantine(sess.id)
        ledger.add_event(sess.id, "retry", f"quarantine lifted by rig2nwb retry (was: while "
                         f"{sess.quarantine_phase}: {sess.quarantine_reason})")
        return True, (f"{full}: quarantine lifted; the daemon (or the next rig2nwb convert) "
                      "carries on from what is committed")
    finally:
        ledger.close()
