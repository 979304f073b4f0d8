"""The service shell: lock, ledger, watcher, and the one worker loop that drives the engine."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeVar

from filelock import FileLock, Timeout

from rig2nwb.config.schema import Config, config_warnings
from rig2nwb.engine.engine import Engine
from rig2nwb.engine.quarantine import (
    account_previous_worker,
    describe,
    is_session_error,
    previous_worker_exit,
)
from rig2nwb.errors import AlreadyRunning, LedgerDamaged, WriterPoisoned
from rig2nwb.ledger.store import Ledger
from rig2nwb.logs import get_logger
from rig2nwb.rig.watcher import FsEvent, start_observer, stop_observer
from rig2nwb.service.sdnotify import SystemdHook

T = TypeVar("T")

TICK_SECONDS = 0.5
# A worker started right after its predecessor was killed may find the lock still held for a
# moment (the old process is being torn down): wait this long before calling it a second daemon.
LOCK_WAIT_SECONDS = 10.0


def ledger_path(cfg: Config) -> Path:
    return cfg.state.folder / "ledger.sqlite"


def lock_state(cfg: Config, wait_seconds: float = 0.0) -> FileLock:
    """Take the state folder's lock: one writer per ledger and per NWB file, ever."""
    cfg.state.folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(cfg.state.folder / "rig2nwb.lock")
    try:
        lock.acquire(timeout=wait_seconds)
    except Timeout:
        raise AlreadyRunning(
            f"another rig2nwb process is using the state folder {cfg.state.folder} "
            "(stop it first; a running daemon converts sessions itself)"
        ) from None
    return lock


def open_verified(path: Path) -> Ledger:
    """The ledger for writing, after SQLite's ``integrity_check``: a damaged ledger is reported
    (LedgerDamaged, one line saying how to recover), never trusted."""
    return Ledger(path, verify=True)


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


class ServiceHook(Protocol):
    """Something that follows the worker loop without being part of the engine: systemd
    notifications, apprise notifications, the status page, live previews.

    Hooks run on the worker thread (they may read ``engine.ledger``), must return quickly and
    must never stop the loop: an exception is logged and the loop goes on."""

    name: str

    def started(self, engine: Engine) -> None:
        """The service is watching (after recovery and the first scan)."""

    def tick(self, engine: Engine) -> None:
        """Once per loop iteration (about every TICK_SECONDS when idle)."""

    def stopping(self, engine: Engine) -> None:
        """The loop has ended; called before the engine closes its files."""


def default_hooks(cfg: Config) -> list[ServiceHook]:
    """The hooks a daemon runs, in call order."""
    # systemd first: READY=1 goes out as soon as the service watches (a no-op outside systemd).
    hooks: list[ServiceHook] = [SystemdHook()]
    if cfg.status.preview:  # before the status page, so the page links this tick's preview
        from rig2nwb.outputs.preview import PreviewHook

        hooks.append(PreviewHook(cfg))
    if cfg.status.page:
        from rig2nwb.outputs.page import StatusPageHook  # imports status, which imports us

        hooks.append(StatusPageHook(cfg))
    from rig2nwb.outputs.notify import NotifyHook  # always: it also warns when the output disk fills up

    hooks.append(NotifyHook(cfg))
    return hooks


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
            if engine.ledger.report_problem(None, "internal_error", message, what):
                engine.ledger.add_event(None, "problem", message)
                self.log.error("internal error", stage="watch", problem=message, exc_info=exc)
            self._failing.add(what)
            return None
        if what in self._failing:
            self._failing.discard(what)
            engine.ledger.clear_problem(None, "internal_error", what)
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
