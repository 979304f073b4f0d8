"""Quarantine: one session's failure never stops the worker for every other session.

Two ways a session gets quarantined:

- **An unexpected exception** while working on it (append, finalize, check, attach, a request,
  ...) is caught at the session's boundary (:class:`SessionGuard`). The session is marked
  quarantined with the phase and the exception's first line; the traceback goes to the log.
- **The worker died in it** (a segfault in a library, SIGKILL by the OOM killer): before each
  risky phase the worker writes a breadcrumb to the ledger (``meta.inflight``: session and
  phase); a clean end of the phase removes it. The supervisor tells the next worker how its
  predecessor ended (``RIG2NWB_PREVIOUS_WORKER_EXIT``); a breadcrumb left by a worker that died
  counts one death of that session in that phase, and ``service.max_worker_deaths`` deaths in a
  row quarantine it instead of retrying forever. A breadcrumb left when the whole service was
  stopped or killed (power loss, ``systemctl kill``, a new supervisor) is not the session's fault
  and counts nothing. A phase that completes resets its count.

A quarantined session is left exactly as it is (committed frames, NWB file, ledger rows) and is
skipped by everything until ``rig2nwb retry SESSION`` lifts the quarantine.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import traceback
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from rig2nwb.ledger.store import Ledger, SessionRow
from rig2nwb.service.supervisor import PREVIOUS_EXIT_ENV

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


def quarantine_session(ledger: Ledger, log: Any, sess: SessionRow, phase: str, reason: str,
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


def previous_worker_exit() -> str | None:
    """How the previous worker of this supervisor ended, when it did not end cleanly."""
    return os.environ.get(PREVIOUS_EXIT_ENV) or None


def account_previous_worker(ledger: Ledger, log: Any, died: str | None,
                            max_deaths: int) -> None:
    """At worker start: count a death of the session the previous worker was working on."""
    crumb = read_inflight(ledger)
    if crumb is None:
        return
    clear_inflight(ledger)
    try:
        sess = ledger.session_by_id(crumb.session_id)
    except KeyError:
        return
    if died is None:
        log.info("the previous run stopped in the middle of a session; resuming it",
                 stage=crumb.phase, subject=sess.subject, session=sess.session)
        return
    deaths = ledger.record_death(sess.id, crumb.phase, died)
    if deaths >= max_deaths:
        quarantine_session(ledger, log, sess, crumb.phase,
                           f"the worker died {deaths} times in a row during it (last: {died})")
        return
    message = (f"the worker died while {crumb.phase} ({died}); trying again "
               f"({deaths} of {max_deaths} deaths before the session is quarantined)")
    log.warning("worker died during a session; retrying it", stage=crumb.phase,
                subject=sess.subject, session=sess.session, deaths=deaths, exit=died)
    ledger.add_event(sess.id, "warning", message)


class SessionGuard:
    """``with SessionGuard(...)``: work on one session in one phase. An unexpected exception is
    swallowed after ``on_error`` (the engine quarantines the session); ``failed`` tells.

    ``passthrough`` exceptions (control flow such as the worker's restart request) propagate
    untouched and leave the breadcrumb, since they end the process."""

    def __init__(self, ledger: Ledger, session_id: int, phase: str, *,
                 on_error: Any, breadcrumb: bool = True,
                 passthrough: tuple[type[BaseException], ...] = (),
                 deaths: dict[tuple[int, str], int] | None = None) -> None:
        self.ledger = ledger
        self.session_id = session_id
        self.phase = phase
        self.on_error = on_error
        self.breadcrumb = breadcrumb
        self.passthrough = passthrough
        self.deaths = deaths
        self.failed = False

    def __enter__(self) -> SessionGuard:
        if self.breadcrumb:
            set_inflight(self.ledger, self.session_id, self.phase)
        return self

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc is not None and isinstance(exc, self.passthrough):
            return False
        if exc is not None and not is_session_error(exc):
            self._clear()
            return False
        if exc is None:
            key = (self.session_id, self.phase)
            if self.deaths is not None and key in self.deaths:
                self.ledger.clear_deaths(*key)  # the phase completed: the count starts again
                del self.deaths[key]
            self._clear()
            return False
        self.failed = True
        try:
            self.on_error(self.session_id, self.phase, exc)
        finally:
            self._clear()
        return True

    def _clear(self) -> None:
        if self.breadcrumb:
            clear_inflight(self.ledger)


def quarantine_text(sess: SessionRow) -> str:
    """One line for a command refused because the session is quarantined."""
    return (f"session {sess.subject}/{sess.session} is quarantined (while "
            f"{sess.quarantine_phase}: {sess.quarantine_reason}); fix the cause, then "
            f"`rig2nwb retry {sess.subject}/{sess.session}`")
