"""A stand-in for suite2p in the job tests: ``python -m rig2nwb.testing.stand_in_job --out
FOLDER --frames N --ly Y --lx X [--rois R] [--sleep S] [--exit CODE] [--runs FILE]``.

It does what the job manager must cope with, on command: runs for a while (printing progress
lines, some rewritten with carriage returns as suite2p's progress bars are), then writes a
deterministic suite2p 1.x folder (testing.suite2p_folders.make_synthetic_folder, which a test
can write again to know what the NWB file must hold), or fails with an exit status and a last
line naming why. ``--runs`` gets one line per start: how tests count that a job ran once.
The real suite2p run is tested by tests/e2e/test_suite2p_job.py with --run-suite2p.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from rig2nwb.testing.suite2p_folders import make_synthetic_folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--frames", type=int, required=True)
    p.add_argument("--ly", type=int, required=True)
    p.add_argument("--lx", type=int, required=True)
    p.add_argument("--rois", type=int, default=5)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--exit", type=int, default=0)
    p.add_argument("--runs", type=Path)
    p.add_argument("--fs", default="")
    a = p.parse_args(argv)
    if a.runs is not None:
        with open(a.runs, "a") as f:
            f.write(f"{os.getpid()} {a.out} fs={a.fs}\n")
    print(f"stand-in suite2p: {a.frames} frames of {a.ly}x{a.lx} -> {a.out}", flush=True)
    deadline = time.monotonic() + a.sleep
    step = 0
    while time.monotonic() < deadline:
        step += 1
        print(f"\rregistering: {step} blocks", end="", flush=True)
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    print(flush=True)
    if a.exit:
        print(f"stand-in suite2p: giving up with exit status {a.exit} (as asked)", flush=True)
        return int(a.exit)
    make_synthetic_folder(a.out, n_rois=a.rois, n_frames=a.frames, Ly=a.ly, Lx=a.lx, style="1.x")
    print("stand-in suite2p: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
