"""Logging as config.toml says ([logging]): level, format, file and rotation, the rig's name
and time zone on every line. The machinery itself is rig2nwb.logs, below every layer."""

from __future__ import annotations

from rig2nwb.config.schema import Config
from rig2nwb.logs import COMMANDS_LOG, setup_logging


def setup_from_config(cfg: Config, *, one_shot: bool = False) -> None:
    """Logging as the config says. ``one_shot`` (convert, attach, demo): the terminal gets each
    error's one line, the traceback goes to ``logging.file``, or to
    ``<state.folder>/rig2nwb-commands.log`` when none is configured."""
    lc = cfg.logging
    file = lc.file
    if one_shot and file is None:
        file = cfg.state.folder / COMMANDS_LOG
    setup_logging(level=lc.level, fmt=lc.format, file=file, max_bytes=lc.max_bytes,
                  backups=lc.backups, rig=cfg.rig.name, stream_tracebacks=not one_shot, tz=cfg.tz)
