"""Figures the fault, bad-input and security tests record for the selftest report.

A test calls ``record(kind, **values)`` with what it ran and what it found (crash trials run and
survived, frames lost and duplicated, a bad input handled, RSS at start and end, ...), *before*
it asserts, so a failing run still reports its numbers. Records are JSON lines appended to the
file named by ``--figures PATH`` (or ``$RIG2NWB_FIGURES``); without it ``record`` does nothing.
``benchmarks/selftest.py`` runs the suites with ``--figures`` and prints the table.

Kinds and their keys (the report relies on them):
- ``crash``: test, trials_run, trials_survived, frames_expected, frames_lost, frames_duplicated,
  and optionally phases ({phase: kills}) and suite2p_old / suite2p_new (replace outcomes);
- ``power_loss``: test, trials_run, trials_repaired, frames_lost, frames_duplicated;
- ``bad_input``: case, handled (bool), detail;
- ``disk_full``: test, recoveries, frames_lost;
- ``outage``: test (rig folder gone and back, reader holding the file), survived (bool);
- ``soak``: test, sessions, files, frames, seconds, rss_start_mb, rss_end_mb, fds_start,
  fds_end, threads_start, threads_end;
- ``security``: test, tried, refused (or passed: bool) and detail.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

ENV = "RIG2NWB_FIGURES"


def record(kind: str, **values: Any) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"kind": kind, "at": time.time(), **values}, default=str)
    with open(path, "a", encoding="utf-8") as f:  # one short line per write: appends stay whole
        f.write(line + "\n")
