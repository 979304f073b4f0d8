"""Attaching suite2p results to finished sessions: the survey's queue, one session a step (so
frames of sessions still acquiring keep flowing in between), and the requests of `rig2nwb
attach` while the daemon runs."""

from __future__ import annotations

import queue
from collections.abc import Callable, Mapping
from pathlib import Path

from rig2nwb.engine.checks import CheckQueue
from rig2nwb.engine.context import Context
from rig2nwb.engine.quarantine import SessionGuard
from rig2nwb.engine.writers import WriterPool
from rig2nwb.ledger.quarantine import quarantine_text
from rig2nwb.ledger.rows import SessionRow
from rig2nwb.states import AttachState, Problem, SessionState
from rig2nwb.suite2p.stage import AttachOutcome, Suite2pStage

ATTACHING = "attaching suite2p results"


# Other requests the worker answers: kind -> (what it is doing, handler(session, args JSON)
# returning (ok, answer)). `rig2nwb process` is one (processing.manager).
RequestHandlers = Mapping[str, tuple[str, Callable[[SessionRow, str], tuple[bool, str]]]]


class Attacher:
    def __init__(self, ctx: Context, stage: Suite2pStage, writers: WriterPool,
                 checks: CheckQueue, guard: Callable[..., SessionGuard],
                 handlers: RequestHandlers | None = None) -> None:
        self.ctx = ctx
        self.stage = stage
        self.writers = writers
        self.checks = checks
        self.guard = guard
        self.handlers: RequestHandlers = handlers or {}

    def next(self) -> int:
        """Attach one session's suite2p results if the survey asked for it."""
        try:
            sid, on_demand = self.stage.queue.get_nowait()
        except queue.Empty:
            return 0
        self.stage.queued.discard(sid)
        if self.ctx.ledger.session_by_id(sid).quarantined:
            return 0
        with self.guard(sid, ATTACHING):
            self.attach(sid, on_demand=on_demand)
        return 1

    def serve_requests(self) -> int:
        """Answer the one-shot commands' requests (``rig2nwb attach`` with the daemon running).
        A request is answered at once when there is nothing to do; a busy NWB file leaves it
        open for the next step."""
        ledger = self.ctx.ledger
        served = 0
        for req in ledger.open_requests():
            if self.ctx.stopping():
                break
            try:
                sess = ledger.session_by_id(req.session_id)
            except KeyError:
                ledger.answer_request(req.id, False, f"no session {req.session_id}")
                continue
            if sess.quarantined:
                ledger.answer_request(req.id, False, quarantine_text(sess))
                continue
            if req.kind in self.handlers:
                served += 1
                what, handle = self.handlers[req.kind]
                answer: tuple[bool, str] | None = None
                with self.guard(sess.id, what, breadcrumb=False) as g:
                    answer = handle(sess, req.args)
                if g.failed or answer is None:
                    answer = (False, quarantine_text(ledger.session_by_id(sess.id)))
                ledger.answer_request(req.id, *answer)
                continue
            if req.kind != "attach":
                ledger.answer_request(req.id, False, f"unknown request {req.kind!r}")
                continue
            if req.taken_at is None:
                ledger.take_request(req.id)
            served += 1
            outcome: AttachOutcome | None = None
            with self.guard(sess.id, f"{ATTACHING} (asked by rig2nwb attach)") as g:
                outcome = self.attach(sess.id, on_demand=True)
            if g.failed:
                ledger.answer_request(req.id, False, quarantine_text(
                    ledger.session_by_id(sess.id)))
            elif outcome is not None and outcome.state != AttachState.BUSY:
                ledger.answer_request(req.id, outcome.state in (AttachState.ATTACHED, AttachState.UNCHANGED),
                                      outcome.message)
            break  # one attach per step, as for the survey's queue
        return served

    def attach(self, session_id: int, *, on_demand: bool = False) -> AttachOutcome:
        ctx = self.ctx
        sess = ctx.ledger.session_by_id(session_id)
        if sess.state != SessionState.FINISHED or not sess.nwb_created:
            return AttachOutcome(AttachState.WAITING, f"session {sess.session} is not finished yet "
                                 "(suite2p results are attached to finished sessions)")
        self.checks.cancel(session_id)  # the validation child holds the file open
        self.writers.drop(session_id)
        try:
            outcome = self.stage.attach(sess, on_demand=on_demand)
        except OSError as exc:
            log = ctx.session_log(sess).bind(stage="suite2p")
            ctx.report.problem(sess, Problem.OUTPUT_ERROR, f"{Path(sess.nwb_path).name}: suite2p "
                               f"results could not be written ({exc}); will retry", "", log)
            self.stage.queue.put((session_id, on_demand))
            return AttachOutcome(AttachState.BUSY, str(exc))
        if outcome.state == AttachState.ATTACHED:
            ctx.ledger.clear_problem(session_id, Problem.OUTPUT_ERROR)
            ctx.ledger.update_session(session_id, validation=None)  # check the file again
        elif outcome.state == AttachState.BUSY and not on_demand:  # on demand: the request stays open
            self.stage.queue.put((session_id, on_demand))
        return outcome
