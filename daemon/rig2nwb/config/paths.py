"""Where the files for people live, and how they are replaced.

Everything an experimenter opens from a network share sits in the output folder, beside the NWB
files, so one share gives both:

- ``rig2nwb-status.html`` and its twin ``rig2nwb-status.json``: every session, its state and
  problems;
- ``rig2nwb-status/<subject>_<session>.summary.png``: the picture of a finished session, and
  ``...thumb.png``, the mean image of its first plane, small (the page's thumbnail);
- ``rig2nwb-status/<subject>_<session>.preview.png``: the live preview while it is acquiring.

Files are replaced atomically (a temporary file in the same folder, then ``os.replace``), so a
browser or a file manager never sees half a page or half a picture.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import quote

from rig2nwb.config.schema import Config

STATUS_HTML = "rig2nwb-status.html"
STATUS_JSON = "rig2nwb-status.json"
PICTURE_FOLDER = "rig2nwb-status"


def status_html(cfg: Config) -> Path:
    return cfg.output.folder / STATUS_HTML


def status_json(cfg: Config) -> Path:
    return cfg.output.folder / STATUS_JSON


def picture_folder(cfg: Config) -> Path:
    return cfg.output.folder / PICTURE_FOLDER


def summary_png(cfg: Config, subject: str, session: str) -> Path:
    """The per-session summary picture (made when the session finishes and after suite2p)."""
    return picture_folder(cfg) / f"{_safe(subject, '_')}_{_safe(session)}.summary.png"


def thumbnail_of(summary: Path) -> Path:
    """The small mean image drawn with a summary picture (what the status page shows)."""
    return summary.with_name(summary.name.removesuffix(".summary.png") + ".thumb.png")


def preview_png(cfg: Config, subject: str, session: str) -> Path:
    """The live preview (mean of the most recent frames) while the session is acquiring."""
    return picture_folder(cfg) / f"{_safe(subject, '_')}_{_safe(session)}.preview.png"


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


def display_path(cfg: Config, path: Path) -> str:
    """``path`` as people should see it: below output.folder, with notify.link_prefix in place
    of the folder (a share such as \\\\server\\nwb, or an https URL); else absolute."""
    prefix = cfg.notify.link_prefix
    try:
        rel = PurePosixPath(path.resolve().relative_to(cfg.output.folder.resolve()).as_posix())
    except (ValueError, OSError):
        return str(path.absolute())
    if not prefix:
        return str(path.absolute())
    if "://" in prefix:
        return prefix.rstrip("/") + "/" + quote(rel.as_posix())
    if "\\" in prefix:
        return str(PureWindowsPath(prefix.rstrip("\\") + "\\", *rel.parts))
    return prefix.rstrip("/") + "/" + rel.as_posix()


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step; readers see the old or the new file, never a
    mix. Created with the umask's mode (file_mode). Not fsynced: these files are rebuilt from
    the ledger whenever they are lost."""
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


def _safe(name: str, also: str = "") -> str:
    """Subject and session names are already checked to be safe path parts by the watcher; this
    keeps a stray separator from escaping the folder. Percent-encoding (``%`` included) keeps
    distinct names distinct: ``C:`` and ``C_`` must not share a picture. The subject also
    encodes ``_`` (``also``), the separator before the session: ``m1_x``/``s1`` and
    ``m1``/``x_s1`` get two pictures, not one."""
    unsafe = '/\\:*?"<>|%\0' + also
    return "".join(f"%{ord(c):02X}" if c in unsafe or c < " " else c for c in name) or "%00"
