"""systemd's service notifications (``sd_notify``), spoken directly on ``$NOTIFY_SOCKET``.

The protocol is one datagram of ``KEY=value`` lines on an AF_UNIX socket, so a few lines of
``socket`` do it; no sdnotify/systemd package is needed. Without ``NOTIFY_SOCKET`` (a terminal,
Task Scheduler on Windows, the tests) every call here is a cheap no-op, so the same code runs
everywhere.

Who sends what (``systemd/rig2nwb.service`` has ``Type=notify``, ``NotifyAccess=all``):

- the *worker* (``rig2nwb run --worker``, the process that runs the loop) sends ``READY=1`` once
  it watches, readable ``STATUS=`` lines, ``WATCHDOG=1`` from its loop, ``STOPPING=1`` at the end
  (:class:`SystemdHook`);
- long steps inside the loop call :func:`heartbeat` (per appended batch, per suite2p trace block,
  per recovered session, per scanned folder) so a slow step that makes progress is not taken for
  a hung loop;
- the *supervisor* (``rig2nwb run``, systemd's main process) feeds the watchdog only while it
  waits to restart a crashed worker, and says so in ``STATUS=`` (see supervisor.py).

Only the loop's own thread feeds the watchdog: a background thread (the file watcher, the suite2p
scheduler) that kept pinging would hide a hung loop from systemd, which is what the watchdog is
for. systemd sets ``WATCHDOG_PID`` to its main process, the supervisor; the worker still counts the
watchdog as its own when that PID is its parent supervisor (``RIG2NWB_SUPERVISOR_PID``).
"""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rig2nwb import progress
from rig2nwb.logs import get_logger

if TYPE_CHECKING:
    from rig2nwb.engine.view import LoopView

SUPERVISOR_PID_ENV = "RIG2NWB_SUPERVISOR_PID"
STATUS_EVERY_SECONDS = 5.0  # the STATUS= query runs at most this often (it is one small SELECT)
# Before READY=1 each heartbeat also asks for this much more start-up time, so a long start-up
# recovery that makes progress outlives TimeoutStartSec= while a hung one still times out.
EXTEND_MIN_SECONDS = 60.0
BEAT_WITHOUT_WATCHDOG_SECONDS = 10.0  # how often start-up extensions go out when no watchdog is set

_warned: set[str] = set()


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one datagram to ``$NOTIFY_SOCKET``.

    False when there is no socket (not under systemd) or sending failed; a failure is logged once
    per socket and never raised: notifications must not stop conversion."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or not fields:
        return False
    if not hasattr(socket, "AF_UNIX"):
        _warn_once(address, "this platform has no AF_UNIX sockets")
        return False
    if address.startswith("@"):  # the abstract namespace: a leading NUL byte instead of '@'
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        _warn_once(address, "unsupported NOTIFY_SOCKET address (only /path and @abstract)")
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto("\n".join(fields).encode("utf-8"), target)
    except OSError as exc:
        _warn_once(address, f"{type(exc).__name__}: {exc}")
        return False
    return True


def _warn_once(address: str, error: str) -> None:
    if address not in _warned:
        _warned.add(address)
        get_logger("rig2nwb.service.sdnotify").warning("cannot notify systemd", stage="service",
                                               socket=address, error=error)


def watchdog_seconds() -> float | None:
    """systemd's watchdog interval (``WATCHDOG_USEC``) if this process is to feed it, else None."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
        pid = int(os.environ.get("WATCHDOG_PID", "0") or "0")
    except ValueError:
        return None
    if usec <= 0:
        return None
    if pid and pid != os.getpid() and not _supervised_by(pid):
        return None  # meant for another process (e.g. inherited by a child we started)
    return usec / 1e6


def _supervised_by(pid: int) -> bool:
    """True in the worker whose parent supervisor is systemd's main process ``pid``."""
    return os.environ.get(SUPERVISOR_PID_ENV) == str(pid) and os.getppid() == pid


class Keepalive:
    """``WATCHDOG=1`` at most every half watchdog interval, from the thread that made it.

    ``extend_start``: until :attr:`ready`, each beat also sends ``EXTEND_TIMEOUT_USEC``."""

    def __init__(self, watchdog: float | None, *, extend_start: bool = True) -> None:
        self.watchdog = watchdog
        self.period = watchdog / 2 if watchdog else BEAT_WITHOUT_WATCHDOG_SECONDS
        self.extend_usec = int(max(EXTEND_MIN_SECONDS, 3 * self.period) * 1e6)
        self.ready = not extend_start
        self.thread = threading.get_ident()
        self.last = -math.inf
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))

    def beat(self, *, force: bool = False) -> bool:
        """Ping if half the interval has passed (or ``force``); True if something was sent."""
        if not self.enabled or threading.get_ident() != self.thread:
            return False
        now = time.monotonic()
        if not force and now - self.last < self.period:
            return False
        self.last = now
        fields = ["WATCHDOG=1"] if self.watchdog else []
        if not self.ready:
            fields.append(f"EXTEND_TIMEOUT_USEC={self.extend_usec}")
        return notify(*fields)


_lock = threading.Lock()
_active: Keepalive | None = None


def heartbeat() -> None:
    """Say "still making progress" from inside a long step of the loop (cheap, rate-limited).

    A no-op outside the daemon's worker, on any thread but the loop's, and outside systemd."""
    keepalive = _active
    if keepalive is not None:
        keepalive.beat()


def _activate(keepalive: Keepalive | None, *, only_if: Keepalive | None = None) -> None:
    global _active
    with _lock:
        if only_if is None or _active is only_if:
            _active = keepalive
            progress.listen(heartbeat if keepalive is not None else None)


class SystemdHook:
    """The service hook that keeps systemd informed (see the module docstring).

    Built by ``default_hooks`` on the thread that then runs the loop: that thread owns the
    watchdog from here on, so start-up recovery's heartbeats already count."""

    name = "systemd"

    def __init__(self, status_every: float = STATUS_EVERY_SECONDS) -> None:
        self.keepalive = Keepalive(watchdog_seconds())
        self.enabled = self.keepalive.enabled
        self.status_every = status_every
        self._status_at = -math.inf
        self._status = ""
        self._db: sqlite3.Connection | None = None
        if self.enabled:
            _activate(self.keepalive)
            self.keepalive.beat(force=True)
            notify("STATUS=starting: checking NWB files against the ledger, scanning the rig folder")

    def started(self, view: LoopView) -> None:
        if not self.enabled:
            return
        self.keepalive.ready = True
        self._status = self._status_text(view)
        self._status_at = time.monotonic()
        notify("READY=1", f"STATUS={self._status}")
        self.keepalive.beat(force=True)

    def tick(self, view: LoopView) -> None:
        if not self.enabled:
            return
        self.keepalive.beat()
        if time.monotonic() - self._status_at >= self.status_every:
            self._status_at = time.monotonic()
            text = self._status_text(view)
            if text != self._status:
                self._status = text
                notify(f"STATUS={text}")

    def stopping(self, view: LoopView) -> None:
        if not self.enabled:
            return
        notify("STOPPING=1", "STATUS=stopping: closing NWB files")
        _activate(None, only_if=self.keepalive)
        if self._db is not None:
            self._db.close()
            self._db = None

    def _status_text(self, view: LoopView) -> str:
        """``watching 3 sessions, 1 acquiring, 41,200 frames committed`` (+ paused, problems)."""
        try:
            if self._db is None:
                # Our own read-only connection: one aggregate query, never a write, and no
                # reach into the ledger's internals. A short timeout: this runs on the loop.
                self._db = sqlite3.connect(f"{Path(view.ledger.path).as_uri()}?mode=ro",
                                           uri=True, timeout=1.0)
            # fetchall: the statement ends at once, so no read snapshot holds back checkpoints.
            row = self._db.execute(_STATUS_SQL).fetchall()[0]
        except sqlite3.Error as exc:  # a busy ledger: keep the last status, try again later
            get_logger("rig2nwb.service.sdnotify").debug("status query failed", stage="service",
                                                 error=str(exc))
            return self._status or "watching"
        sessions, acquiring, paused, quarantined, frames, problems = row
        parts = [f"watching {sessions:,} session{'s' * (sessions != 1)}", f"{acquiring:,} acquiring"]
        if paused:
            parts.append(f"{paused:,} paused")
        if quarantined:
            parts.append(f"{quarantined:,} quarantined")
        parts.append(f"{frames:,} frames committed")
        if problems:
            parts.append(f"{problems:,} problem{'s' * (problems != 1)} (rig2nwb status)")
        return ", ".join(parts)


# Frames are TIFF pages committed (the ledger's page-stream count), as in `rig2nwb status`.
_STATUS_SQL = """
SELECT COUNT(*),
       COALESCE(SUM(state = 'acquiring' AND quarantined_at IS NULL), 0),
       COALESCE(SUM(state = 'paused' AND quarantined_at IS NULL), 0),
       COALESCE(SUM(quarantined_at IS NOT NULL), 0),
       (SELECT COALESCE(SUM(frames_committed), 0) FROM series WHERE name = 'TwoPhotonSeries'),
       (SELECT COUNT(*) FROM problems WHERE active = 1 AND severity = 'error')
FROM sessions
"""
