"""One job's folder in the state folder (``jobs/<token>/``): what it runs, its log, and the
files its wrapper leaves (``started``, ``pid``, ``exit_code``). The folder is the job's own
record of how it went: it still tells after the scheduler forgot the job (SLURM's MinJobAge)
or the daemon that started it died."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from rig2nwb.fsutil import write_atomic

LOG_TAIL_BYTES = 64 * 1024
N = TypeVar("N", int, float)


@dataclass(frozen=True)
class FolderStatus:
    started_at: float | None  # the wrapper started the command
    pid: int | None  # the local wrapper's process
    exit_code: int | None  # the command ended (its exit status)


class JobFolder:
    def __init__(self, state_folder: Path, token: str) -> None:
        self.path = state_folder / "jobs" / token
        self.token = token

    @property
    def log(self) -> Path:
        return self.path / "log"

    @property
    def spec(self) -> Path:
        return self.path / "job.json"

    @property
    def script(self) -> Path:
        return self.path / "run.sh"

    def write(self, argv: list[str], *, title: str) -> None:
        """The job's spec (for the local wrapper) and batch script (for SLURM), before it is
        submitted. ``title`` names the session in both."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.spec, json.dumps({"argv": argv, "title": title,
                                            "created": time.time()}, indent=1).encode())
        here = shlex.quote(str(self.path))
        script = "\n".join([
            "#!/bin/sh",
            f"# rig2nwb suite2p job {self.token}: {title}",
            f"cd {here} || exit 111",
            "date +%s > started.tmp && mv started.tmp started",
            shlex.join(argv) + " < /dev/null",
            "code=$?",
            'echo "$code" > exit_code.tmp && mv exit_code.tmp exit_code',
            'exit "$code"',
            ""])
        write_atomic(self.script, script.encode())
        os.chmod(self.script, 0o755)

    def status(self) -> FolderStatus:
        return FolderStatus(_number(self.path / "started", float),
                            _number(self.path / "pid", int),
                            _number(self.path / "exit_code", int))

    def log_tail(self, lines: int = 20) -> list[str]:
        return log_tail(self.log, lines)


def log_tail(path: Path, lines: int = 20) -> list[str]:
    """The last lines of a job's log (at most 64 KB read, whatever its size)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    # Progress bars rewrite their line with carriage returns: keep what was shown last.
    shown = [ln.rsplit("\r", 1)[-1].rstrip() for ln in text.split("\n")]
    return [ln for ln in shown if ln][-lines:]


def _number(path: Path, kind: type[N]) -> N | None:
    with contextlib.suppress(OSError, ValueError):
        return kind(path.read_text().split()[0])
    return None
