"""Structured logging: structlog in front, the stdlib ``logging`` machinery behind.

JSON lines when stderr is not a terminal (journald, files, CI), a readable console on a terminal;
under systemd each stream line also starts with its syslog priority (`<3>`), which journald reads.
Library loggers (h5py, hdmf, watchdog, ...) go through the same formatter, so one stream holds
everything. Every line carries ``rig``; stage code binds ``session`` and ``stage``.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import warnings
from collections.abc import MutableMapping
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, cast

import structlog

# Process-wide fields (the rig name): threads do not inherit contextvars, so this is a plain dict.
_STATIC: dict[str, Any] = {}
# The zone of the log's times: the rig's (session.timezone), as in `rig2nwb status` and the page.
_ZONE: list[tzinfo] = [UTC]


def _timestamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``2026-11-21 14:02:01.123+01:00``: the format of every time people read, in the rig's
    zone, with milliseconds."""
    event.setdefault("timestamp", datetime.now(_ZONE[0]).isoformat(sep=" ", timespec="milliseconds"))
    return event


def _add_static(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for k, v in _STATIC.items():
        event.setdefault(k, v)
    return event


_SHARED: list[Any] = [
    _add_static,
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    _timestamp,
    structlog.processors.StackInfoRenderer(),
]


def setup_logging(
    *,
    level: str = "INFO",
    fmt: str = "auto",
    file: Path | None = None,
    max_bytes: int = 10_000_000,
    backups: int = 5,
    rig: str | None = None,
    stream: Any = None,
    stream_tracebacks: bool = True,
    tz: tzinfo | None = None,
) -> None:
    """Configure structlog and the root stdlib logger (idempotent). Without
    ``stream_tracebacks`` the stream (a terminal, for one-shot commands) gets each error's one
    line and the log file its traceback."""
    stream = stream if stream is not None else sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and _isatty(stream))
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    json_renderer = structlog.processors.JSONRenderer()
    console_renderer = structlog.dev.ConsoleRenderer(colors=_isatty(stream))

    def formatter(renderer: Any, tracebacks: bool = True) -> logging.Formatter:
        return structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                *([] if tracebacks else [drop_tracebacks]),
                renderer,
            ],
        )

    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    handler = logging.StreamHandler(stream)
    stream_formatter = formatter(console_renderer if use_console else json_renderer,
                                 stream_tracebacks or file is None)
    if is_journal_stream(stream):
        stream_formatter = JournalPriority(stream_formatter)
    handler.setFormatter(stream_formatter)
    root.addHandler(handler)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(
            file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        fh.setFormatter(formatter(json_renderer))  # files are for machines: always JSON
        root.addHandler(fh)
    root.setLevel(level)
    # Chatty libraries: their warnings matter, their debug output does not.
    for name in ("watchdog", "h5py", "hdmf", "pynwb", "matplotlib", "PIL"):
        logging.getLogger(name).setLevel(max(logging.getLevelName(level), logging.WARNING))
    # tifffile logs every damaged page it meets; rig2nwb reports each damaged file itself, once,
    # with its name and what is wrong, so these lines would only repeat it without the file.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    logging.captureWarnings(True)
    # watchdog's inotify emitter warns when a new folder tree is added while it is being walked;
    # harmless (the periodic rescan covers it) and several KB per line.
    warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning)
    _STATIC.clear()
    if rig:
        _STATIC["rig"] = rig
    _ZONE[0] = tz or UTC


COMMANDS_LOG = "rig2nwb-commands.log"


def drop_tracebacks(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Remove a traceback (``exception``, or a ``traceback`` field) from a line for the
    terminal; the log file keeps it."""
    for key in ("exception", "traceback"):
        if event.pop(key, None):
            event["details"] = "in the log file"
    return event


def log_files() -> list[Path]:
    """The files the root logger writes to (logging.file), if any."""
    return [Path(h.baseFilename) for h in logging.getLogger().handlers
            if isinstance(h, logging.FileHandler)]


class JournalPriority(logging.Formatter):
    """Prefix every line with its syslog priority (``<3>`` error ... ``<7>`` debug), which
    journald strips and stores, so ``journalctl -u rig2nwb -p warning`` filters by level."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{journal_priority(record.levelno)}>"
        # journald reads a stream line by line: a multi-line entry (a console traceback) needs
        # the prefix on each line, or its continuation lines would be logged as info.
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def journal_priority(levelno: int) -> int:
    """syslog priority of a logging level: 2 crit, 3 err, 4 warning, 6 info, 7 debug."""
    for threshold, priority in ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
                                (logging.INFO, 6)):
        if levelno >= threshold:
            return priority
    return 7


def is_journal_stream(stream: Any) -> bool:
    """True if ``stream`` is the journal connection systemd gave us, as sd-daemon documents:
    ``$JOURNAL_STREAM`` holds its ``device:inode``. Checked rather than assumed, because a
    child whose stderr was redirected elsewhere inherits the variable too."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (AttributeError, ValueError, OSError):  # no fd (a StringIO), or no/garbled variable
        return False


# What every part of rig2nwb logs with: structlog's stdlib-backed logger (``info``, ``warning``,
# ``error``, ``bind`` ...), configured by setup_logging.
Logger = structlog.stdlib.BoundLogger


def get_logger(name: str = "rig2nwb", **bound: Any) -> Logger:
    """A logger named ``name`` with ``bound`` fields on every line."""
    return cast(Logger, structlog.get_logger(name).bind(**bound))


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
