"""What a suite2p output folder holds, looked at without loading it: its plane folders, the files
each plane needs, links that are refused, and a fingerprint (names, sizes, mtimes) that says
when the folder changed. Everything through rig.safeopen: no links, nothing that can hang."""

from __future__ import annotations

import os
import re
import stat as stat_mode
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rig2nwb.errors import NpyError, Suite2pProblem, UnsafePickle, UnsafeRigPath
from rig2nwb.rig.safeopen import Entry, link_text, list_rig_dir, lstat_rig
from rig2nwb.suite2p.safepickle import load_npy

REQUIRED_FILES = ("stat.npy", "F.npy", "Fneu.npy", "spks.npy", "iscell.npy")


OPS_SETS = (("ops.npy",), ("db.npy", "settings.npy", "reg_outputs.npy", "detect_outputs.npy"))  # either set


OPS_DESCRIPTION = f"{OPS_SETS[0][0]} (or {', '.join(OPS_SETS[1])})"


# 1.x saves these two next to the plane folders as well; they are the same for every plane.
SHARED_OPS_FILES = ("db.npy", "settings.npy")


PLANE_NAME = re.compile(r"plane(0|[1-9][0-9]*)")


@dataclass(frozen=True)
class RigFiles:
    """Everything read from a suite2p folder goes through rigfs from ``root`` (the rig folder,
    or a suite2p folder configured outside it): links are never followed (a planted
    ``suite2p`` link to a folder elsewhere is not read), FIFOs never opened."""

    root: Path

    def lstat(self, path: Path) -> os.stat_result | None:
        try:
            return lstat_rig(self.root, path)
        except (OSError, UnsafeRigPath):
            return None

    def is_file(self, path: Path) -> bool:
        st = self.lstat(path)
        return st is not None and stat_mode.S_ISREG(st.st_mode)

    def is_dir(self, path: Path) -> bool:
        st = self.lstat(path)
        return st is not None and stat_mode.S_ISDIR(st.st_mode)

    def entries(self, folder: Path) -> list[Entry]:
        try:
            return list_rig_dir(self.root, folder, limit=MAX_FOLDER_ENTRIES)
        except (OSError, UnsafeRigPath):
            return []

    def load(self, path: Path, *, mmap: bool = False) -> np.ndarray:
        try:
            return load_npy(path, mmap=mmap, root=self.root)
        except UnsafePickle as e:  # its problem says what was refused and that nothing ran
            raise RefusedFile(path, e.problem) from None
        except NpyError as e:
            raise Suite2pProblem(path, e.problem) from None

    def load_dict(self, path: Path) -> dict[str, Any]:
        arr = self.load(path)
        if arr.dtype != object or arr.shape != () or not isinstance(arr.item(), dict):
            raise Suite2pProblem(path, f"holds a {arr.dtype} array of shape {arr.shape}, not the dict "
                                       "suite2p saves there")
        return dict(arr.item())


MAX_FOLDER_ENTRIES = 10_000  # a suite2p plane folder holds about 20 files


def rig_files(folder: Path, root: Path | None) -> RigFiles:
    return RigFiles(folder if root is None else root)


def suite2p_link_problem(folder: Path, root: Path) -> str | None:
    """Why ``folder`` is not read (a link, or inside a linked folder), or None."""
    try:
        st = lstat_rig(root, folder)
    except UnsafeRigPath as exc:
        return exc.message
    except OSError:
        return None
    if stat_mode.S_ISLNK(st.st_mode):
        return (f"{folder} is a symbolic link; rig2nwb reads nothing through links in the rig "
                "folder (configure an absolute suite2p.folder for results kept elsewhere)")
    return None


def plane_link_problems(folder: Path, root: Path | None = None) -> list[str]:
    """Plane folders (plane0, ...) that are links: never read, and said so (find_planes skips
    them)."""
    rig = folder if root is None else root
    return [f"{folder / e.name}: {link_text(rig, folder / e.name)}"
            for e in rig_files(folder, root).entries(folder)
            if PLANE_NAME.fullmatch(e.name) is not None and e.is_link]


def find_planes(folder: Path, root: Path | None = None) -> list[tuple[int, Path]]:
    """The plane folders (plane0, plane1, ...) in numeric order; combined/ and anything else are
    skipped, and so are names suite2p never writes (plane01) and links."""
    planes = [(int(m.group(1)), folder / e.name) for e in rig_files(folder, root).entries(folder)
              if (m := PLANE_NAME.fullmatch(e.name)) is not None and e.is_dir]
    return sorted(planes)


def ops_files(plane_dir: Path, files: RigFiles) -> dict[str, Path] | None:
    """The complete 1.x set (name -> file) if there is one, else {"ops.npy": file}, else None."""
    found: dict[str, Path] = {}
    for name in OPS_SETS[1]:
        places = (plane_dir, plane_dir.parent) if name in SHARED_OPS_FILES else (plane_dir,)
        path = next((d / name for d in places if files.is_file(d / name)), None)
        if path is not None:
            found[name] = path
    if len(found) == len(OPS_SETS[1]):
        return found
    if files.is_file(plane_dir / "ops.npy"):
        return {"ops.npy": plane_dir / "ops.npy"}
    return None


def missing_files(plane_dir: Path, root: Path | None = None) -> list[str]:
    """Required files missing from the plane folder, plus the ops set when neither is complete."""
    files = rig_files(plane_dir.parent, root)
    missing = [name + not_file_text(files, plane_dir / name) for name in REQUIRED_FILES
               if not files.is_file(plane_dir / name)]
    if ops_files(plane_dir, files) is None:
        missing.append(OPS_DESCRIPTION)
    return missing


def not_file_text(files: RigFiles, path: Path) -> str:
    """`` (a link)`` / `` (a named pipe)``... for a required file that is there but not a
    regular file (it is never read), "" when it is simply missing."""
    st = files.lstat(path)
    if st is None:
        return ""
    return (" (a symbolic link, not read)" if stat_mode.S_ISLNK(st.st_mode) else
            " (a named pipe, not read)" if stat_mode.S_ISFIFO(st.st_mode) else
            " (not a regular file, not read)")


def fingerprint(folder: Path, root: Path | None = None) -> tuple[tuple[str, int, int], ...]:
    """(path relative to folder, size, mtime_ns) of every regular file in each plane folder and of
    the top-level .npy files, sorted: it changes whenever suite2p (re)writes anything we read. A
    file that vanishes while we look is left out; so are links."""
    files = rig_files(folder, root)
    rows = [(e.name, e.st.st_size, e.st.st_mtime_ns) for e in files.entries(folder)
            if e.is_file and e.name.endswith(".npy")]
    for _, plane_dir in find_planes(folder, root):
        rows += [(f"{plane_dir.name}/{e.name}", e.st.st_size, e.st.st_mtime_ns)
                 for e in files.entries(plane_dir) if e.is_file]
    return tuple(sorted(rows))


class RefusedFile(Suite2pProblem):
    """A file whose pickle was refused: never downgraded to a warning, not even for a fallback."""
