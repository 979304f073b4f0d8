"""The notification hook on the worker thread: it reads new events from the ledger with a
cursor kept in the ledger, lets routing decide what each means, has messages word it and hands
it to the sender thread; it also warns when the output disk fills up (see the package's
docstring for the whole design)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from rig2nwb import __version__
from rig2nwb.config.schema import Config
from rig2nwb.fsutil import free_bytes
from rig2nwb.ledger.rows import EventRow
from rig2nwb.ledger.store import Ledger
from rig2nwb.logs import get_logger
from rig2nwb.outputs.notify.adapter import Target, build_apprise
from rig2nwb.outputs.notify.messages import (
    format_message,
)
from rig2nwb.outputs.notify.routing import (
    _Hold,
    decide,
)
from rig2nwb.outputs.notify.sender import Sender
from rig2nwb.states import Problem, Severity

if TYPE_CHECKING:
    import apprise

    from rig2nwb.engine.view import LoopView

STATE_KEY = "notify.state"  # ledger meta: {"cursor": id, "sent": [ids above it already done]}
DISK_CHECK_SECONDS = 60.0
DISK_CLEAR_FACTOR = 1.1  # the warning clears 10% above its threshold, so it does not flap
READ_BATCH = 500


# --- apprise ---------------------------------------------------------------------------------


# --- what is sent ----------------------------------------------------------------------------


# --- the hook on the worker thread -------------------------------------------------------------


class NotifyHook:
    """Service hook: event feed -> messages -> sender thread; disk-space warning."""

    name = "notify"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.log = get_logger("rig2nwb.outputs.notify")
        self.created = time.time()  # events from before this process are old history
        self.active = cfg.notify.enabled and bool(cfg.notify.targets)
        self.obj: apprise.Apprise | None = None
        self.targets: list[Target] = []
        if self.active:
            self.obj, self.targets = build_apprise(cfg.notify)
        self.sender: Sender | None = None
        self.cursor = 0  # every event up to here is done
        self.seen = 0  # every event up to here has been looked at
        self.sent: set[int] = set()  # done events above the cursor
        self.held: dict[int, EventRow] = {}
        self.inflight: set[int] = set()
        self.sent_on_trigger: set[int] = set()  # finalize/suite2p events that sent themselves
        self.saved: str | None = None  # the state as last written (None: not read yet)
        self.next_disk_check = 0.0

    # --- ServiceHook ----------------------------------------------------------------------------

    def started(self, view: LoopView) -> None:
        ledger = view.ledger
        if self.active:
            self._load_state(ledger)
        ledger.add_event(None, "daemon", f"started: rig2nwb {__version__} on rig {self.cfg.rig.name}, "
                         f"watching {self.cfg.rig.root}, NWB files in {self.cfg.output.folder}")
        if not self.active:
            self._forget_history(ledger)

    def tick(self, view: LoopView) -> None:
        self._check_disk(view.ledger)
        if self.active:
            self._pump(view)

    def stopping(self, view: LoopView) -> None:
        ledger = view.ledger
        ledger.add_event(None, "daemon", f"stopped: rig2nwb {__version__} on rig {self.cfg.rig.name}")
        if not self.active:
            self._forget_history(ledger)
            return
        self._flush(view)

    def deliver_now(self, view: LoopView, since_event: int) -> None:
        """For a one-shot command with ``--notify``: send what its events (ids above
        ``since_event``) make, and anything still pending, waiting up to
        notify.stop_flush_seconds; the rest goes out at the next start of the daemon."""
        if not self.active:
            return
        if view.ledger.get_meta(STATE_KEY) is None:  # no cursor yet: start at the command
            self.created = min(self.created, view.ledger.event_time(since_event + 1))
        self._flush(view)

    @staticmethod
    def mark_done(ledger: Ledger, after_event: int) -> None:
        """For a one-shot command without ``--notify``: its events (ids above ``after_event``)
        are done, so a daemon started later does not send them."""
        text = ledger.get_meta(STATE_KEY)
        if text is None:
            return  # no cursor yet: a daemon's first start skips everything older than itself
        state = json.loads(text)
        ids = {e.id for e in ledger.events_after(after_event, limit=100_000)}
        state["sent"] = sorted({int(i) for i in state["sent"]} | {i for i in ids
                                                                  if i > int(state["cursor"])})
        ledger.set_meta(STATE_KEY, json.dumps(state))

    def _flush(self, view: LoopView) -> None:
        self._pump(view)
        if self.sender is not None:
            self.sender.hurry()
        deadline = time.monotonic() + self.cfg.notify.stop_flush_seconds
        while self.inflight and time.monotonic() < deadline:
            time.sleep(0.05)
            self._pump(view)
        if self.sender is not None:
            self.sender.close()
        if self.inflight or self.held:
            self.log.warning("notifications not delivered yet; they are sent after the next start",
                             stage="notify", pending=len(self.inflight) + len(self.held))

    # --- the cursor ----------------------------------------------------------------------------

    def _load_state(self, ledger: Ledger) -> None:
        text = ledger.get_meta(STATE_KEY)
        if text is None:
            self.cursor = ledger.last_event_id(before=self.created)
        else:
            state = json.loads(text)
            self.cursor, self.sent = int(state["cursor"]), {int(i) for i in state["sent"]}
        self.seen = self.cursor
        self.saved = text
        self._save(ledger)

    def _forget_history(self, ledger: Ledger) -> None:
        """Notifications are off: keep an existing cursor current, so turning them on again
        later does not send everything that happened meanwhile."""
        if ledger.get_meta(STATE_KEY) is not None:
            ledger.set_meta(STATE_KEY, json.dumps({"cursor": ledger.last_event_id(), "sent": []}))

    def _save(self, ledger: Ledger) -> None:
        pending = self.inflight | set(self.held)
        self.cursor = min(pending) - 1 if pending else self.seen
        self.sent = {i for i in self.sent if i > self.cursor}
        text = json.dumps({"cursor": self.cursor, "sent": sorted(self.sent)})
        if text != self.saved:
            ledger.set_meta(STATE_KEY, text)
            self.saved = text

    # --- events -> messages --------------------------------------------------------------------

    def _pump(self, view: LoopView) -> None:
        ledger = view.ledger
        if self.saved is None:
            self._load_state(ledger)  # started() was not called: never start from event 0
        if self.sender is None:
            assert self.obj is not None
            self.sender = Sender(self.obj, self.targets, self.cfg.notify)
        for event_id, _ in self.sender.finished():
            self.inflight.discard(event_id)
            self.sent.add(event_id)
        for ev in list(self.held.values()):
            self._consider(ev, view)
        while True:
            batch = ledger.events_after(self.seen, limit=READ_BATCH)
            for ev in batch:
                self.seen = ev.id
                if ev.id not in self.sent:
                    self._consider(ev, view)
            if len(batch) < READ_BATCH:
                break
        self._save(ledger)

    def _consider(self, ev: EventRow, view: LoopView) -> None:
        try:
            self._route(ev, view)
        except Exception as exc:  # one odd event must not block the feed: log it, move on
            self.held.pop(ev.id, None)
            self.log.error("cannot make a notification of an event; skipped", stage="notify",
                           event_id=ev.id, event_stage=ev.stage,
                           error=f"{type(exc).__name__}: {exc}", exc_info=True)

    def _route(self, ev: EventRow, view: LoopView) -> None:
        decision = decide(ev, view, self.sent_on_trigger)
        if isinstance(decision, _Hold):
            self.held[ev.id] = ev
            return
        self.held.pop(ev.id, None)
        if decision is None:
            return
        kind, facts = decision
        targets = [t.index for t in self.targets if kind in t.kinds]
        if not targets:
            return
        if ev.stage in ("finalize", "suite2p"):
            self.sent_on_trigger.add(ev.id)
        note = format_message(self.cfg, view.ledger, ev, kind, facts)
        assert self.sender is not None
        self.inflight.add(ev.id)
        self.sender.submit(note, targets)

    # --- disk space ----------------------------------------------------------------------------

    def _check_disk(self, ledger: Ledger) -> None:
        now = time.monotonic()
        if now < self.next_disk_check:
            return
        self.next_disk_check = now + DISK_CHECK_SECONDS
        out = self.cfg.output
        limit_mb = out.warn_free_mb if out.warn_free_mb is not None else 10 * out.min_free_mb
        free = free_bytes(out.folder)
        if free is None:
            return  # unknown; the engine's own disk_full handling still guards the writes
        active = any(p.code == Problem.DISK_LOW and p.session_id is None for p in ledger.problems())
        if limit_mb and free < limit_mb * 1_000_000:
            message = (f"output disk almost full: {free // 1_000_000} MB free in {out.folder} "
                       f"(warning below output.warn_free_mb = {limit_mb} MB; sessions pause below "
                       f"output.min_free_mb = {out.min_free_mb} MB)")
            ledger.report_problem(None, Problem.DISK_LOW, message, severity=Severity.WARNING)
            if not active:
                # Sent as a problem, not a warning: people must act before sessions pause, so it
                # goes to every target that gets problems (status still lists it as a warning).
                ledger.add_event(None, "problem", message)
                self.log.warning("output disk almost full", stage="notify", free_mb=free // 1_000_000,
                                 warn_free_mb=limit_mb, folder=str(out.folder))
        elif active and (not limit_mb or free >= limit_mb * 1_000_000 * DISK_CLEAR_FACTOR):
            ledger.clear_problem(None, Problem.DISK_LOW)
            self.log.info("output disk space ok again", stage="notify", free_mb=free // 1_000_000)


# --- formatting ----------------------------------------------------------------------------------


