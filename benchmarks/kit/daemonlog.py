"""rig2nwb's JSON log lines, as the benchmarks read them: from a finished child's stderr file
(``read_json_lines``) or live from a running daemon's stderr (``DaemonLog``), and one-line
summaries of what it logged (``one_line``). Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import threading
from datetime import datetime
from pathlib import Path
from typing import IO, Any


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects among a log file's lines (others are skipped)."""
    records: list[dict[str, Any]] = []
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict):
                records.append(rec)
    return records


def one_line(text: str, limit: int = 200) -> str:
    # Captured library warnings (watchdog's repr of its whole watch table) can be pages long.
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


class DaemonLog:
    """Reads the daemon's JSON log lines from its stderr on a thread (a full pipe would block
    the daemon) and keeps a copy on disk."""

    def __init__(self, stream: IO[str], copy_to: Path) -> None:
        self._stream = stream
        self._copy_to = copy_to
        self._lock = threading.Lock()
        self._records: list[dict[str, Any]] = []
        self.watching = threading.Event()
        self.thread = threading.Thread(target=self._read, name="daemon-log", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with open(self._copy_to, "w", encoding="utf-8") as copy:
            for line in self._stream:
                copy.write(line)
                copy.flush()
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(rec, dict):
                    continue
                with self._lock:
                    self._records.append(rec)
                if rec.get("event") == "watching":
                    self.watching.set()

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._records)

    def appended_at(self) -> dict[str, float]:
        """File (rig-relative) -> wall-clock time of its "tiff appended" line."""
        out: dict[str, float] = {}
        for rec in self.records():
            if rec.get("event") == "tiff appended" and "file" in rec and "timestamp" in rec:
                out[str(rec["file"])] = datetime.fromisoformat(str(rec["timestamp"])).timestamp()
        return out
