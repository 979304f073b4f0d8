"""The check queue: finished files are validated one at a time in a child process (pynwb's
validator and nwbinspector read the file; a slow or crashing check never stalls the writer).
The same child draws the summary picture, also when checks are off (``--no-check``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from rig2nwb.config.paths import preview_png, summary_png
from rig2nwb.engine.context import Context
from rig2nwb.engine.quarantine import SessionGuard
from rig2nwb.ledger.rows import SessionRow
from rig2nwb.nwb.check import CheckRun
from rig2nwb.nwb.checksummary import CheckSummary
from rig2nwb.states import Problem, SessionState

CHECKING = "checking the file"


class CheckQueue:
    def __init__(self, ctx: Context, guard: Callable[..., SessionGuard]) -> None:
        self.ctx = ctx
        self.guard = guard
        self.running: tuple[int, CheckRun] | None = None  # the one child running

    def checking(self) -> int | None:
        """The session whose file the child is looking at now."""
        return None if self.running is None else self.running[0]

    def run(self) -> None:
        """Collect the running child's verdict; start the next check when none runs."""
        ctx = self.ctx
        if self.running is not None:
            sid, child = self.running
            summary = child.poll()
            if summary is None:
                return
            self.running = None
            with self.guard(sid, CHECKING, breadcrumb=False):
                self._record(sid, summary)
        checks, pictures = ctx.cfg.output.check_files, ctx.cfg.status.summary_picture
        if not (checks or pictures) or ctx.stopping():
            return
        for sess in ctx.ledger.sessions():
            if self.due(sess):
                with self.guard(sess.id, CHECKING, breadcrumb=False) as g:
                    self._start(sess, checks, pictures)
                if not g.failed:
                    return

    @staticmethod
    def due(sess: SessionRow) -> bool:
        return (sess.state == SessionState.FINISHED and sess.validation is None
                and bool(sess.nwb_created) and not sess.quarantined)

    def pending(self) -> bool:
        """Is a finished file still waiting for (or in) its validation or summary picture?"""
        cfg = self.ctx.cfg
        return (cfg.output.check_files or cfg.status.summary_picture) and (
            self.running is not None or any(self.due(s) for s in self.ctx.ledger.sessions()))

    def _start(self, sess: SessionRow, checks: bool, pictures: bool) -> None:
        png = summary_png(self.ctx.cfg, sess.subject, sess.session) if pictures else None
        try:
            self.running = (sess.id, CheckRun.start(Path(sess.nwb_path), picture=png,
                                                    check=checks, rig=self.ctx.cfg.rig.name))
        except OSError as exc:
            self._record(sess.id, CheckSummary.failure(f"cannot start: {exc}") if checks
                         else CheckSummary.not_checked(picture_error=f"cannot start: {exc}"))

    def _record(self, session_id: int, summary: CheckSummary) -> None:
        ctx = self.ctx
        sess = ctx.ledger.session_by_id(session_id)
        if sess.state != SessionState.FINISHED:
            return  # reopened meanwhile: it is checked again when it finishes again
        log = ctx.session_log(sess).bind(stage="validate")
        ctx.ledger.update_session(session_id, validation=summary.to_json())
        ctx.ledger.add_event(session_id, "validate", summary.short())
        if summary.picture is not None:
            log.info("summary picture written", picture=summary.picture, nwb=sess.nwb_path)
            # The summary replaces the live preview: a stale preview would only mislead.
            with contextlib.suppress(OSError):
                preview_png(ctx.cfg, sess.subject, sess.session).unlink(missing_ok=True)
        elif summary.picture_error is not None:
            log.warning("summary picture failed", error=summary.picture_error, nwb=sess.nwb_path)
            ctx.ledger.add_event(session_id, "picture",
                                 f"no summary picture: {summary.picture_error}")
        if not summary.checked:  # picture only: no verdict, and an older one no longer applies
            ctx.ledger.clear_problem(session_id, Problem.VALIDATION)
            return
        c = summary.counts
        log.info("nwb checked", result=summary.short(), ok=summary.ok,
                 validation_errors=summary.validation_errors, critical=c.get("CRITICAL", 0),
                 violations=c.get("BEST_PRACTICE_VIOLATION", 0),
                 suggestions=c.get("BEST_PRACTICE_SUGGESTION", 0), seconds=summary.seconds,
                 nwb=sess.nwb_path)
        if summary.ok:
            ctx.ledger.clear_problem(session_id, Problem.VALIDATION)
            return
        first = next((m for m in summary.messages if m.startswith(("VALIDATION", "CRITICAL"))),
                     summary.failed or "")
        ctx.report.problem(sess, Problem.VALIDATION, f"{Path(sess.nwb_path).name}: "
                           f"{summary.short()}" + (f"; first: {first}" if first else ""), "", log)

    def cancel(self, session_id: int | None = None) -> None:
        """Stop the child if it looks at this session (None: whatever it looks at); its
        session is checked again later."""
        if self.running is not None and session_id in (None, self.running[0]):
            self.running[1].cancel()
            self.running = None
