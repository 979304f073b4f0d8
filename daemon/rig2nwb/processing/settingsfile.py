"""Which suite2p settings file a session's job gets ({settings}): a ``rig2nwb.toml`` sidecar's
``[suite2p] settings`` (per subject or session: relative to the sidecar's folder, and inside the
rig folder), else config.toml's ``suite2p.run.settings``, else none (suite2p's defaults)."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from rig2nwb.config.schema import Config
from rig2nwb.errors import MetadataProblem
from rig2nwb.rig.sidecars import load_metadata


def settings_file(cfg: Config, tiff_folder: Path | None) -> Path | None:
    """The settings file for a session whose TIFFs are in ``tiff_folder`` (None: none).
    Raises MetadataProblem when a sidecar names a file outside the rig folder."""
    default = cfg.suite2p.run.settings
    if tiff_folder is None:
        return default
    meta = load_metadata(cfg, tiff_folder)
    value = meta.suite2p.settings
    origin = meta.origins.get("suite2p.settings")
    if not value or origin in (None, "config.toml"):
        return default
    base = cfg.rig.root / PurePosixPath(origin).parent
    path = Path(os.path.normpath(base / value))
    root = Path(os.path.normpath(cfg.rig.root))
    if not path.is_relative_to(root):
        raise MetadataProblem(origin, [f"suite2p.settings: {value!r} lies outside the rig "
                                       "folder; a sidecar may name only a file inside it "
                                       "(config.toml's suite2p.run.settings may be anywhere)"])
    return path
