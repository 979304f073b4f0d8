"""The daemon's heartbeat file, ``<state.folder>/heartbeat.json``: what the lab view reads to
tell running, silent and stopped daemons apart (core.liveness) without touching the daemon's
lock or ledger.

Rewritten (atomically, not fsynced: it is rebuilt every beat) every ``service.heartbeat_seconds``
from the loop's ticks and from inside long steps (progress.beat), and marked ``stopped`` when
the loop ends cleanly. A worker killed outright leaves ``running`` with its pid: the lab view
sees the process gone."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time

from rig2nwb import progress
from rig2nwb.config.paths import heartbeat_path
from rig2nwb.config.schema import Config
from rig2nwb.engine.view import LoopView
from rig2nwb.fsutil import write_atomic


class HeartbeatHook:
    name = "heartbeat"

    def __init__(self, cfg: Config) -> None:
        self.path = heartbeat_path(cfg)
        self.every = cfg.service.heartbeat_seconds
        self.rig = cfg.rig.name
        self.started_at = time.time()
        self.last = 0.0
        self._lock = threading.Lock()

    def _write(self, state: str) -> None:
        now = time.time()
        record = {"rig": self.rig, "state": state, "pid": os.getpid(),
                  "host": socket.gethostname(), "started_at": self.started_at, "beat_at": now,
                  "interval_seconds": self.every}
        if state == "stopped":
            record["stopped_at"] = now
        # A full or read-only state folder: the ledger reports that; this is only a view.
        with contextlib.suppress(OSError):
            write_atomic(self.path, json.dumps(record).encode())
        self.last = now

    def beat(self) -> None:
        if time.time() - self.last >= self.every and self._lock.acquire(blocking=False):
            try:
                self._write("running")
            finally:
                self._lock.release()

    def started(self, view: LoopView) -> None:
        self._write("running")
        progress.also(self.beat)

    def tick(self, view: LoopView) -> None:
        self.beat()

    def stopping(self, view: LoopView) -> None:
        progress.also(None, remove=self.beat)
        with self._lock:
            self._write("stopped")
