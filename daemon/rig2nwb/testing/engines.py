"""The real Engine on a lab's config and ledger, driven step by step as the service loop drives
it, without the watcher (also from a child process: ``engine_for`` needs only ``config_path``
and ``state`` of the lab)."""

from __future__ import annotations

import time

from rig2nwb.engine.engine import Engine
from rig2nwb.ledger.store import Ledger
from rig2nwb.testing.labs import Lab


def engine_for(lab: Lab) -> Engine:
    cfg = lab.config()
    return Engine(cfg, Ledger(lab.state / "ledger.sqlite"))


def drive(engine: Engine, steps: int = 30, pause: float = 0.05) -> None:
    """What the service loop does, without the watcher: scan, re-stat, plan and act."""
    for _ in range(steps):
        engine.full_scan()
        engine.restat_pending()
        engine.step()
        time.sleep(pause)
