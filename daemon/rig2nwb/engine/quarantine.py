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

import os
from collections.abc import Callable
from types import TracebackType

from rig2nwb.ledger.quarantine import (
    clear_inflight,
    is_session_error,
    quarantine_session,
    read_inflight,
    set_inflight,
)
from rig2nwb.ledger.store import Ledger
from rig2nwb.logs import Logger

# The supervisor tells a new worker how the one before it ended (service.supervisor sets it).
PREVIOUS_EXIT_ENV = "RIG2NWB_PREVIOUS_WORKER_EXIT"


def previous_worker_exit() -> str | None:
    """How the previous worker of this supervisor ended, when it did not end cleanly."""
    return os.environ.get(PREVIOUS_EXIT_ENV) or None


def account_previous_worker(ledger: Ledger, log: Logger, died: str | None,
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
                 on_error: Callable[[int, str, BaseException], None],
                 breadcrumb: bool = True,
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
