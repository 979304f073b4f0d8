"""The service shell: lock, ledger, watcher, and the one worker loop that drives the engine."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

from rig2nwb.config.loading import config_warnings
from rig2nwb.config.paths import ledger_path
from rig2nwb.config.schema import Config
from rig2nwb.engine.engine import Engine
from rig2nwb.engine.quarantine import account_previous_worker, previous_worker_exit
from rig2nwb.engine.view import ServiceHook
from rig2nwb.errors import LedgerDamaged, WriterPoisoned
from rig2nwb.ledger.quarantine import describe, is_session_error
from rig2nwb.ledger.store import open_verified
from rig2nwb.logs import get_logger
from rig2nwb.rig.watcher import FsEvent, start_observer, stop_observer
from rig2nwb.service.hooks import default_hooks
from rig2nwb.service.lock import LOCK_WAIT_SECONDS, lock_state
from rig2nwb.states import Problem

T = TypeVar("T")

TICK_SECONDS = 0.5


class Service:
    """Watch the rig folder and keep every session's NWB file up to date until stopped."""

    def __init__(self, cfg: Config, hooks: list[ServiceHook] | None = None) -> None:
        self.cfg = cfg
        self.hooks = default_hooks(cfg) if hooks is None else hooks
        self.stop_event = threading.Event()
        self.log = get_logger("rig2nwb.service.loop")
        self.events: queue.Queue[FsEvent] = queue.Queue()
        self.engine: Engine | None = None
        self._failing: set[str] = set()  # rig-wide steps whose last run failed

    def request_stop(self, *_: Any) -> None:
        self.stop_event.set()
        if self.engine is not None:
            self.engine.stop_event.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.log.info("stop requested", stage="service", signal=signal.Signals(signum).name)
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        if hasattr(signal, "SIGBREAK"):  # Ctrl+Break on Windows consoles
            signal.signal(signal.SIGBREAK, handler)

    def run(self, until: Callable[[Engine], bool] | None = None) -> int:
        cfg = self.cfg
        lock = lock_state(cfg, LOCK_WAIT_SECONDS)
        try:
            ledger = open_verified(ledger_path(cfg))
        except LedgerDamaged:
            lock.release()
            raise
        account_previous_worker(ledger, self.log, previous_worker_exit(),
                                cfg.service.max_worker_deaths)
        engine = self.engine = Engine(cfg, ledger)
        if self.stop_event.is_set():
            engine.stop_event.set()
        observer = None
        poisoned = False
        try:
            # Import pynwb now rather than on the first completed TIFF, where its ~2 s import
            # would add to the first file's latency.
            import pynwb  # noqa: F401

            engine.recover()
            engine.full_scan()
            if cfg.suite2p.enabled:
                engine.suite2p.start()
            engine.jobs.start()
            observer = self._start_observer()
            last_scan = time.monotonic()
            self.log.info("watching", stage="service", root=str(cfg.rig.root),
                          observer=type(observer).__name__ if observer else "rescan only",
                          rescan_seconds=cfg.watch.rescan_seconds,
                          output=str(cfg.output.folder),
                          nice=os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority")
                          else None)
            for warning in config_warnings(cfg):
                self.log.warning("configuration", stage="service", warning=warning)
            self._call_hooks("started", engine)
            while not self.stop_event.is_set():
                rescan = self._rig_safely("watching the rig folder",
                                          lambda: self._drain_events(engine), engine)
                if rescan or time.monotonic() - last_scan >= cfg.watch.rescan_seconds:
                    self._rig_safely("scanning the rig folder", engine.full_scan, engine)
                    engine.retry_transient()
                    last_scan = time.monotonic()
                    if observer is None or not observer.is_alive():
                        stop_observer(observer)
                        observer = self._start_observer()
                self._rig_safely("watching the rig folder", engine.restat_pending, engine)
                engine.step()
                self._call_hooks("tick", engine)
                if until is not None and until(engine):
                    break
            self._call_hooks("stopping", engine)
        except WriterPoisoned:
            poisoned = True  # the caller ends the process; no NWB handle may be closed here
            raise
        finally:
            stop_observer(observer)
            engine.jobs.stop()
            engine.suite2p.stop()
            if not poisoned:
                engine.close()
            ledger.close()
            lock.release()
            self.log.info("stopped", stage="service", restart_needed=poisoned)
        return 0

    def _rig_safely(self, what: str, fn: Callable[[], T], engine: Engine) -> T | None:
        """Run a rig-wide step (not one session's work): an unexpected error becomes a rig-wide
        problem in status and the log, and the loop goes on (a crash here would stop every
        session, and restarting would meet the same folder again)."""
        try:
            result = fn()
        except WriterPoisoned:
            raise
        except Exception as exc:
            if not is_session_error(exc):
                raise  # the ledger itself failing: the worker restarts (with backoff)
            message = f"{what} failed: {describe(exc)}; rig2nwb goes on and retries"
            if engine.ledger.report_problem(None, Problem.INTERNAL_ERROR, message, what):
                engine.ledger.add_event(None, "problem", message)
                self.log.error("internal error", stage="watch", problem=message, exc_info=exc)
            self._failing.add(what)
            return None
        if what in self._failing:
            self._failing.discard(what)
            engine.ledger.clear_problem(None, Problem.INTERNAL_ERROR, what)
        return result

    def _call_hooks(self, what: str, engine: Engine) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, what)(engine)
            except WriterPoisoned:
                raise
            except Exception as exc:  # a hook must never stop conversion
                self.log.error("service hook failed", stage="service", hook=hook.name, call=what,
                               error=f"{type(exc).__name__}: {exc}", exc_info=True)

    def _start_observer(self) -> Any:
        mode = self.cfg.watch.observer
        try:
            return start_observer(self.cfg.rig.root, mode, self.cfg.watch.polling_interval_seconds,
                                  self.events)
        except OSError as exc:
            self.log.warning("file watcher not available; relying on periodic rescans",
                             stage="watch", error=str(exc))
            return None

    def _drain_events(self, engine: Engine) -> bool:
        """Feed queued events to the engine; wait up to one tick for the first. True = rescan."""
        rescan = False
        try:
            ev = self.events.get(timeout=TICK_SECONDS)
        except queue.Empty:
            return False
        deadline = time.monotonic() + TICK_SECONDS
        while True:
            if ev.kind == "rescan":
                rescan = True
            else:
                engine.observe(ev.path, ev.kind)
            if time.monotonic() > deadline:
                break
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                break
        return rescan
