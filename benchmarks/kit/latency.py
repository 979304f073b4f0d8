"""Latency of the running daemon: the files a rig wrote (``RigFile``), when each one was
complete by the daemon's completion signals, and when the daemon committed it
(``completion_signals`` pairs them into ``Latency`` records). Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RigFile:
    rel: str  # rig-relative POSIX path, as the daemon logs it
    created: float  # wall clock (time.time()) of each event
    last_page: float
    closed: float


@dataclass(frozen=True)
class Latency:
    file: str
    signal: str  # next_file or stable
    signal_time: float
    closed: float
    committed: float | None

    @property
    def latency(self) -> float | None:
        return None if self.committed is None else self.committed - self.signal_time

    @property
    def after_close(self) -> float | None:
        return None if self.committed is None else self.committed - self.closed


def completion_signals(files: list[RigFile], settle: float,
                       committed: dict[str, float]) -> list[Latency]:
    """File k completes when file k+1 is created (next_file); the last one when its last page is
    settle seconds old (stable)."""
    out: list[Latency] = []
    for k, f in enumerate(files):
        if k + 1 < len(files):
            kind, at = "next_file", files[k + 1].created
        else:
            kind, at = "stable", f.last_page + settle
        out.append(Latency(f.rel, kind, at, f.closed, committed.get(f.rel)))
    return out
