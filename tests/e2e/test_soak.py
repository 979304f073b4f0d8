"""The long run: a rig day compressed in time, converted by a real daemon child process.

A rig thread writes many sessions one after the other (small 32x32 frames, few pages a file, so
disk and time stay small) while ``rig2nwb run`` (supervisor + worker) converts them. The worker's
RSS, open file descriptors and threads are measured (psutil) once the first session is finished
(everything imported, caches warm) and again after the last one. Asserted: every session
finished with every frame exactly once, bit-identical; the worker was never restarted; fds and
threads do not grow with sessions; RSS stays flat.

RSS bound: the worker holds at most one open NWB file and one TIFF at a time, so nothing it keeps
should scale with the number of sessions; 40 MB of slack covers allocator fragmentation and HDF5's
free lists (a leak of one NWB handle or its chunk cache per session, ~1 MB each, over 40+ sessions
in the slow variant would cross it). fds and threads may move by a handful (a validation child's
pipe, the watcher's per-folder watches of the current session), never by one per session.

CI variant: 8 sessions x 8 files (each file costs ~0.3 s: settle, inspect, commit). Slow
variant (``--run-slow``): 48 sessions x 60 files (an 8-hour day as 48 ten-minute sessions,
2880 files).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import numpy as np
import psutil
import pytest

from rig2nwb.testing.figures import record
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.nwbfiles import nwb_frames
from rig2nwb.testing.tiffs import random_frames, write_tiff
from rig2nwb.testing.waits import wait_for

SHAPE = (32, 32)
PAGES = 4  # pages a file
RSS_SLACK_MB = 40.0
FD_SLACK = 8
THREAD_SLACK = 4

SOAK_CONFIG: dict[str, dict[str, Any]] = {
    "completion": {"settle_seconds": 0.2, "session_idle_seconds": 1.0},
    "append": {"batch_frames": 16, "commit_every_frames": 32},
    "watch": {"rescan_seconds": 5.0},
}


def frames_for(session: int, i: int) -> np.ndarray:
    return random_frames(PAGES, shape=SHAPE, seed=session * 10_000 + i)


def statuses(lab: Lab) -> list[dict[str, Any]]:
    proc = lab.run_cli("status", "--json", timeout=120)
    return json.loads(proc.stdout) if proc.returncode == 0 else []  # type: ignore[no-any-return]


def worker(daemon_pid: int) -> psutil.Process:
    children = [c for c in psutil.Process(daemon_pid).children() if "--worker" in c.cmdline()]
    assert len(children) == 1, children
    return children[0]


def measure(p: psutil.Process) -> tuple[float, int, int]:
    return p.memory_info().rss / 2**20, p.num_fds(), p.num_threads()


def soak(lab: Lab, sessions: int, files: int) -> None:
    def name(s: int) -> str:
        return f"s{s + 1:03d}"

    def rig() -> None:
        for s in range(sessions):
            for i in range(files):
                write_tiff(lab.session_dir(name(s)) / f"{name(s)}_{i + 1:05d}.tif", frames_for(s, i))
            lab.lab_files(name(s), n_frames=files * PAGES)
            if s == 0:
                first_written.set()
                start_measured.wait(120)  # the baseline is taken with one session finished

    first_written, start_measured = threading.Event(), threading.Event()
    daemon = lab.start_daemon()
    t0 = time.monotonic()
    try:
        threading.Thread(target=rig, daemon=True).start()
        assert first_written.wait(120)
        wait_for(lambda: any(r["state"] == "finished" for r in statuses(lab)), timeout=120,
                 interval=0.5, what="the first session to finish")
        proc = worker(daemon.pid)
        rss0, fds0, thr0 = measure(proc)
        start_measured.set()
        wait_for(lambda: sum(r["state"] == "finished" for r in statuses(lab)) == sessions,
                 timeout=120 + sessions * files * 1.0, interval=1.0, what="every session to finish")
        time.sleep(1.0)  # the last validation child comes and goes
        end = worker(daemon.pid)
        rss1, fds1, thr1 = measure(end)
        same_worker = end.pid == proc.pid
        seconds = time.monotonic() - t0
    finally:
        stop = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
        print(f"\nSIGTERM to exit: {time.monotonic() - stop:.1f} s")
    rows = {r["session"]: r for r in statuses(lab)}
    exact = sum(np.array_equal(nwb_frames(lab.nwb(name(s))),
                               np.concatenate([frames_for(s, i) for i in range(files)]))
                for s in range(sessions))
    print(f"\nsoak: {sessions} sessions, {sessions * files} files, {sessions * files * PAGES} frames "
          f"in {seconds:.0f} s; worker RSS {rss0:.1f} -> {rss1:.1f} MB, fds {fds0} -> {fds1}, "
          f"threads {thr0} -> {thr1}; {exact} sessions exact")
    record("soak", test=f"{sessions}_sessions_x_{files}_files", sessions=sessions,
           files=sessions * files, frames=sessions * files * PAGES, seconds=round(seconds, 1),
           rss_start_mb=round(rss0, 1), rss_end_mb=round(rss1, 1), fds_start=fds0, fds_end=fds1,
           threads_start=thr0, threads_end=thr1)
    assert same_worker, "the worker was restarted during the run"
    assert len(rows) == sessions and all(r["state"] == "finished" for r in rows.values())
    assert all(r["problems"] == [] for r in rows.values())
    assert exact == sessions
    assert fds1 <= fds0 + FD_SLACK, (fds0, fds1)
    assert thr1 <= thr0 + THREAD_SLACK, (thr0, thr1)
    assert rss1 < rss0 + RSS_SLACK_MB, (rss0, rss1)


def test_soak_eight_sessions(make_lab) -> None:  # type: ignore[no-untyped-def]
    soak(make_lab(**SOAK_CONFIG), sessions=8, files=8)


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_soak_a_day(make_lab) -> None:  # type: ignore[no-untyped-def]
    soak(make_lab(**SOAK_CONFIG), sessions=48, files=60)
