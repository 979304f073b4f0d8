"""Which event makes which message (``Decision``):

- ``converted``: the ``validate`` event that follows a session's ``finalize`` (the check result
  and the summary picture exist by then); on the ``finalize`` event itself when no check will
  follow (``output.check_files = false``). A finalize is held while its check is pending.
- ``suite2p``: likewise, the ``validate`` event after a ``suite2p`` event, or the suite2p event.
- ``problem``, ``warning``, ``daemon``: their events, one message each."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rig2nwb.config.schema import NotifyKind
from rig2nwb.ledger.rows import EventRow, SessionRow
from rig2nwb.states import SessionState

if TYPE_CHECKING:
    from rig2nwb.engine.view import LoopView


# A finalize/suite2p event waits for its check at most this long; a check that never reports
# (it has its own 30 min timeout) must not swallow the message.
HOLD_LIMIT_SECONDS = 3600.0


STAGES = ("finalize", "suite2p", "validate")


class _Hold:
    """The event's message waits (its check has not reported yet)."""


HOLD = _Hold()


Decision = tuple[NotifyKind, EventRow] | _Hold | None  # (kind, the event that carries its facts)


def _check_coming(view: LoopView, sess: SessionRow) -> bool:
    """Will a ``validate`` event follow for this finished session? The check child runs (and
    writes one) while its session's ``validation`` is unset, when checks or summary pictures
    are on: the engine's own ``checks_pending`` says whether they are."""
    if view.checking() == sess.id:
        return True
    return (sess.state == SessionState.FINISHED and bool(sess.nwb_created) and sess.validation is None
            and view.checks_pending())


def decide(ev: EventRow, view: LoopView, sent_on_trigger: set[int]) -> Decision:
    """What message ``ev`` makes now: (kind, the event that carries its facts), HOLD (ask
    again later: its check is pending), or None. ``sent_on_trigger``: finalize/suite2p events
    whose message went out on themselves."""
    if ev.stage in ("problem", "warning", "daemon"):
        return ev.stage, ev  # type: ignore[return-value]
    if ev.stage not in STAGES or ev.session_id is None:
        return None
    ledger = view.ledger
    if ev.stage == "validate":
        origin = ledger.event_before(ev.id, ev.session_id, STAGES)
        if origin is None or origin.stage == "validate" or origin.id in sent_on_trigger:
            return None  # a check run again, or its message went out already
        return ("converted" if origin.stage == "finalize" else "suite2p"), origin
    kind: NotifyKind = "converted" if ev.stage == "finalize" else "suite2p"
    after = ledger.events_after(ev.id, session_id=ev.session_id, stages=STAGES, limit=1)
    if after:
        if after[0].stage == "validate":
            return None  # the check's event sends it, with the result
        if after[0].stage == "finalize" and ev.stage == "finalize":
            return None  # reopened and finished again: that one counts
        return kind, ev  # no check came in between (e.g. checks are off)
    sess = ledger.session_by_id(ev.session_id)
    if sess.state != SessionState.FINISHED:
        return None  # reopened: the next finalize sends the news
    if _check_coming(view, sess) and time.time() - ev.at < HOLD_LIMIT_SECONDS:
        return HOLD
    return kind, ev
