"""Staying out of the acquisition's way: the worker runs at a lower CPU priority."""

from __future__ import annotations

import contextlib
import os


def lower_priority(nice: int, *, exclude: frozenset[int] = frozenset()) -> int | None:
    """Run at niceness ``nice`` or lower priority (never raises it: an unprivileged process
    could not, and a unit's own Nice= may already be lower). Returns the niceness now; None
    where there is none (Windows: the scheduled task's priority applies, docs/service.md).

    Linux keeps niceness per thread and new threads inherit it, so this runs before the worker
    starts its own threads; threads that already exist (numpy's OpenBLAS pool is started at
    import) are set one by one through /proc/self/task."""
    if not hasattr(os, "getpriority"):
        return None
    tasks = [0]
    with contextlib.suppress(OSError):
        tasks += [int(t) for t in os.listdir("/proc/self/task")]
    for task in tasks:
        if task in exclude:
            continue  # e.g. the demo's simulated rig, which must keep the rig's priority
        with contextlib.suppress(OSError):  # a thread that just ended; or not permitted
            if nice > os.getpriority(os.PRIO_PROCESS, task):
                os.setpriority(os.PRIO_PROCESS, task, nice)
    return os.getpriority(os.PRIO_PROCESS, 0)
