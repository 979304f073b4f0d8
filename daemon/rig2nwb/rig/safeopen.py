"""The one safe way to open anything from the rig folder.

A rig's save folder is usually a share that every lab member and every acquisition PC can write
to, so what is found there is untrusted. Everything rig2nwb reads from it (TIFFs, the lab's scan
and trial files, ``rig2nwb.toml`` sidecars, suite2p folders and their ``.npy`` files) is opened
here, and only here:

- **No links.** The path is walked component by component from ``rig.root`` with
  ``openat(..., O_NOFOLLOW)``: a symbolic link anywhere below the root (a file, or a folder on
  the way to it) is refused, whatever it points at. The check is made on the handle that is
  then read, so swapping a file for a link between a look and a read cannot smuggle another
  file in. ``rig.root`` itself may be a link (the admin's choice), and so may a suite2p folder
  configured as an absolute path outside the rig (it becomes its own root).
- **Nothing that can hang.** ``O_NONBLOCK``: a FIFO named ``run_00001.tif`` opens at once and is
  refused as "not a regular file" instead of blocking the worker forever.
- **The file that was looked at.** With ``expect``, the handle's device, inode, size and mtime
  must be those seen when the file was classified; otherwise it changed in between and the
  caller looks again later.

Windows has no ``openat``: there each component is checked with ``lstat`` (links and junctions
refused) before a plain open, and the handle's identity is compared with the path's afterwards;
a swap in that short window is caught by the identity check.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import BinaryIO

from rig2nwb.errors import UnsafeRigPath
from rig2nwb.states import Problem

_HAS_DIR_FD = os.open in os.supports_dir_fd and hasattr(os, "O_NOFOLLOW")
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_REPARSE = getattr(stat, "FILE_ATTRIBUTE_REPARSE_POINT", 0x400)


@dataclass(frozen=True)
class FileId:
    """What identifies one version of a file: where it lives and what it looked like."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileId:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def split_inside(root: Path, path: Path | str) -> list[str]:
    """``path``'s components below ``root`` (lexically: no ``..``, no absolute escape).
    Raises UnsafeRigPath for a path that is not inside ``root``."""
    p = Path(path)
    if not p.is_absolute():
        p = root / p
    base = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(os.path.abspath(p))
    if full == base:
        return []
    if not full.startswith(os.path.join(base, "")):
        raise UnsafeRigPath(Problem.OUTSIDE_ROOT, f"{path} is not inside {root}; rig2nwb reads "
                            "nothing outside rig.root")
    parts = list(PurePath(full[len(os.path.join(base, "")):]).parts)
    if any(part in ("..", ".") for part in parts):
        raise UnsafeRigPath(Problem.OUTSIDE_ROOT, f"{path}: '..' in a rig path")
    return parts


def link_text(root: Path, link: Path) -> str:
    """What a link in the rig folder is, for people: where it points and why that is not
    followed. Nothing is looked up through the link (its target may be a hung network mount):
    the target is read with readlink and placed lexically; only a target inside the rig folder
    is checked for existence, itself without following links."""
    try:  # the link may be switched meanwhile: then only that it was a link is known
        target = os.readlink(link)
    except OSError:
        return "is a symbolic link; rig2nwb reads nothing through links in the rig folder"
    where = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(link)), target))
    try:
        inside = split_inside(root, where)
    except UnsafeRigPath:
        return (f"is a symbolic link pointing outside the rig folder, to {where}; rig2nwb reads "
                "nothing outside rig.root, nor through links")
    try:
        lstat_rig(root, Path(*inside) if inside else root)
    except FileNotFoundError:
        return (f"is a broken symbolic link (to {target}); rig2nwb reads nothing through links "
                "in the rig folder")
    except (OSError, UnsafeRigPath):
        pass
    return (f"is a symbolic link (to {target}); rig2nwb reads nothing through links in the rig "
            "folder (a link can be switched to point elsewhere at any moment)")


def _link_problem(shown: str, root: Path | None = None, link: Path | None = None) -> UnsafeRigPath:
    if root is None or link is None:
        text = ("is a symbolic link (or lies in a linked folder); rig2nwb reads nothing through "
                "links in the rig folder")
    else:
        text = link_text(root, link)
        inner = Path(*split_inside(root, link)).as_posix() if link != root else ""
        if inner and inner != shown:
            text = f"lies in {inner}, which {text}"
    return UnsafeRigPath(Problem.SYMLINK, f"{shown}: {text}" if not text.startswith("lies") else
                         f"{shown} {text}")


def _open_root(root: Path) -> int:
    return os.open(root, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)


def _walk_dirs(root: Path, dirs: list[str], shown: str) -> int:
    """An fd on the folder ``root/dirs...``, every component opened without following links."""
    fd = _open_root(root)
    try:
        for i, part in enumerate(dirs):
            try:
                nxt = os.open(part, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC,
                              dir_fd=fd)
            except OSError as exc:
                if _is_link_error(exc, part, fd):
                    raise _link_problem(shown, root, root.joinpath(*dirs[:i + 1])) from None
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_link_error(exc: OSError, name: str, dir_fd: int) -> bool:
    """ELOOP (Linux) / EMLINK (FreeBSD) / ENOTDIR for a link to a file, checked with lstat."""
    import errno

    if exc.errno in (errno.ELOOP, getattr(errno, "EMLINK", -1), getattr(errno, "EFTYPE", -1)):
        return True
    if exc.errno == errno.ENOTDIR:
        with contextlib.suppress(OSError):
            return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    return False


def _check_regular(st: os.stat_result, shown: str) -> None:
    if stat.S_ISREG(st.st_mode):
        return
    kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else
            "a folder" if stat.S_ISDIR(st.st_mode) else
            "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
            "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
    raise UnsafeRigPath(Problem.NOT_REGULAR, f"{shown} is {kind}, not a regular file; not read")


def _check_expected(st: os.stat_result, expect: FileId | None, shown: str) -> None:
    if expect is None:
        return
    if (st.st_dev, st.st_ino) != (expect.dev, expect.ino):
        raise UnsafeRigPath(Problem.REPLACED, f"{shown} was replaced by another file since it was "
                            "looked at; looked at again later", transient=True)
    if (st.st_size, st.st_mtime_ns) != (expect.size, expect.mtime_ns):
        raise UnsafeRigPath(Problem.CHANGED, f"{shown} changed since it was looked at; looked at again "
                            "later", transient=True)


def open_rig_file(root: Path, path: Path | str, *, expect: FileId | None = None,
                  shown: str | None = None) -> BinaryIO:
    """Open ``path`` (inside ``root``) for reading, safely (see the module docstring).

    Raises UnsafeRigPath for links, non-regular files, paths outside ``root`` and files that
    are not the ``expect``-ed version; OSError for what the OS refuses (missing, permission)."""
    parts = split_inside(root, path)
    shown = shown or (Path(*parts).as_posix() if parts else str(root))
    if not parts:
        raise UnsafeRigPath(Problem.NOT_REGULAR, f"{shown} is a folder, not a regular file; not read")
    if _HAS_DIR_FD:
        dfd = _walk_dirs(root, parts[:-1], shown)
        try:
            try:
                fd = os.open(parts[-1], os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC,
                             dir_fd=dfd)
            except OSError as exc:
                if _is_link_error(exc, parts[-1], dfd):
                    raise _link_problem(shown, root, root.joinpath(*parts)) from None
                raise
        finally:
            os.close(dfd)
    else:  # pragma: no cover - Windows
        fd = _open_checked_windows(root, parts, shown)
    try:
        st = os.fstat(fd)
        _check_regular(st, shown)
        _check_expected(st, expect, shown)
        if _O_NONBLOCK and hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a regular file: reads behave as always
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open_checked_windows(root: Path, parts: list[str], shown: str) -> int:  # pragma: no cover
    current = root
    for part in parts:
        current = current / part
        st = os.lstat(current)
        if stat.S_ISLNK(st.st_mode) or getattr(st, "st_file_attributes", 0) & _REPARSE:
            raise _link_problem(shown)
    before = os.lstat(current)
    fd = os.open(current, os.O_RDONLY | _O_BINARY)
    after = os.fstat(fd)
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise UnsafeRigPath(Problem.REPLACED, f"{shown} was replaced while it was opened", transient=True)
    return fd


def lstat_rig(root: Path, path: Path | str) -> os.stat_result:
    """``lstat`` of a rig path whose folders are not links (the last component may be one:
    the caller sees S_ISLNK). Raises UnsafeRigPath when a folder on the way is a link."""
    parts = split_inside(root, path)
    if not parts:
        return os.stat(root)
    shown = Path(*parts).as_posix()
    if _HAS_DIR_FD:
        dfd = _walk_dirs(root, parts[:-1], shown)
        try:
            return os.lstat(parts[-1], dir_fd=dfd)
        finally:
            os.close(dfd)
    current = root  # pragma: no cover - Windows
    for part in parts[:-1]:  # pragma: no cover
        current = current / part
        st = os.lstat(current)
        if stat.S_ISLNK(st.st_mode) or getattr(st, "st_file_attributes", 0) & _REPARSE:
            raise _link_problem(shown)
    return os.lstat(current / parts[-1])  # pragma: no cover


def is_rig_dir(root: Path, path: Path | str) -> bool:
    """Is ``path`` a real folder inside ``root``, reached without links?"""
    try:
        return stat.S_ISDIR(lstat_rig(root, path).st_mode)
    except (OSError, UnsafeRigPath):
        return False


@dataclass(frozen=True)
class Entry:
    name: str
    st: os.stat_result  # lstat: a link is a link

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.st.st_mode)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.st.st_mode)


def list_rig_dir(root: Path, path: Path | str, *, limit: int = 100_000,
                 only: Callable[[str], bool] | None = None) -> list[Entry]:
    """The entries of a rig folder (lstat each; links are listed as links, never followed).
    At most ``limit`` entries (a folder of a million planted files is not read whole); with
    ``only``, just the names it accepts (the others cost no lstat)."""
    parts = split_inside(root, path)
    shown = Path(*parts).as_posix() if parts else str(root)
    out: list[Entry] = []
    if _HAS_DIR_FD:
        dfd = _walk_dirs(root, parts, shown)
        try:
            with os.scandir(dfd) as it:
                for entry in it:
                    if only is not None and not only(entry.name):
                        continue
                    with contextlib.suppress(OSError):  # vanished meanwhile
                        out.append(Entry(entry.name, entry.stat(follow_symlinks=False)))
                    if len(out) >= limit:
                        break
        finally:
            os.close(dfd)
        return sorted(out, key=lambda e: e.name)
    folder = root.joinpath(*parts)  # pragma: no cover - Windows
    lstat_rig(root, folder) if parts else None  # pragma: no cover
    with os.scandir(folder) as it:  # pragma: no cover
        for entry in it:
            with contextlib.suppress(OSError):
                out.append(Entry(entry.name, entry.stat(follow_symlinks=False)))
            if len(out) >= limit:
                break
    return sorted(out, key=lambda e: e.name)  # pragma: no cover


def read_rig_bytes(root: Path, path: Path | str, *, max_bytes: int,
                   expect: FileId | None = None) -> bytes:
    """The whole (small) file, refusing one larger than ``max_bytes``."""
    with open_rig_file(root, path, expect=expect) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        shown = Path(*split_inside(root, path)).as_posix()
        raise UnsafeRigPath(Problem.TOO_LARGE, f"{shown} is larger than the {max_bytes:,} bytes such a "
                            "file may have; not read")
    return data


@contextlib.contextmanager
def opened(root: Path, path: Path | str, *, expect: FileId | None = None) -> Iterator[BinaryIO]:
    fh = open_rig_file(root, path, expect=expect)
    try:
        yield fh
    finally:
        fh.close()


class FolderFilter:
    """Which rig folders can hold a file of the layout patterns: a folder ``a/b`` is worth
    entering only when some pattern's first two folder components can match ``a`` and ``b``.
    ``max_depth`` is the deepest folder any pattern reaches (patterns have no ``**``)."""

    def __init__(self, patterns: list[str]) -> None:
        import re

        from rig2nwb.core.patterns import Pattern

        self._prefixes: dict[int, list[re.Pattern[str]]] = {}
        self.max_depth = 0
        for text in patterns:
            folders = text.split("/")[:-1]
            self.max_depth = max(self.max_depth, len(folders))
            for depth in range(1, len(folders) + 1):
                prefix = Pattern.compile("/".join(folders[:depth])).regex
                self._prefixes.setdefault(depth, []).append(prefix)

    def may_hold(self, rel_parts: list[str]) -> bool:
        depth = len(rel_parts)
        if depth == 0:
            return True
        rel = "/".join(rel_parts)
        return any(p.match(rel) for p in self._prefixes.get(depth, ()))


def walk_rig(root: Path, start: Path, folders: FolderFilter, *,
             stop: Callable[[], bool] | None = None,
             on_folder: Callable[[], None] | None = None) -> Iterator[tuple[list[str], list[Entry]]]:
    """Every folder below ``start`` (inside ``root``) that the patterns can reach, with its
    entries: iterative (no recursion limit, whatever the depth of a planted tree), never through
    links, never deeper than the patterns reach, skipping folders no pattern can match, and
    checking ``stop`` between folders. Folders that vanish or cannot be read are skipped."""
    stack = [split_inside(root, start)]
    while stack:
        if stop is not None and stop():
            return
        parts = stack.pop()
        if on_folder is not None:
            on_folder()
        try:
            entries = list_rig_dir(root, Path(*parts) if parts else root)
        except (OSError, UnsafeRigPath):
            continue
        yield parts, entries
        if len(parts) >= folders.max_depth:
            continue
        children = [[*parts, e.name] for e in entries if e.is_dir]
        stack.extend(c for c in reversed(children) if folders.may_hold(c))
