"""The rig index: what the rig folder holds right now, as far as the layout patterns care.

It walks the folder (full scans, watcher events, per-tick restats of what is still pending) and
keeps one :class:`Obs` per TIFF the frames pattern takes and one :class:`LabFiles` per session.
It decides nothing about sessions and writes no ledger: what it notices that a person should
hear of (an unreachable share, a name that is a link or a FIFO) goes to its :class:`RigEvents`.

The file-system calls and the clock are parameters with real defaults (as watchdog's
``DirectorySnapshot(stat=..., listdir=...)``), so the index runs against a fake tree in tests.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Literal, Protocol

from rig2nwb.config.schema import Config
from rig2nwb.core.names import is_safe_name, printable
from rig2nwb.core.runorder import RunPosition, run_position
from rig2nwb.errors import UnsafeRigPath
from rig2nwb.progress import beat
from rig2nwb.rig.safeopen import (
    Entry,
    FileId,
    FolderFilter,
    link_text,
    list_rig_dir,
    lstat_rig,
    walk_rig,
)

Key = tuple[str, str]  # (subject, session)
LabKind = Literal["scan", "trial", "marker"]


@dataclass
class Obs:
    """What the index knows about one TIFF in the rig folder."""

    rel: str
    key: Key
    site: str
    position: RunPosition
    size: int
    mtime_ns: int
    changed_at: float  # clock time of the last observed size/mtime change
    closed: bool = False
    dev: int = 0
    ino: int = 0

    @property
    def file_id(self) -> FileId:
        """The version of the file that was classified: what is read must be this file."""
        return FileId(self.dev, self.ino, self.size, self.mtime_ns)


@dataclass(frozen=True)
class LabFiles:
    """Rig-relative paths of a session's lab files ("" while absent)."""

    scan: str = ""
    trial: str = ""
    marker: str = ""


class RigEvents(Protocol):
    """What the index tells its owner (the engine reports these to people)."""

    def unreachable(self, root: Path) -> None:
        """rig.root cannot be reached (called once, when it goes)."""

    def reachable(self, root: Path) -> None:
        """rig.root is back (called once, after it was unreachable)."""

    def not_regular(self, rel: str, message: str, values: dict[str, str] | None) -> None:
        """A name a pattern takes is a link, FIFO, device...: never read. ``values`` are the
        pattern's fields (subject, session...) when a pattern took it."""

    def regular(self, rel: str) -> None:
        """A name is (again) a regular file, or gone."""

    def forgotten(self, rel: str) -> None:
        """A TIFF changed or left the index: anything cached about its contents is stale."""


def _walk(root: Path, start: Path, folders: FolderFilter, stop: Callable[[], bool]
          ) -> Iterator[tuple[list[str], list[Entry]]]:
    return walk_rig(root, start, folders, stop=stop, on_folder=beat)


def _root_state(root: Path) -> tuple[bool, bool]:
    """(is a folder, is a mount point) of rig.root; OSError counts as not there."""
    try:
        return root.is_dir(), os.path.ismount(root)
    except OSError:
        return False, False


class RigIndex:
    """TIFFs and lab files of the rig folder, refreshed by scans, events and restats.

    ``dirty`` collects the sessions whose files changed (the engine plans them next) and
    ``changed`` the TIFFs new or changed since the engine last looked."""

    def __init__(self, cfg: Config, events: RigEvents, *, scope: Path | None = None,
                 stop: Callable[[], bool] = lambda: False,
                 lstat: Callable[[Path, str], os.stat_result] = lstat_rig,
                 listdir: Callable[..., list[Entry]] = list_rig_dir,
                 walk: Callable[[Path, Path, FolderFilter, Callable[[], bool]],
                                Iterable[tuple[list[str], list[Entry]]]] = _walk,
                 root_state: Callable[[Path], tuple[bool, bool]] = _root_state,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = cfg.rig.root
        self.default_subject = cfg.rig.subject
        self.frames_pat = cfg.frames_pattern
        kinds: list[tuple[LabKind, str]] = [("scan", cfg.rig.scan_file),
                                            ("trial", cfg.rig.trial_file),
                                            ("marker", cfg.rig.end_marker)]
        self.lab_pats = [(kind, cfg.pattern(text)) for kind, text in kinds if text]
        self.folders = FolderFilter([cfg.rig.frames, *(text for text in (
            cfg.rig.scan_file, cfg.rig.trial_file, cfg.rig.end_marker) if text)])
        self.scope = scope  # convert: only this folder
        self.events = events
        self.stop = stop
        self._lstat, self._listdir, self._walk, self._root_state, self._clock = (
            lstat, listdir, walk, root_state, clock)
        self.tiffs: dict[str, Obs] = {}
        self.lab: dict[Key, LabFiles] = {}
        self.dirty: set[Key] = set()
        self.changed: set[str] = set()
        self.root_ok = True
        self.root_was_mount = False  # rig.root was a mount point when last reachable

    def lab_of(self, key: Key) -> LabFiles:
        return self.lab.get(key, LabFiles())

    def now(self) -> float:
        return self._clock()

    # --- whole-folder scans ----------------------------------------------------------------

    def full_scan(self) -> set[str] | None:
        """Walk the rig folder and reconcile what is there with what was known. Returns every
        name seen that a pattern could take, or None when the walk did not complete (rig folder
        unreachable, or asked to stop: a partial walk must not make files look deleted)."""
        if not self.reachable():
            if self.root_ok:
                self.events.unreachable(self.root)
            self.root_ok = False
            return None  # never take an unmounted share for deleted files
        if not self.root_ok:
            self.events.reachable(self.root)
            self.root_ok = True
        start = self.scope or self.root
        seen: set[str] = set()
        present: set[str] = set()
        lab: dict[Key, LabFiles] = {}
        # Iterative, bounded by what the patterns can reach, never through links (safeopen): a
        # planted tree 1,200 folders deep or a link to elsewhere costs nothing.
        for parts, entries in self._walk(self.root, start, self.folders, self.stop):
            base = "/".join(parts)
            for entry in entries:
                if entry.is_dir:
                    continue
                rel = f"{base}/{entry.name}" if base else entry.name
                present.add(rel)
                obs = self.tiffs.get(rel)
                if obs is not None and entry.is_file and (
                        entry.st.st_size, entry.st.st_mtime_ns, entry.st.st_ino) == (
                        obs.size, obs.mtime_ns, obs.ino):
                    # A known TIFF that did not change needs nothing more (a rig folder of
                    # 10,000 old files is rescanned every 30 s).
                    seen.add(rel)
                    continue
                if self.classify(rel, entry.st, lab) == "tiff":
                    seen.add(rel)
        if self.stop():
            return None
        for rel in [r for r in self.tiffs if r not in seen]:
            self.forget(rel)
        if self.scope is not None:
            self._find_lab_files(lab)
        self._set_lab(lab)
        return present

    def reachable(self) -> bool:
        """Whether rig.root is there. A share unmounted from rig.root itself leaves an empty
        folder behind (found by test_rig_folder_vanishes_and_returns[mountpoint]: every file
        looked deleted), so once rig.root was seen as a mount point it must be one again."""
        is_dir, mounted = self._root_state(self.root)
        if not is_dir:
            return False
        self.root_was_mount = self.root_was_mount or mounted
        return mounted or not self.root_was_mount

    def _set_lab(self, lab: dict[Key, LabFiles]) -> None:
        for key in set(lab) | set(self.lab):
            if lab.get(key, LabFiles()) != self.lab.get(key, LabFiles()):
                self.dirty.add(key)
        self.lab = lab

    def _find_lab_files(self, lab: dict[Key, LabFiles]) -> None:
        """For convert: look up the lab files of the sessions in scope by their patterns (a
        wildcard in a lab-file pattern is listed in its own folder only)."""
        for obs in {o.key: o for o in self.tiffs.values()}.values():
            values = {"subject": obs.key[0], "session": obs.key[1], "site": obs.site}
            if not all(is_safe_name(v) for v in values.values() if v):
                continue  # never build a path from an unsafe name (reported elsewhere)
            for _, pat in self.lab_pats:
                rendered = PurePosixPath(pat.render(**values))
                folder = rendered.parent.as_posix()
                if any(c in folder for c in "*?["):
                    continue
                try:
                    entries = self._listdir(self.root, folder if folder != "." else self.root)
                except (OSError, UnsafeRigPath):
                    continue
                for entry in entries:
                    rel = entry.name if folder == "." else f"{folder}/{entry.name}"
                    if not entry.is_dir:
                        self.classify(rel, entry.st, lab)

    # --- single names ------------------------------------------------------------------------

    def observe(self, path: Path, kind: str) -> None:
        """One watcher event (created, closed, deleted; a move arrives as deleted + created)."""
        try:
            rel = path.relative_to(self.root).as_posix()
        except ValueError:
            return
        if kind == "deleted":
            if rel in self.tiffs:
                self.forget(rel)
            return
        try:
            st = self._lstat(self.root, rel)
        except (OSError, UnsafeRigPath):
            if rel in self.tiffs:
                self.forget(rel)
            return
        lab = dict(self.lab)
        if self.classify(rel, st, lab, closed=(kind == "closed")) == "lab":
            self._set_lab(lab)

    def classify(self, rel: str, st: os.stat_result, lab: dict[Key, LabFiles], *,
                 closed: bool = False) -> Literal["tiff", "lab"] | None:
        """``st`` is the file's lstat: links and other non-regular files are never taken."""
        values = self.frames_pat.match(rel)
        if values is not None:
            if not stat.S_ISREG(st.st_mode):
                self._not_regular(rel, st, values)
                return None
            self.events.regular(rel)
            self._update_tiff(rel, st, values, closed)
            return "tiff"
        for kind, pat in self.lab_pats:
            v = pat.match(rel)
            if v is not None:
                if not stat.S_ISREG(st.st_mode):
                    self._not_regular(rel, st, v)
                    return None
                self.events.regular(rel)
                key = (v.get("subject") or self.default_subject, v["session"])
                lab[key] = replace(lab.get(key, LabFiles()), **{kind: rel})
                return "lab"
        return None

    def _not_regular(self, rel: str, st: os.stat_result, values: dict[str, str]) -> None:
        if stat.S_ISLNK(st.st_mode):
            what = link_text(self.root, self.root / rel)
        else:
            kind = "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
            what = f"is {kind}; rig2nwb reads only regular files in the rig folder"
        if rel in self.tiffs:
            self.forget(rel)
        self.events.not_regular(rel, f"{printable(rel)}: {what}", values)

    def _update_tiff(self, rel: str, st: os.stat_result, values: dict[str, str],
                     closed: bool) -> None:
        key = (values.get("subject") or self.default_subject, values["session"])
        old = self.tiffs.get(rel)
        now = self._clock()
        if old is None:
            self.tiffs[rel] = Obs(rel, key, values.get("site", ""), run_position(rel), st.st_size,
                                  st.st_mtime_ns, now, closed, st.st_dev, st.st_ino)
            self.dirty.add(key)
            self.changed.add(rel)
        elif (old.size, old.mtime_ns, old.dev, old.ino) != (
                st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino):
            old.size, old.mtime_ns, old.changed_at, old.closed = (
                st.st_size, st.st_mtime_ns, now, closed)
            old.dev, old.ino = st.st_dev, st.st_ino
            self.events.forgotten(rel)
            self.dirty.add(key)
            self.changed.add(rel)
        elif closed and not old.closed:
            old.closed = True
            self.dirty.add(key)

    def forget(self, rel: str) -> None:
        obs = self.tiffs.pop(rel, None)
        self.events.forgotten(rel)
        if obs is not None:
            self.dirty.add(obs.key)

    def touched(self, rel: str) -> None:
        """The file changed under a reader: its settle period starts again."""
        obs = self.tiffs.get(rel)
        if obs is not None:
            obs.changed_at = self._clock()

    # --- per-tick refresh ------------------------------------------------------------------------

    def restat_pending(self, pending: Iterable[str], unfinished: set[Key]) -> None:
        """Refresh what the planner waits on, every tick, without relying on events: the files
        not yet appended (``pending``: completion by 'stable' needs fresh sizes) and the folders
        of sessions still acquiring (``unfinished``: a network share raises no event when
        another host adds a file). Nothing while the rig folder is unreachable: its files are
        not deleted (full_scan reports the outage)."""
        if not self.root_ok or not self.reachable():
            return
        for rel in pending:
            values = self.frames_pat.match(rel)
            if rel in self.tiffs and values is not None:
                try:
                    st = self._lstat(self.root, rel)
                except (OSError, UnsafeRigPath):
                    continue  # gone: the next full scan (or its event) says so
                if stat.S_ISREG(st.st_mode):
                    self._update_tiff(rel, st, values, closed=False)
                else:
                    self._not_regular(rel, st, values)
        folders = {PurePosixPath(o.rel).parent.as_posix() for o in self.tiffs.values()
                   if o.key in unfinished} if unfinished else set()  # idle: no walk over all files
        for folder in folders:
            def unknown(name: str, folder: str = folder) -> bool:
                return f"{folder}/{name}" not in self.tiffs

            try:  # only names not known yet cost an lstat (this runs every tick)
                entries = self._listdir(self.root, folder, only=unknown)
            except (OSError, UnsafeRigPath):
                continue  # gone or unreachable: the next full scan sorts it out
            for entry in entries:
                rel = f"{folder}/{entry.name}"
                if rel not in self.tiffs and not entry.is_dir and self.frames_pat.match(rel):
                    self.classify(rel, entry.st, {})

    def pattern_values(self, rel: str) -> dict[str, str] | None:
        """The fields of whichever pattern takes ``rel`` (frames first)."""
        return self.frames_pat.match(rel) or next(
            (v for _, pat in self.lab_pats if (v := pat.match(rel)) is not None), None)
