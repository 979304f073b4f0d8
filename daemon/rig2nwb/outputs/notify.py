"""Notifications through apprise: a session converted, suite2p attached, a problem, the daemon
started or stopped, sent to mail, chat or webhooks (see docs/notifications.md).

The source is the ledger's ``events`` table, read with a cursor (an event id) that is kept in the
ledger, so a restart loses nothing: the cursor moves past an event only once its notification
was delivered to every target that asked for it, or given up after the configured attempts
(at least once; a crash between sending and saving the cursor repeats a message). On the very
first start the cursor begins at the newest event written before this process started, so old
history never floods anyone.

Two threads, one owner each:

- the worker thread (``NotifyHook.tick``, like every service hook) reads new events, decides
  what they mean, formats the message (it may read the ledger) and hands it over; it also
  saves the cursor and checks free disk space;
- one sender thread owns apprise: it sends, retries a failed target after a delay (others are
  not sent again), and reports each finished message back through a queue. It never touches
  the ledger, and the worker never waits for it, so a slow mail server cannot stall conversion.

Routing: every target is added to one ``Apprise`` object with its kinds as tags plus a tag of
its own (``rig2nwb-target-N``); a message of kind K for targets N, M is sent with
``tag=[(K, "rig2nwb-target-N"), (K, "rig2nwb-target-M")]`` and apprise's per-service results
(which carry each service's tags) say which target failed.

Which event makes which message (``Decision``):

- ``converted``: the ``validate`` event that follows a session's ``finalize`` (the check result
  and the summary picture exist by then); on the ``finalize`` event itself when no check will
  follow (``output.check_files = false``). A finalize is held while its check is pending.
- ``suite2p``: likewise, the ``validate`` event after a ``suite2p`` event, or the suite2p event.
- ``problem``, ``warning``, ``daemon``: their events, one message each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rig2nwb import __version__
from rig2nwb.config.paths import display_path, summary_png
from rig2nwb.config.schema import Config, NotifyConfig, NotifyKind
from rig2nwb.core.pagelayout import PageLayout
from rig2nwb.core.patterns import printable
from rig2nwb.errors import ConfigError, SecretProblem
from rig2nwb.ledger.store import EventRow, Ledger, SessionRow
from rig2nwb.logs import get_logger

if TYPE_CHECKING:
    import apprise

    from rig2nwb.engine.engine import Engine

STATE_KEY = "notify.state"  # ledger meta: {"cursor": id, "sent": [ids above it already done]}
TARGET_TAG = "rig2nwb-target-{}"
DISK_CHECK_SECONDS = 60.0
DISK_CLEAR_FACTOR = 1.1  # the warning clears 10% above its threshold, so it does not flap
# A finalize/suite2p event waits for its check at most this long; a check that never reports
# (it has its own 30 min timeout) must not swallow the message.
HOLD_LIMIT_SECONDS = 3600.0
READ_BATCH = 500
STAGES = ("finalize", "suite2p", "validate")

Kind = NotifyKind
NotifyType = Literal["info", "success", "warning", "failure"]


# --- apprise ---------------------------------------------------------------------------------


def quiet_apprise() -> None:
    """Keep apprise's own log lines out of ours: the sender reports each failure once, with the
    target and the event, from what apprise captured for that call (``NotifyResult.logs``).
    apprise's capture handlers sit on its own logger, so they still see every warning."""
    lg = logging.getLogger("apprise")
    lg.propagate = False
    lg.setLevel(logging.WARNING)
    if not any(isinstance(h, logging.NullHandler) for h in lg.handlers):
        lg.addHandler(logging.NullHandler())  # else logging's last-resort handler prints


def _asset() -> apprise.AppriseAsset:
    import apprise

    return apprise.AppriseAsset(app_id="rig2nwb", app_desc="rig2nwb: two-photon rig to NWB",
                                app_url="https://github.com/caronc/apprise", secure_logging=True)


def instantiate(url: str) -> Any:
    """apprise's plugin for a URL, or None when apprise cannot use it."""
    import apprise

    quiet_apprise()
    return apprise.Apprise.instantiate(url, asset=_asset())


@dataclass(frozen=True)
class Target:
    index: int
    kinds: frozenset[str]
    shown: str  # apprise's privacy form of the URL: secrets masked, safe for logs


def build_apprise(cfg: NotifyConfig) -> tuple[apprise.Apprise, list[Target]]:
    """One Apprise object holding every target, tagged with its kinds and its own tag."""
    import apprise

    quiet_apprise()
    obj = apprise.Apprise(asset=_asset())
    targets = []
    for i, t in enumerate(cfg.targets):
        where = f"notify.targets[{i}].url"
        try:
            url = t.secret_url()
        except SecretProblem as exc:
            raise ConfigError("notify", [f"{where}: {exc}"]) from None
        plugin: Any = apprise.Apprise.instantiate(url, asset=obj.asset,
                                                  tag=[*t.tags, TARGET_TAG.format(i)])
        if plugin is None:
            raise ConfigError("notify", [f"{where}: apprise cannot use this URL"])
        obj.add(plugin)
        targets.append(Target(i, frozenset(t.tags), plugin.url(privacy=True)))
    return obj, targets


# --- what is sent ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    event_id: int
    kind: Kind
    title: str
    body: str
    notify_type: NotifyType = "info"
    attach: str | None = None  # a file path, attached where the service supports it


@dataclass
class _Job:
    note: Notification
    due: dict[int, float]  # target index -> monotonic time of its next try
    tries: dict[int, int] = field(default_factory=dict)
    gave_up: bool = False


class Sender:
    """The delivery thread. ``submit`` and ``finished`` are the worker's side; nothing else is
    shared (the queues)."""

    def __init__(self, obj: apprise.Apprise, targets: list[Target], cfg: NotifyConfig) -> None:
        self.obj = obj
        self.targets = {t.index: t for t in targets}
        self.cfg = cfg
        self.log = get_logger("rig2nwb.outputs.notify")
        # ("send", (note, target indices)), ("hurry", None) or ("close", None)
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._done: queue.Queue[tuple[int, bool]] = queue.Queue()
        self._jobs: dict[int, _Job] = {}
        self._thread = threading.Thread(target=self._run, name="rig2nwb-notify", daemon=True)
        self._thread.start()

    def submit(self, note: Notification, targets: list[int]) -> None:
        self._inbox.put(("send", (note, targets)))

    def finished(self) -> list[tuple[int, bool]]:
        """(event id, delivered everywhere) of each message done since the last call."""
        out = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self._done.get_nowait())
        return out

    def hurry(self) -> None:
        """Try every waiting retry now (the service is stopping)."""
        self._inbox.put(("hurry", None))

    def close(self, timeout: float = 1.0) -> None:
        self._inbox.put(("close", None))
        self._thread.join(timeout)

    # --- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            next_due = min((t for j in self._jobs.values() for t in j.due.values()), default=now + 1)
            item: tuple[str, Any] | None
            try:
                item = self._inbox.get(timeout=max(0.0, min(1.0, next_due - now)))
            except queue.Empty:
                item = None
            while item is not None:
                what, arg = item
                if what == "close":
                    return
                if what == "hurry":
                    for job in self._jobs.values():
                        job.due = dict.fromkeys(job.due, 0.0)
                else:
                    note, targets = arg
                    self._jobs[note.event_id] = _Job(note, dict.fromkeys(targets, 0.0))
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = None
            for job in list(self._jobs.values()):
                try:
                    self._send_due(job)
                except Exception as exc:  # never let the thread die: give the message up
                    self.log.error("notification failed", stage="notify", event_id=job.note.event_id,
                                   error=f"{type(exc).__name__}: {exc}", exc_info=True)
                    job.due.clear()
                    job.gave_up = True
                if not job.due:
                    del self._jobs[job.note.event_id]
                    self._done.put((job.note.event_id, not job.gave_up))

    def _send_due(self, job: _Job) -> None:
        now = time.monotonic()
        due = sorted(i for i, t in job.due.items() if t <= now)
        if not due:
            return
        note = job.note
        attach = note.attach if note.attach and Path(note.attach).is_file() else None
        result = self.obj.notify(
            body=note.body, title=note.title, notify_type=note.notify_type, body_format="text",
            tag=[(note.kind, TARGET_TAG.format(i)) for i in due], attach=attach,
            timeout=self.cfg.timeout_seconds)
        outcome: dict[int, str | None] = dict.fromkeys(due, f"apprise: {result.status.name}")
        for r in result.results:
            index = next((int(tag.rsplit("-", 1)[1]) for tag in r.tag
                          if tag.startswith(TARGET_TAG.format(""))), None)
            if index in outcome:
                outcome[index] = None if r else _reason(r)
        sent = [i for i, why in outcome.items() if why is None]
        for i in sent:
            del job.due[i]
        if sent:
            self.log.info("notification sent", stage="notify", kind=note.kind, event_id=note.event_id,
                          title=note.title, targets=[self.targets[i].shown for i in sent],
                          attachment=Path(attach).name if attach else None)
        for i, why in outcome.items():
            if why is None:
                continue
            tries = job.tries[i] = job.tries.get(i, 0) + 1
            if tries < self.cfg.attempts:
                delays = self.cfg.retry_delays_seconds
                job.due[i] = time.monotonic() + delays[min(tries, len(delays)) - 1]
                self.log.warning("notification failed; will retry", stage="notify",
                                 kind=note.kind, event_id=note.event_id, target=self.targets[i].shown,
                                 attempt=tries, reason=why)
            else:
                del job.due[i]
                job.gave_up = True
                self.log.error("notification not delivered; given up", stage="notify",
                               kind=note.kind, event_id=note.event_id, title=note.title,
                               target=self.targets[i].shown, attempts=tries, reason=why)


def _reason(r: Any) -> str:
    """The last warning apprise captured for one service's call, else its status."""
    messages = [e.message for e in r.logs() if e.level in ("WARNING", "ERROR", "CRITICAL")]
    return messages[-1] if messages else str(r.status.name)


# --- the hook on the worker thread -------------------------------------------------------------


class _Hold:
    """The event's message waits (its check has not reported yet)."""


HOLD = _Hold()
Decision = tuple[Kind, EventRow] | _Hold | None  # (kind, the event that carries its facts)


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

    def started(self, engine: Engine) -> None:
        ledger = engine.ledger
        if self.active:
            self._load_state(ledger)
        ledger.add_event(None, "daemon", f"started: rig2nwb {__version__} on rig {self.cfg.rig.name}, "
                         f"watching {self.cfg.rig.root}, NWB files in {self.cfg.output.folder}")
        if not self.active:
            self._forget_history(ledger)

    def tick(self, engine: Engine) -> None:
        self._check_disk(engine.ledger)
        if self.active:
            self._pump(engine)

    def stopping(self, engine: Engine) -> None:
        ledger = engine.ledger
        ledger.add_event(None, "daemon", f"stopped: rig2nwb {__version__} on rig {self.cfg.rig.name}")
        if not self.active:
            self._forget_history(ledger)
            return
        self._flush(engine)

    def deliver_now(self, engine: Engine, since_event: int) -> None:
        """For a one-shot command with ``--notify``: send what its events (ids above
        ``since_event``) make, and anything still pending, waiting up to
        notify.stop_flush_seconds; the rest goes out at the next start of the daemon."""
        if not self.active:
            return
        if engine.ledger.get_meta(STATE_KEY) is None:  # no cursor yet: start at the command
            self.created = min(self.created, engine.ledger.event_time(since_event + 1))
        self._flush(engine)

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

    def _flush(self, engine: Engine) -> None:
        self._pump(engine)
        if self.sender is not None:
            self.sender.hurry()
        deadline = time.monotonic() + self.cfg.notify.stop_flush_seconds
        while self.inflight and time.monotonic() < deadline:
            time.sleep(0.05)
            self._pump(engine)
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

    def _pump(self, engine: Engine) -> None:
        ledger = engine.ledger
        if self.saved is None:
            self._load_state(ledger)  # started() was not called: never start from event 0
        if self.sender is None:
            assert self.obj is not None
            self.sender = Sender(self.obj, self.targets, self.cfg.notify)
        for event_id, _ in self.sender.finished():
            self.inflight.discard(event_id)
            self.sent.add(event_id)
        for ev in list(self.held.values()):
            self._consider(ev, engine)
        while True:
            batch = ledger.events_after(self.seen, limit=READ_BATCH)
            for ev in batch:
                self.seen = ev.id
                if ev.id not in self.sent:
                    self._consider(ev, engine)
            if len(batch) < READ_BATCH:
                break
        self._save(ledger)

    def _consider(self, ev: EventRow, engine: Engine) -> None:
        try:
            self._route(ev, engine)
        except Exception as exc:  # one odd event must not block the feed: log it, move on
            self.held.pop(ev.id, None)
            self.log.error("cannot make a notification of an event; skipped", stage="notify",
                           event_id=ev.id, event_stage=ev.stage,
                           error=f"{type(exc).__name__}: {exc}", exc_info=True)

    def _route(self, ev: EventRow, engine: Engine) -> None:
        decision = self._decide(ev, engine)
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
        note = format_message(self.cfg, engine.ledger, ev, kind, facts)
        assert self.sender is not None
        self.inflight.add(ev.id)
        self.sender.submit(note, targets)

    def _decide(self, ev: EventRow, engine: Engine) -> Decision:
        if ev.stage in ("problem", "warning", "daemon"):
            return ev.stage, ev  # type: ignore[return-value]
        if ev.stage not in STAGES or ev.session_id is None:
            return None
        ledger = engine.ledger
        if ev.stage == "validate":
            origin = ledger.event_before(ev.id, ev.session_id, STAGES)
            if origin is None or origin.stage == "validate" or origin.id in self.sent_on_trigger:
                return None  # a check run again, or its message went out already
            return ("converted" if origin.stage == "finalize" else "suite2p"), origin
        kind: Kind = "converted" if ev.stage == "finalize" else "suite2p"
        after = ledger.events_after(ev.id, session_id=ev.session_id, stages=STAGES, limit=1)
        if after:
            if after[0].stage == "validate":
                return None  # the check's event sends it, with the result
            if after[0].stage == "finalize" and ev.stage == "finalize":
                return None  # reopened and finished again: that one counts
            return kind, ev  # no check came in between (e.g. checks are off)
        sess = ledger.session_by_id(ev.session_id)
        if sess.state != "finished":
            return None  # reopened: the next finalize sends the news
        if _check_coming(engine, sess) and time.time() - ev.at < HOLD_LIMIT_SECONDS:
            return HOLD
        return kind, ev

    # --- disk space ----------------------------------------------------------------------------

    def _check_disk(self, ledger: Ledger) -> None:
        now = time.monotonic()
        if now < self.next_disk_check:
            return
        self.next_disk_check = now + DISK_CHECK_SECONDS
        out = self.cfg.output
        limit_mb = out.warn_free_mb if out.warn_free_mb is not None else 10 * out.min_free_mb
        try:
            free = shutil.disk_usage(out.folder).free
        except OSError:
            return  # unknown; the engine's own disk_full handling still guards the writes
        active = any(p.code == "disk_low" and p.session_id is None for p in ledger.problems())
        if limit_mb and free < limit_mb * 1_000_000:
            message = (f"output disk almost full: {free // 1_000_000} MB free in {out.folder} "
                       f"(warning below output.warn_free_mb = {limit_mb} MB; sessions pause below "
                       f"output.min_free_mb = {out.min_free_mb} MB)")
            ledger.report_problem(None, "disk_low", message, severity="warning")
            if not active:
                # Sent as a problem, not a warning: people must act before sessions pause, so it
                # goes to every target that gets problems (status still lists it as a warning).
                ledger.add_event(None, "problem", message)
                self.log.warning("output disk almost full", stage="notify", free_mb=free // 1_000_000,
                                 warn_free_mb=limit_mb, folder=str(out.folder))
        elif active and (not limit_mb or free >= limit_mb * 1_000_000 * DISK_CLEAR_FACTOR):
            ledger.clear_problem(None, "disk_low")
            self.log.info("output disk space ok again", stage="notify", free_mb=free // 1_000_000)


def _check_coming(engine: Engine, sess: SessionRow) -> bool:
    """Will a ``validate`` event follow for this finished session? The check child runs (and
    writes one) while its session's ``validation`` is unset, when checks or summary pictures
    are on: the engine's own ``checks_pending`` says whether they are."""
    if engine.check is not None and engine.check[0] == sess.id:
        return True
    return (sess.state == "finished" and bool(sess.nwb_created) and sess.validation is None
            and engine.checks_pending())


# --- formatting ----------------------------------------------------------------------------------


def format_message(cfg: Config, ledger: Ledger, ev: EventRow, kind: Kind,
                   facts: EventRow) -> Notification:
    """The title and body of one notification (``facts``: the finalize/suite2p event of a
    converted/suite2p message, else ``ev``). Names and file names come from the rig: the title
    is one line and no line carries a control character (a newline in a name must not forge a
    line, an ESC must not reach a terminal that shows the message)."""
    note = _format_message(cfg, ledger, ev, kind, facts)
    return dataclasses.replace(note, title=printable(note.title), body="\n".join(
        printable(line) for line in note.body.split("\n")))


def _format_message(cfg: Config, ledger: Ledger, ev: EventRow, kind: Kind,
                    facts: EventRow) -> Notification:
    head = f"rig2nwb {cfg.rig.name}:"
    sess = ledger.session_by_id(ev.session_id) if ev.session_id is not None else None
    if sess is None:
        what = f"daemon {ev.message.split(':', 1)[0]}" if kind == "daemon" else kind
        title = f"{head} {what}"
        kind_type: NotifyType = {"problem": "failure", "warning": "warning"}.get(  # type: ignore[assignment]
            kind, "info")
        return Notification(ev.id, kind, title, ev.message, kind_type)
    label = f"sub-{sess.subject} ses-{sess.session}"
    nwb = display_path(cfg, Path(sess.nwb_path))
    details = f"Details: rig2nwb status {sess.session}"
    if kind in ("problem", "warning"):
        body = [ev.message, *([f"NWB file: {nwb}"] if Path(sess.nwb_path).exists() else []), details]
        return Notification(ev.id, kind, f"{head} {label} {kind}", "\n".join(body),
                            "failure" if kind == "problem" else "warning")
    check, ok = _check_line(cfg, sess, ev)
    picture = summary_png(cfg, sess.subject, sess.session)
    attach = str(picture) if picture.is_file() else None
    size = _size(Path(sess.nwb_path))
    if kind == "converted":
        body = [*_frames_lines(ledger, sess), f"Check: {check}", f"NWB file: {nwb}{size}",
                *_warning_lines(ledger, sess), details]
        title = f"{head} {label} converted" + ("" if ok is not False else " (check failed)")
    else:
        verb = "replaced" if facts.message.startswith("suite2p replaced") else "attached"
        row = ledger.suite2p(sess.id)
        summary = json.loads(row.summary) if row is not None and row.summary else None
        found = (f"{summary['rois']} ROIs, {summary['cells']} cells, {summary['planes']} plane(s)"
                 if summary else facts.message)
        body = [f"suite2p results {verb}: {found}"]
        if row is not None:
            body.append(f"From: {display_path(cfg, Path(row.folder))}")
        body += [f"Check: {check}", f"NWB file: {nwb}{size}", details]
        title = f"{head} {label} suite2p {verb}" + ("" if ok is not False else " (check failed)")
    return Notification(ev.id, kind, title, "\n".join(body),
                        "success" if ok is not False else "warning", attach)


def _check_line(cfg: Config, sess: SessionRow, ev: EventRow) -> tuple[str, bool | None]:
    """The check result (text, ok) for a message sent on ``ev``."""
    from rig2nwb.nwb.check import CheckSummary

    if ev.stage != "validate":
        return ("off (output.check_files = false)" if not cfg.output.check_files
                else "not run"), None
    if sess.validation:
        with contextlib.suppress(ValueError):
            summary = CheckSummary.from_json(sess.validation)
            if summary.short() == ev.message:
                return ev.message, summary.ok if summary.checked else None
    # checked again since: judge by the event's own line
    if ev.message.startswith("not checked"):
        return ev.message, None
    return ev.message, ev.message.startswith("valid;") and " 0 critical" in ev.message


def _frames_lines(ledger: Ledger, sess: SessionRow) -> list[str]:
    pages = ledger.frames_committed(sess.id)
    if not sess.layout:
        return [f"Finished: {pages} frames"]
    layout = PageLayout.from_json(sess.layout)
    kept = layout.complete(pages) if sess.state == "finished" else pages
    counts = [(spec.name, layout.count(spec.index, kept)) for spec in layout.series]
    if len(counts) == 1:
        lines = [f"Finished: {counts[0][1]} frames"]
    else:
        lines = [f"Finished: {len(counts)} series: " + ", ".join(f"{n} {c} frames" for n, c in counts)]
    longest = max(c for _, c in counts)
    if longest:
        lines.append(f"Acquisition: {_duration(longest / layout.series_rate)} "
                     f"({longest} frames at {layout.series_rate:.3g} Hz per series)")
    return lines


def _warning_lines(ledger: Ledger, sess: SessionRow) -> list[str]:
    active = ledger.problems(sess.id)
    lines = []
    for severity, label in (("error", "Problems"), ("warning", "Warnings")):
        found = [p.message for p in active if (p.severity == "warning") == (severity == "warning")]
        if found:
            lines.append(f"{label} ({len(found)}): {found[0]}" + (" ..." if len(found) > 1 else ""))
    return lines


def _size(path: Path) -> str:
    try:
        n = float(path.stat().st_size)
    except OSError:
        return ""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f" ({n:.0f} {unit})" if unit == "B" else f" ({n:.1f} {unit})"
        n /= 1000
    return ""  # pragma: no cover


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {sec:02d} s"
