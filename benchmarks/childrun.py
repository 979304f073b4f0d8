"""Run a benchmarked command in a child process and measure it: wall time, CPU time and the peak
RSS of its process tree. Standard library only: benchmarks run it from other venvs too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Runs one command and records the peak RSS of its process tree. RUSAGE_CHILDREN's ru_maxrss is
# the maximum over every waited-for descendant, so each measured command gets a fresh wrapper
# whose only child is that command. Wall time is taken here too, so it excludes the wrapper's
# own start-up. argv: [-c, result.json, command...].
_WRAPPER = """\
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "wall": wall, "maxrss": ru.ru_maxrss * scale,
               "cpu": ru.ru_utime + ru.ru_stime}, f)
"""


@dataclass(frozen=True)
class Measured:
    rc: int | None  # None: killed after the timeout
    wall: float
    peak_rss: int  # bytes
    cpu: float  # user + system seconds of the command


def sync_disks() -> None:
    # Dirty pages left by the previous step (generated TIFFs, deleted outputs) would otherwise be
    # written back during the next timed run.
    if hasattr(os, "sync"):
        os.sync()
    else:  # pragma: no cover - not a Unix
        subprocess.run(["sync"], check=False)


def measure(cmd: Sequence[str], run_dir: Path, timeout: float) -> Measured:
    """Run ``cmd`` through the rusage wrapper; its stdout/stderr go to files in ``run_dir``."""
    sync_disks()
    result = run_dir / "rusage.json"
    with open(run_dir / "stdout.log", "wb") as out, open(run_dir / "stderr.log", "wb") as err:
        # Own session: on a timeout the whole group (wrapper + command) can be killed.
        proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, str(result), *cmd],
                                stdout=out, stderr=err, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return Measured(None, timeout, 0, 0.0)
    data = json.loads(result.read_text())
    return Measured(int(data["rc"]), float(data["wall"]), int(data["maxrss"]), float(data["cpu"]))
