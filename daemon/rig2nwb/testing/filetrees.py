"""Files and folder trees: checksums (to show that nothing changed) and removing trees too deep
for recursive removal."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by path relative to it."""
    return {str(p.relative_to(root)): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def remove_deep(top: Path) -> None:
    """Remove a folder tree of any depth without recursion (shutil.rmtree, and pytest's own
    cleanup of old temporary folders, recurse once per level and fail on a planted tree 1,200
    levels deep): every nested folder is first moved up beside ``top``, one rename at a time."""
    parent = top.parent
    stack, n = [top], 0
    while stack:
        folder = stack.pop()
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue
        for name in names:
            path = folder / name
            if path.is_dir() and not path.is_symlink():
                n += 1
                flat = parent / f".{top.name}.deep-{n}"
                os.rename(path, flat)
                stack.append(flat)
            else:
                path.unlink()
        folder.rmdir()
