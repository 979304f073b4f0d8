"""The quarantine record: a session that failed in a way rig2nwb cannot fix by itself is marked
quarantined in the ledger (phase and reason), reported once, and skipped by everything until
``rig2nwb retry SESSION``. The breadcrumb (``meta.inflight``) says which session the worker was
in when it entered a risky phase, so a worker that dies there can be blamed on that session.

How sessions come to be quarantined (the session boundary, worker deaths) is engine.quarantine.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import traceback
from dataclasses import dataclass

from rig2nwb.ledger.rows import SessionRow
from rig2nwb.ledger.store import Ledger
from rig2nwb.logs import Logger

PROBLEM_CODE = "quarantined"
INFLIGHT_KEY = "inflight"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe(exc: BaseException) -> str:
    """``ValueError: bad thing`` (first line only, at most 300 characters)."""
    text = f"{type(exc).__name__}: {first_line(exc)}"
    return text if len(text) <= 300 else text[:297] + "..."


def is_session_error(exc: BaseException) -> bool:
    """Should this exception quarantine the session it happened in? Programming errors and bad
    data do; a ledger that is locked or broken is everyone's problem, not this session's."""
    if not isinstance(exc, Exception):
        return False  # KeyboardInterrupt, SystemExit, GeneratorExit
    return not (isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError))


def quarantine_session(ledger: Ledger, log: Logger, sess: SessionRow, phase: str, reason: str,
                       *, exc: BaseException | None = None) -> str:
    """Mark the session quarantined, report it (status, page, notification) and log why.
    Returns the problem message."""
    name = f"{sess.subject}/{sess.session}"
    message = (f"quarantined while {phase}: {reason}. Nothing more is done with this session "
               f"(its committed frames are kept) until `rig2nwb retry {name}`, after the cause "
               "is fixed or rig2nwb upgraded")
    ledger.quarantine(sess.id, phase, reason)
    if ledger.report_problem(sess.id, PROBLEM_CODE, message):
        ledger.add_event(sess.id, "problem", message)
    details = "".join(traceback.format_exception(exc)) if exc is not None else None
    log.error("session quarantined", stage=phase, subject=sess.subject, session=sess.session,
              reason=reason, traceback=details)
    return message


@dataclass(frozen=True)
class Inflight:
    session_id: int
    phase: str
    pid: int
    at: float


def set_inflight(ledger: Ledger, session_id: int, phase: str) -> None:
    ledger.set_meta(INFLIGHT_KEY, json.dumps({"session_id": session_id, "phase": phase,
                                              "pid": os.getpid(), "at": time.time()}))


def clear_inflight(ledger: Ledger) -> None:
    ledger.delete_meta(INFLIGHT_KEY)


def read_inflight(ledger: Ledger) -> Inflight | None:
    raw = ledger.get_meta(INFLIGHT_KEY)
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        return Inflight(int(d["session_id"]), str(d["phase"]), int(d.get("pid", 0)),
                        float(d.get("at", 0.0)))
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: nothing to count


def quarantine_text(sess: SessionRow) -> str:
    """One line for a command refused because the session is quarantined."""
    return (f"session {sess.subject}/{sess.session} is quarantined (while "
            f"{sess.quarantine_phase}: {sess.quarantine_reason}); fix the cause, then "
            f"`rig2nwb retry {sess.subject}/{sess.session}`")
