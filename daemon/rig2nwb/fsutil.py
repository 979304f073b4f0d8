"""Small file-system helpers every layer shares: atomic replacement, durable renames, new-file
modes and free space. One way of doing each, so the copies cannot disagree."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def file_mode() -> int:
    """The mode a new file gets under this process's umask (0644 under 022, 0640 under 027): the
    pages and pictures are for the whole lab, like the NWB files beside them. (mkstemp alone
    makes 0600.) Read once: os.umask can only be read by setting it."""
    global _MODE
    if _MODE is None:
        mask = os.umask(0o022)
        os.umask(mask)
        _MODE = 0o666 & ~mask
    return _MODE


_MODE: int | None = None


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step; readers see the old or the new file, never a
    mix. Created with the umask's mode (file_mode). Not fsynced: these files (pages, pictures)
    are rebuilt from the ledger whenever they are lost."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fsync_path(path: Path, *, strict: bool = False) -> None:
    """fsync a file or folder by name (a folder: to make a rename in it durable).

    Windows cannot open folders; NTFS journals the rename itself, so that is never an error
    there. Elsewhere a failure is ignored unless ``strict`` (a caller that must know the rename
    is on disk before it says so)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError:
        if strict and os.name != "nt":
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(fd)


def free_bytes(folder: Path) -> int | None:
    """Free space for this user on the disk of ``folder``; None when it cannot be told (the
    folder is missing or unreachable: then a write itself says whether it fits)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None
