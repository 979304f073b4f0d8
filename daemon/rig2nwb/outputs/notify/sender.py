"""The delivery thread: it owns apprise, sends each message to its targets, retries a failed
target after a delay (the others are not sent again) and reports each finished message back
through a queue. It never touches the ledger, and the worker never waits for it."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rig2nwb.config.schema import NotifyConfig, NotifyKind
from rig2nwb.logs import get_logger
from rig2nwb.outputs.notify.adapter import TARGET_TAG, Target

if TYPE_CHECKING:
    import apprise


NotifyType = Literal["info", "success", "warning", "failure"]


@dataclass(frozen=True)
class Notification:
    event_id: int
    kind: NotifyKind
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
