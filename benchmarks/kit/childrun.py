"""Run a benchmarked command in a child process and measure it: wall time, CPU time and the peak
RSS of its process tree; and say in one line why a measured child failed.

Standard library only: the scripts that import it also run in other venvs (benchmarks/.venv-peers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
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


def measure(cmd: Sequence[str], run_dir: Path, timeout: float,
            env: Mapping[str, str] | None = None) -> Measured:
    """Run ``cmd`` through the rusage wrapper; its stdout/stderr go to files in ``run_dir``.
    ``env``: the command's environment (default: this process's); benchmark code started with
    ``python -m benchmarks...`` needs ``paths.module_env()``."""
    sync_disks()
    result = run_dir / "rusage.json"
    with open(run_dir / "stdout.log", "wb") as out, open(run_dir / "stderr.log", "wb") as err:
        # Own session: on a timeout the whole group (wrapper + command) can be killed.
        proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, str(result), *cmd],
                                stdout=out, stderr=err, start_new_session=True, env=env)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return Measured(None, timeout, 0, 0.0)
    data = json.loads(result.read_text())
    return Measured(int(data["rc"]), float(data["wall"]), int(data["maxrss"]), float(data["cpu"]))


# --- why a child failed ---------------------------------------------------------------------------


def last_lines(path: Path, n: int = 3) -> str:
    """The last ``n`` lines of a text file, joined with " | " ("" if it does not exist)."""
    if not path.exists():
        return ""
    lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return " | ".join(lines[-n:])


def error_line(path: Path) -> str:
    """The line of a failed run's stderr that most likely says why: its last plain-text line (a
    traceback's exception, rig2nwb's "rig2nwb: ..." message), else its last JSON log line."""
    if not path.exists():
        return ""
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()
             if ln.strip()]
    plain = [ln for ln in lines if not ln.startswith("{")]
    if plain:
        return plain[-1]
    if not lines:
        return ""
    try:
        rec = json.loads(lines[-1])
    except ValueError:
        return lines[-1]
    if not isinstance(rec, dict):
        return lines[-1]
    extra = " ".join(f"{k}={rec[k]}" for k in ("error", "reason", "detail") if k in rec)
    return f"{rec.get('event', '')} {extra}".strip()


def failure_text(m: Measured, run_dir: Path, *, tail: int | None = None) -> str:
    """'FAILED timeout: ...' / 'FAILED rc=N: ...' for a measured child whose stderr went to
    ``run_dir/stderr.log``: its ``error_line``, or with ``tail`` its last ``tail`` lines."""
    why = "timeout" if m.rc is None else f"rc={m.rc}"
    stderr = run_dir / "stderr.log"
    text = error_line(stderr) if tail is None else last_lines(stderr, tail)
    return f"FAILED {why}: {text[:300]}"
