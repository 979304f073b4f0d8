"""What the service's hooks see of the worker loop: a small read-only view, not the Engine.

Hooks (systemd notifications, notifications to people, the status page, live previews) follow
the loop without being part of it. They read the ledger, and a few facts only the running
engine knows; they never reach into its parts."""

from __future__ import annotations

from typing import Protocol

from rig2nwb.ledger.store import Ledger
from rig2nwb.nwb.writer import SessionAppender


class LoopView(Protocol):
    @property
    def ledger(self) -> Ledger:
        """The ledger the engine keeps (hooks record their own events and cursors in it)."""

    def open_appenders(self) -> list[tuple[int, SessionAppender]]:
        """Sessions whose NWB file is open for appending, with their appender (to read recent
        frames from; never to write)."""

    def checking(self) -> int | None:
        """The session whose finished file the check child is looking at now."""

    def checks_pending(self) -> bool:
        """Is a finished file still waiting for (or in) its check or summary picture?"""


class ServiceHook(Protocol):
    """Something that follows the worker loop.

    Hooks run on the worker thread, must return quickly and must never stop the loop: an
    exception is logged and the loop goes on."""

    name: str

    def started(self, view: LoopView) -> None:
        """The service is watching (after recovery and the first scan)."""

    def tick(self, view: LoopView) -> None:
        """Once per loop iteration (about every TICK_SECONDS when idle)."""

    def stopping(self, view: LoopView) -> None:
        """The loop has ended; called before the engine closes its files."""
