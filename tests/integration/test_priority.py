"""The worker yields the CPU to acquisition: it runs at `service.nice` (default 10), every one
of its threads, while the supervisor keeps the priority it was started with. Read from
/proc, the kernel's own account (Linux only)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from rig2nwb.testing.labs import Lab
from rig2nwb.testing.tiffs import random_frames
from rig2nwb.testing.waits import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def nice_of(stat_path: Path) -> int:
    # /proc/PID/stat: "pid (comm) state ..."; nice is field 19, the 17th after the comm.
    fields = stat_path.read_text().rsplit(")", 1)[1].split()
    return int(fields[16])


def worker_of(supervisor: int) -> int:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


@pytest.mark.parametrize("nice", [None, 0, 15])
def test_worker_and_all_its_threads_run_at_the_configured_niceness(tmp_path: Path,
                                                                    nice: int | None) -> None:
    lab = Lab(tmp_path, **({} if nice is None else {"service": {"nice": nice}}))
    lab.tiff("a_00001.tif", random_frames(5))
    lab.tiff("a_00002.tif", random_frames(3, seed=1))  # the first is complete: work happens
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    daemon = lab.start_daemon()
    try:
        log = lab.state / "rig2nwb.log"
        wait_for(lambda: '"tiff appended"' in log.read_text(), timeout=60,
                 what="the first file to be appended")
        worker = worker_of(daemon.pid)
        threads = sorted(Path(f"/proc/{worker}/task").iterdir())
        assert len(threads) > 1  # observer, scheduler...: they must have inherited it
        expected = max(ours, 10 if nice is None else nice)
        assert {t.name: nice_of(t / "stat") for t in threads} == {
            t.name: expected for t in threads}
        assert nice_of(Path(f"/proc/{daemon.pid}/stat")) == ours  # the supervisor: untouched
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
