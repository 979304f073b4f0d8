"""The real service (watcher, worker loop, hooks) run in the test's own process, until a
condition on its engine holds."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from rig2nwb.testing.labs import Lab


def run_service(lab: Lab, until: Callable[[Any], bool], timeout: float = 120) -> None:
    """Run the real service in this thread until ``until(engine)`` holds (stop after timeout)."""
    from rig2nwb.config.logsetup import setup_from_config
    from rig2nwb.service.loop import Service

    cfg = lab.config()
    setup_from_config(cfg)
    service = Service(cfg)
    timer = threading.Timer(timeout, service.request_stop)
    timer.start()
    try:
        service.run(until=until)
    finally:
        timer.cancel()


def finished(*sessions: str, subject: str = "m1") -> Callable[[Any], bool]:
    """An ``until`` condition: every named session is finished in the ledger."""
    def check(engine: Any) -> bool:
        rows = [engine.ledger.session(subject, s) for s in sessions]
        return all(r is not None and r.state == "finished" for r in rows)
    return check
