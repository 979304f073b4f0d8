"""One-shot runs of the engine (``rig2nwb convert``, ``rig2nwb attach`` without a daemon, tests):
the same sequence every time, written once.

lock the state folder -> open the ledger (verified) -> an Engine -> the work -> the checks of
the finished files -> close -> notifications and the status page, as the daemon would."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rig2nwb.config.paths import ledger_path
from rig2nwb.config.schema import Config
from rig2nwb.engine.engine import Engine
from rig2nwb.ledger.store import Ledger, open_verified
from rig2nwb.logs import get_logger
from rig2nwb.service.lock import lock_state

CHECK_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class OneShot:
    engine: Engine
    ledger: Ledger
    since_event: int  # the newest event before this run: its own events come after


@contextlib.contextmanager
def one_shot(cfg: Config, *, scope: Path | None = None) -> Iterator[OneShot]:
    """The engine for one command, holding the state folder's lock (AlreadyRunning when a
    daemon or another command holds it) over a verified ledger (LedgerDamaged)."""
    lock = lock_state(cfg)
    try:
        ledger = open_verified(ledger_path(cfg))
    except BaseException:
        lock.release()
        raise
    engine: Engine | None = None
    try:
        engine = Engine(cfg, ledger, convert_scope=scope)
        yield OneShot(engine, ledger, ledger.last_event_id())
    finally:
        if engine is not None:
            engine.close()
        ledger.close()
        lock.release()


def finish_checks(engine: Engine) -> None:
    """Wait for the checks (and summary pictures) of the finished files, made in a child."""
    while engine.checks_pending():
        engine.run_checks()
        time.sleep(CHECK_POLL_SECONDS)


def convert_scope(engine: Engine) -> None:
    """Recover, scan the engine's scope and append until nothing is left, then check."""
    engine.recover()
    engine.full_scan()
    while engine.step():
        pass
    finish_checks(engine)


def after_one_shot(cfg: Config, run: OneShot, *, notify: bool) -> None:
    """What a one-shot command does once its work is done, as the daemon would: the
    notifications of its events are sent (``notify``), or marked done so that a daemon started
    later does not send them; and the status page and its JSON are rewritten (the summary
    pictures were drawn by the check child already). Never raises: the work is done, a page
    that cannot be written is a warning."""
    from rig2nwb.outputs.notify import NotifyHook  # apprise only when needed

    log = get_logger("rig2nwb.oneshot")
    run.engine.close()
    try:
        if notify:
            NotifyHook(cfg).deliver_now(run.engine, run.since_event)
        else:
            NotifyHook.mark_done(run.ledger, run.since_event)
    except Exception as exc:  # the conversion is done; its notifications are not its result
        log.warning("notifications not sent", stage="notify", error=str(exc))
    if not cfg.status.page:
        return
    from rig2nwb.outputs.page import write_page

    try:
        write_page(cfg, running=False)
    except OSError as exc:
        log.warning("status page not written", stage="status", error=str(exc))
