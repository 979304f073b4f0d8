"""Edge cases around commits, rollbacks and reopening, driven through the real Engine in-process.

Each test stages an event sequence that once lost, duplicated or reordered frames (found by an
adversarial review) and checks the NWB file against the frames the test itself wrote.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from rig2nwb.engine.engine import Engine
from rig2nwb.ledger.store import Ledger
from rig2nwb.testing.engines import drive, engine_for
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.nwbfiles import nwb_frames
from rig2nwb.testing.paths import REPO
from rig2nwb.testing.services import finished, run_service
from rig2nwb.testing.tiffs import append_pages, random_frames, write_tiff


def problems(engine: Engine) -> list[str]:
    return [f"{p.code}: {p.message}" for p in engine.ledger.problems()]


@pytest.fixture
def fast_lab(make_lab):  # type: ignore[no-untyped-def]
    return make_lab(completion={"settle_seconds": 0.2, "session_idle_seconds": 3600},
                    append={"batch_frames": 4, "commit_every_frames": 8})


def test_overwritten_last_file_never_replaces_committed_frames(fast_lab: Lab) -> None:
    old, new = random_frames(10, seed=1), random_frames(10, seed=2)
    path = fast_lab.tiff("run_00001.tif", old)
    e = engine_for(fast_lab)
    drive(e, 15)
    e.close()
    write_tiff(path, new)  # the lab overwrites an appended file with other content
    e2 = engine_for(fast_lab)
    e2.recover()  # reopening (restart) must not "repair" good frames from the changed TIFF
    drive(e2, 15)
    e2.close()
    assert np.array_equal(nwb_frames(fast_lab.nwb()), old)
    assert any("run_00001.tif" in p and "changed_after_commit" in p for p in problems(e2))


def test_grown_last_file_and_a_late_earlier_file_keep_series_order(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab: Lab = make_lab(completion={"settle_seconds": 0.2, "session_idle_seconds": 3600,
                                    "gap_wait_seconds": 0})  # do not wait for run_00002
    r1, r3, r3_more, r2 = (random_frames(n, seed=s) for n, s in ((6, 1), (6, 3), (4, 4), (6, 2)))
    lab.tiff("run_00001.tif", r1)
    p3 = lab.tiff("run_00003.tif", r3)
    e = engine_for(lab)
    drive(e, 10)
    append_pages(p3, r3_more)  # run_00003 grows after it was appended...
    lab.tiff("run_00002.tif", r2)  # ...and the missing run_00002 turns up late
    drive(e, 20)
    e.close()
    assert np.array_equal(nwb_frames(lab.nwb()), np.concatenate([r1, r3, r3_more]))
    assert any("run_00002.tif" in p and "out_of_order" in p for p in problems(e))


def test_repair_on_reopen_is_followed_by_a_fresh_plan(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab: Lab = make_lab(completion={"settle_seconds": 0.2, "session_idle_seconds": 0.5})
    p1, p2, p3 = (random_frames(6, seed=s) for s in (1, 2, 3))
    lab.tiff("run_00001.tif", p1)
    lab.tiff("run_00002.tif", p2)
    lab.lab_files(n_frames=12)  # p1 + p2 (p3 comes after the finish)
    e = engine_for(lab)
    deadline = time.monotonic() + 30
    while not finished("s1")(e):
        drive(e, 1)
        assert time.monotonic() < deadline, "the session did not finish"
    with h5py.File(lab.nwb(), "a") as f:  # bit rot in the last committed frame
        d = f["acquisition/TwoPhotonSeries/data"]
        d[11] = d[11] + 1
    p3_path = lab.tiff("run_00003.tif", p3)  # a new TIFF reopens the finished session
    os.utime(p3_path, (time.time() - 30, time.time() - 30))
    drive(e, 30)
    e.close()
    assert np.array_equal(nwb_frames(lab.nwb()), np.concatenate([p1, p2, p3]))


def test_new_file_for_a_finished_session_without_close_events(make_lab) -> None:  # type: ignore[no-untyped-def]
    """Polling observer (Windows shares, SMB): no close-write; settle must still complete it."""
    lab: Lab = make_lab(watch={"observer": "polling", "polling_interval_seconds": 0.2},
                        completion={"settle_seconds": 0.5, "session_idle_seconds": 1.0,
                                    "signals": ["next_file", "stable"]})
    a, b = random_frames(6, seed=1), random_frames(5, seed=2)
    lab.tiff("run_00001.tif", a)
    lab.lab_files(n_frames=len(a))  # b comes after the finish
    written: list[float] = []

    def add_file_once_finished_then_wait(engine: Engine) -> bool:
        s = engine.ledger.session("m1", "s1")
        if s is None or s.state != "finished":
            return False
        if not written:  # the rig writes one more TIFF into the finished session
            write_tiff(lab.session_dir() / "run_00002.tif", b)
            written.append(time.monotonic())
            return False
        return engine.ledger.frames_committed(s.id) == 11

    run_service(lab, add_file_once_finished_then_wait, timeout=40)
    assert written and time.monotonic() - written[0] < 30, "the new file was never appended"
    assert np.array_equal(nwb_frames(lab.nwb()), np.concatenate([a, b]))


def test_missing_nwb_file_is_rebuilt_and_said_so(fast_lab: Lab) -> None:
    frames = random_frames(6)
    fast_lab.tiff("run_00001.tif", frames)
    e = engine_for(fast_lab)
    drive(e, 10)
    e.close()
    fast_lab.nwb().unlink()
    e2 = engine_for(fast_lab)
    e2.recover()
    drive(e2, 15)
    e2.close()
    assert np.array_equal(nwb_frames(fast_lab.nwb()), frames)
    assert any("the NWB file is missing; rebuilt" in p for p in problems(e2))
    assert sorted(p.name for p in fast_lab.out.iterdir()) == [fast_lab.nwb().name]


def test_tiff_deleted_while_being_read_rolls_back_cleanly(fast_lab: Lab,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker must not mistake a vanished source for a failed NWB write."""
    import rig2nwb.engine.appending as engine_mod

    doomed, keep = random_frames(20, seed=1), random_frames(5, seed=2)
    path = fast_lab.tiff("run_00001.tif", doomed)
    real = engine_mod.read_batches

    def read_then_delete(*args, **kwargs):  # type: ignore[no-untyped-def]
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == 2 and path.exists():
                path.unlink()  # deleted in the middle of the append (Linux keeps reading)
            yield batch

    monkeypatch.setattr(engine_mod, "read_batches", read_then_delete)
    e = engine_for(fast_lab)
    drive(e, 10)
    fast_lab.tiff("run_00002.tif", keep)
    drive(e, 15)
    e.close()
    assert np.array_equal(nwb_frames(fast_lab.nwb()), keep)
    assert any("run_00001.tif: deleted before it was appended" in p for p in problems(e))


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_read_only_nwb_is_not_mistaken_for_a_damaged_one(fast_lab: Lab) -> None:
    p1, p2 = random_frames(6, seed=1), random_frames(6, seed=2)
    fast_lab.tiff("run_00001.tif", p1)
    e = engine_for(fast_lab)
    drive(e, 10)
    e.close()
    os.chmod(fast_lab.nwb(), 0o444)
    fast_lab.tiff("run_00002.tif", p2)
    # A restarted worker without root's permission override (as root, via setpriv).
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] \
        if os.geteuid() == 0 else []
    if prefix and shutil.which("setpriv") is None:
        pytest.skip("root without setpriv")
    script = (
        "import time, sys; from rig2nwb.testing.engines import engine_for, drive;"
        "from rig2nwb.testing.labs import Lab; from pathlib import Path;"
        f"lab = Lab.__new__(Lab); lab.config_path = Path({str(fast_lab.config_path)!r});"
        f"lab.state = Path({str(fast_lab.state)!r});"
        "e = engine_for(lab); e.recover(); drive(e, 10); e.ledger.close()"
    )
    proc = subprocess.run([*prefix, sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in fast_lab.out.iterdir()) == [fast_lab.nwb().name]  # not set aside
    led = Ledger(fast_lab.state / "ledger.sqlite")
    msgs = [p.message for p in led.problems()]
    led.close()
    assert any("cannot write" in m and "Permission denied" in m for m in msgs), msgs
    os.chmod(fast_lab.nwb(), 0o644)  # fixed: the next worker appends run_00002
    e = engine_for(fast_lab)
    e.recover()
    drive(e, 15)
    e.close()
    assert np.array_equal(nwb_frames(fast_lab.nwb()), np.concatenate([p1, p2]))
