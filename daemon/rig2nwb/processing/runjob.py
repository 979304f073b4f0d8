"""The local job wrapper: ``python -m rig2nwb.processing.runjob JOB_FOLDER``.

Started detached by the daemon (its own session, so it outlives a daemon restart and the next
daemon adopts it), or by the companion systemd unit ``rig2nwb-suite2p@.service`` when the daemon
runs under systemd. It lowers its own priority (nice 19; the idle I/O class on Linux), records
its pid and start time in the job folder, runs the job's command with its output in ``log``,
passes a SIGTERM on to the command, and writes the command's exit status to ``exit_code``: what
the daemon reads once the process is gone."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

NICE = 19


def _lower_priority() -> None:
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
    with contextlib.suppress(Exception):  # psutil: the idle I/O class (Linux), or low (Windows)
        import psutil

        proc = psutil.Process()
        if hasattr(psutil, "IOPRIO_CLASS_IDLE"):
            proc.ionice(psutil.IOPRIO_CLASS_IDLE)
        elif hasattr(psutil, "IOPRIO_LOW"):
            proc.ionice(psutil.IOPRIO_LOW)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m rig2nwb.processing.runjob JOB_FOLDER", file=sys.stderr)
        return 2
    folder = Path(args[0])
    spec = json.loads((folder / "job.json").read_text())
    _lower_priority()
    _write(folder / "pid", str(os.getpid()))
    _write(folder / "started", f"{time.time():.3f}")
    with open(folder / "log", "ab") as log:
        try:
            child = subprocess.Popen(spec["argv"], stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=folder)
        except OSError as exc:
            log.write(f"rig2nwb: cannot start {spec['argv'][0]!r}: {exc}\n".encode())
            _write(folder / "exit_code", "127")
            return 127

        def forward(signum: int, frame: FrameType | None) -> None:
            with contextlib.suppress(OSError):
                child.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        code = child.wait()
    code = 128 - code if code < 0 else code  # killed by a signal: as a shell reports it
    _write(folder / "exit_code", str(code))
    return code


if __name__ == "__main__":
    sys.exit(main())
