"""Is a rig's daemon running? Judged from its heartbeat file (service.heartbeat), pure.

The worker rewrites ``heartbeat.json`` in its state folder every ``service.heartbeat_seconds``
(also from inside long steps) and marks it ``stopped`` when it stops cleanly. A reader that only
reads that file, and never touches the daemon's lock, tells:

- ``running``: a beat within SILENT_AFTER_BEATS intervals;
- ``silent``: alive as far as can be told, but no beat for longer than that (stopped with
  SIGSTOP, hung, or a machine that is frozen);
- ``stopped``: stopped cleanly, never started, or its process is gone (killed) on this host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rig2nwb.core.humanize import duration

SILENT_AFTER_BEATS = 3.0


@dataclass(frozen=True)
class Liveness:
    state: str  # running | silent | stopped
    age_seconds: float | None  # since the last beat (or the clean stop); None: never ran
    detail: str


def liveness(beat: Mapping[str, Any] | None, now: float, *,
             process_alive: bool | None) -> Liveness:
    """``beat``: the heartbeat file's content (None: there is none); ``process_alive``: whether
    its pid runs on this host (None: another host, or unknown)."""
    if beat is None:
        return Liveness("stopped", None, "no heartbeat: the daemon has not run with this state "
                        "folder (or is older than the lab view)")
    try:
        at = float(beat.get("stopped_at") or beat["beat_at"])
        every = float(beat.get("interval_seconds", 10.0))
    except (KeyError, TypeError, ValueError):
        return Liveness("stopped", None, "its heartbeat file cannot be read")
    age = max(0.0, now - at)
    if beat.get("state") == "stopped":
        return Liveness("stopped", age, f"stopped {duration(age)} ago")
    if process_alive is False:
        return Liveness("stopped", age, f"its process is gone without a clean stop (killed?); "
                        f"last heartbeat {duration(age)} ago")
    if age <= SILENT_AFTER_BEATS * every:
        return Liveness("running", age, f"heartbeat {duration(age)} ago")
    return Liveness("silent", age, f"no heartbeat for {duration(age)} (expected every "
                    f"{duration(every)}): stopped (SIGSTOP), hung, or its machine is frozen")
