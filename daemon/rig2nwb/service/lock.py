"""The state folder's lock: one writer per ledger and per NWB file, ever."""

from __future__ import annotations

from filelock import FileLock, Timeout

from rig2nwb.config.paths import lock_path
from rig2nwb.config.schema import Config
from rig2nwb.errors import AlreadyRunning

# A worker started right after its predecessor was killed may find the lock still held for a
# moment (the old process is being torn down): wait this long before calling it a second daemon.
LOCK_WAIT_SECONDS = 10.0


def lock_state(cfg: Config, wait_seconds: float = 0.0) -> FileLock:
    """Take the state folder's lock: one writer per ledger and per NWB file, ever."""
    cfg.state.folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path(cfg))
    try:
        lock.acquire(timeout=wait_seconds)
    except Timeout:
        raise AlreadyRunning(
            f"another rig2nwb process is using the state folder {cfg.state.folder} "
            "(stop it first; a running daemon converts sessions itself)"
        ) from None
    return lock
