"""Progress from inside long operations: "still working", for whoever watches the loop.

A 4 GB TIFF, a suite2p attach or a repack is one long step of the worker loop. Code deep down
(an append batch, a block of traces, a folder of a walk) calls :func:`beat`; the service
registers what a beat means (systemd's watchdog ping, see service.sdnotify). Nothing is
registered outside the daemon, so a beat then costs one attribute lookup. This module sits at
the bottom of the package so that the engine, nwb and suite2p code can report progress without
importing the service above them.
"""

from __future__ import annotations

from collections.abc import Callable

_listener: list[Callable[[], None] | None] = [None]
# Listeners besides systemd's (the heartbeat file); each rate-limits itself.
_others: list[Callable[[], None]] = []


def beat() -> None:
    """Say "still making progress" (cheap: the listeners rate-limit themselves)."""
    listener = _listener[0]
    if listener is not None:
        listener()
    for other in _others:
        other()


def also(callback: Callable[[], None] | None, *, remove: Callable[[], None] | None = None) -> None:
    """Add ``callback`` to what a beat does (and/or take ``remove`` away)."""
    if remove is not None and remove in _others:
        _others.remove(remove)
    if callback is not None:
        _others.append(callback)


def listen(callback: Callable[[], None] | None) -> None:
    """Set (or with None, clear) what a beat does."""
    _listener[0] = callback
