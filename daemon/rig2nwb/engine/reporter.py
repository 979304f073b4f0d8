"""How the engine tells people: a problem or warning goes into the ledger (status, page,
notifications read it there), one log line and one event, only when it is new."""

from __future__ import annotations

from rig2nwb.ledger.rows import SessionRow
from rig2nwb.ledger.store import Ledger
from rig2nwb.logs import Logger
from rig2nwb.states import Severity


class Reporter:
    def __init__(self, ledger: Ledger, log: Logger) -> None:
        self.ledger = ledger
        self.log = log

    def problem(self, sess: SessionRow, code: str, message: str, file: str = "",
                log: Logger | None = None) -> None:
        """Something held back (a file not appended, a file not written) until it is fixed."""
        if self.ledger.report_problem(sess.id, code, message, file):
            (log or self._bound(sess)).error("problem", stage="check", code=code, file=file,
                                             problem=message)
            self.ledger.add_event(sess.id, "problem", message)

    def warning(self, sess: SessionRow, code: str, message: str, file: str = "",
                log: Logger | None = None) -> None:
        """Something the data says that a person should know; nothing is held back."""
        if self.ledger.report_problem(sess.id, code, message, file, severity=Severity.WARNING):
            (log or self._bound(sess)).warning("warning", stage="check", code=code, file=file,
                                               problem=message)
            self.ledger.add_event(sess.id, "warning", message)

    def rig_problem(self, code: str, file: str, message: str) -> None:
        """A problem that belongs to no session: reported once, listed by `rig2nwb status`."""
        if self.ledger.report_problem(None, code, message, file):
            self.log.error("problem", stage="watch", code=code, file=file, problem=message)
            self.ledger.add_event(None, "problem", message)

    def clear_file_problems(self, session_id: int, rel: str) -> None:
        for p in self.ledger.problems(session_id):
            if p.file == rel and p.severity != Severity.WARNING:  # warnings stay: data facts
                self.ledger.clear_problem(session_id, p.code, rel)

    def _bound(self, sess: SessionRow) -> Logger:
        return self.log.bind(subject=sess.subject, session=sess.session)
