"""Where the files for people live, and how they are replaced.

Everything an experimenter opens from a network share sits in the output folder, beside the NWB
files, so one share gives both:

- ``rig2nwb-status.html`` and its twin ``rig2nwb-status.json``: every session, its state and
  problems;
- ``rig2nwb-status/<subject>_<session>.summary.png``: the picture of a finished session, and
  ``...thumb.png``, the mean image of its first plane, small (the page's thumbnail);
- ``rig2nwb-status/<subject>_<session>.preview.png``: the live preview while it is acquiring.

Files are replaced atomically (fsutil.write_atomic), so a browser or a file manager never sees
half a page or half a picture. The state folder holds the ledger and the lock.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import quote

from rig2nwb.config.schema import Config
from rig2nwb.errors import UsageError

STATUS_HTML = "rig2nwb-status.html"
STATUS_JSON = "rig2nwb-status.json"
PICTURE_FOLDER = "rig2nwb-status"


def ledger_path(cfg: Config) -> Path:
    """The ledger: what was appended, committed and reported, per session."""
    return cfg.state.folder / "ledger.sqlite"


def lock_path(cfg: Config) -> Path:
    """Held by the one process that writes the ledger and the NWB files (daemon or command)."""
    return cfg.state.folder / "rig2nwb.lock"


def heartbeat_path(cfg: Config) -> Path:
    """The daemon's heartbeat (service.heartbeat): read by `rig2nwb lab`, never locked."""
    return cfg.state.folder / "heartbeat.json"


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


def _safe(name: str, also: str = "") -> str:
    """Subject and session names are already checked to be safe path parts by the watcher; this
    keeps a stray separator from escaping the folder. Percent-encoding (``%`` included) keeps
    distinct names distinct: ``C:`` and ``C_`` must not share a picture. The subject also
    encodes ``_`` (``also``), the separator before the session: ``m1_x``/``s1`` and
    ``m1``/``x_s1`` get two pictures, not one."""
    unsafe = '/\\:*?"<>|%\0' + also
    return "".join(f"%{ord(c):02X}" if c in unsafe or c < " " else c for c in name) or "%00"


def resolve_session_folder(cfg: Config, folder: Path) -> Path:
    """Accept a folder given absolute, relative to the working folder, or relative to rig.root."""
    for candidate in (folder, cfg.rig.root / folder):
        if candidate.is_dir():
            resolved = candidate.resolve()
            try:
                inside = resolved.relative_to(cfg.rig.root.resolve())
            except ValueError:
                raise UsageError(f"{folder} is not inside rig.root ({cfg.rig.root}); "
                                 "patterns are matched relative to rig.root") from None
            # Spelled from rig.root (which may itself be a link, the admin's choice): the rig
            # is then read from there, through rigfs, never through a link below it.
            return cfg.rig.root / inside
    raise UsageError(f"{folder}: no such folder")
