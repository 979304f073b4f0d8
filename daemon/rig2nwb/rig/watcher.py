"""watchdog adapter: file-system events become queue items, nothing more.

Handlers run on the observer's thread and must never do I/O there (a slow stat on a network
share would stall event delivery); the single worker thread takes items off the queue. The
periodic full rescan in the service covers what events miss (SMB/NFS writes by other hosts,
events dropped under load, a share that was remounted).
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

# The events the engine needs. Not "modified" (a rig writing 60 pages/s raises hundreds a second,
# and the worker re-stats every file it waits on each tick anyway), nor "opened" / "closed
# without writing" (rig2nwb's own reads would wake the observer). With inotify the filter is the
# kernel's watch mask, so those events are never even queued (benchmarks/live_rig.py: the
# observer threads used ~4% of a core at 31.5 MB/s before).
EVENTS = [FileCreatedEvent, DirCreatedEvent, FileMovedEvent, DirMovedEvent, FileDeletedEvent,
          DirDeletedEvent, FileClosedEvent]


@dataclass(frozen=True)
class FsEvent:
    kind: str  # created, closed, deleted, rescan
    path: Path


class _Enqueue(FileSystemEventHandler):
    def __init__(self, q: queue.Queue[FsEvent]) -> None:
        self.q = q

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        src = Path(str(event.src_path))
        if event.is_directory:
            if kind in ("created", "moved", "deleted"):
                self.q.put(FsEvent("rescan", src))
            return
        if kind == "moved":
            self.q.put(FsEvent("deleted", src))
            self.q.put(FsEvent("created", Path(str(event.dest_path))))
        elif kind in ("created", "closed", "deleted"):
            self.q.put(FsEvent(kind, src))


def start_observer(root: Path, mode: str, poll_seconds: float,
                   q: queue.Queue[FsEvent]) -> Any:
    """Start a recursive observer on ``root``; raises OSError when the folder is unavailable."""
    observer: Any = (
        PollingObserver(timeout=poll_seconds) if mode == "polling" else Observer()
    )
    if mode == "polling":  # a snapshot diff: filtering saves nothing there
        observer.schedule(_Enqueue(q), str(root), recursive=True)
    else:
        observer.schedule(_Enqueue(q), str(root), recursive=True, event_filter=EVENTS)
    observer.daemon = True
    observer.start()
    return observer


def stop_observer(observer: Any) -> None:
    if observer is None:
        return
    try:
        observer.stop()
        observer.join(timeout=5)
    except Exception:  # an observer whose folder vanished may already be dead
        pass
