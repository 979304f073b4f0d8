"""After an unclean stop (the writer died with the file open: a crash, a power cut), a file is
not trusted beyond what can be checked: every committed frame is compared with its TIFF, and a
file holding frames the ledger never committed is made again. Found by the power-loss test,
where a zeroed tail (HDF5 index nodes written after the last fsync) read back 45 wrong frames
after a trim to 0. Expectations are the TIFFs' pages, written by this test."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import structlog.testing

from rig2nwb.engine.writers import open_key
from rig2nwb.testing.engines import drive, engine_for
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.nwbfiles import nwb_frames
from rig2nwb.testing.tiffs import random_frames


@pytest.fixture
def fast_lab(make_lab):  # type: ignore[no-untyped-def]
    return make_lab(completion={"settle_seconds": 0.2, "session_idle_seconds": 3600},
                    append={"batch_frames": 4, "commit_every_frames": 8})


def _convert(lab: Lab, frames: list[np.ndarray]) -> int:
    for i, f in enumerate(frames):
        lab.tiff(f"run_{i + 1:05d}.tif", f)
    e = engine_for(lab)
    drive(e, 15)
    sess = e.ledger.session("m1", "s1")
    assert sess is not None
    e.close()
    e.ledger.close()
    return sess.id


def _died_with_the_file_open(lab: Lab, sid: int) -> None:
    e = engine_for(lab)
    e.ledger.set_meta(open_key(sid), "0")  # what a killed writer leaves behind
    e.ledger.close()


def test_a_damaged_committed_frame_far_from_the_tail_is_found_and_rebuilt(fast_lab: Lab) -> None:
    files = [random_frames(12, seed=s) for s in (1, 2, 3)]
    sid = _convert(fast_lab, files)
    with h5py.File(fast_lab.nwb(), "r+") as f:  # frame 3 of 36: 33 frames before the tail
        f["acquisition/TwoPhotonSeries/data"][3] = 0
    _died_with_the_file_open(fast_lab, sid)
    e = engine_for(fast_lab)
    e.recover()
    drive(e, 20)
    e.close()
    assert np.array_equal(nwb_frames(fast_lab.nwb()), np.concatenate(files))
    said = [p.message for p in e.ledger.problems(sid)]
    assert any("frame 3 differs from run_00001.tif after an unclean stop" in m for m in said), said
    assert list(fast_lab.out.glob("*.damaged-*")), "the damaged file is kept aside"


def test_frames_the_ledger_never_committed_make_the_file_again(fast_lab: Lab) -> None:
    files = [random_frames(12, seed=s) for s in (4, 5)]
    sid = _convert(fast_lab, files)
    e = engine_for(fast_lab)
    e.ledger.roll_back(sid, 0)  # the ledger went back to before the first commit
    e.ledger.close()
    with open(fast_lab.nwb(), "r+b") as f:  # and the file's tail was never written out
        f.seek(-4096, 2)
        f.write(b"\0" * 4096)
    _died_with_the_file_open(fast_lab, sid)
    e = engine_for(fast_lab)
    e.recover()
    drive(e, 20)
    e.close()
    assert np.array_equal(nwb_frames(fast_lab.nwb()), np.concatenate(files))
    events = [m for _, _, m in e.ledger.events(sid)]
    assert any("made again from the TIFFs" in m for m in events), events
    assert not list(fast_lab.out.glob("*.damaged-*"))  # provably its own: nothing to keep


@pytest.mark.parametrize("unclean", [False, True])
def test_only_an_unclean_stop_costs_a_full_check(fast_lab: Lab, unclean: bool) -> None:
    """The full check reads the whole session: only after an unclean stop."""
    files = [random_frames(12, seed=s) for s in (6, 7, 8)]
    sid = _convert(fast_lab, files)
    if unclean:
        _died_with_the_file_open(fast_lab, sid)
    fast_lab.tiff("run_00004.tif", random_frames(4, seed=9))  # the session opens its file again
    e = engine_for(fast_lab)
    with structlog.testing.capture_logs() as logs:
        e.recover()
        drive(e, 10)
    e.close()
    checked = [x for x in logs if x["event"] == "every committed frame checked after an unclean stop"]
    assert len(checked) == int(unclean)
    if unclean:
        assert checked[0]["frames"] == 36
