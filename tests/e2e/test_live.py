"""Live acquisition with a real watchdog observer: a simulated rig writes TIFFs page by page."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rig2nwb.engine.engine import Engine
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.nwbfiles import nwb_frames
from rig2nwb.testing.services import finished, run_service
from rig2nwb.testing.simrig import MovieSpec, SimSession, write_tiff
from rig2nwb.testing.tiffs import append_pages, random_frames
from rig2nwb.testing.tiffs import write_tiff as write_whole_tiff


@pytest.mark.parametrize("observer", ["native", "polling"])
def test_rig_writing_slowly_ends_in_exact_nwb(make_lab, observer: str) -> None:  # type: ignore[no-untyped-def]
    lab: Lab = make_lab(watch={"observer": observer, "polling_interval_seconds": 0.2,
                               "rescan_seconds": 30.0})
    folder = lab.session_dir()
    sim = SimSession(
        tiff_paths=[folder / f"s1_{i:05d}.tif" for i in range(1, 5)], frames_per_file=24,
        movie=MovieSpec(shape=(64, 80), rate=80.0, n_cells=5, seed=7),
        scan_path=lab.root / "m1/txt/s1_scan.txt", trial_path=lab.root / "m1/txt/s1_trial.txt",
        realtime=True,  # pages arrive every 1/80 s: files grow while the daemon watches
    )
    rig = threading.Thread(target=sim.write)
    rig.start()
    run_service(lab, finished("s1"))
    rig.join()

    expected = np.concatenate([np.stack(list(sim.expected_frames(i))) for i in range(4)])
    got = nwb_frames(lab.nwb())
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)
    log = (lab.state / "rig2nwb.log").read_text()
    assert log.count('"event": "tiff appended"') == 4  # each file appended once, whole
    assert '"event": "session finished"' in log


def test_file_being_written_never_blocks_other_sessions(lab: Lab) -> None:
    stop = threading.Event()
    slow_path = lab.session_dir("slow") / "slow_00001.tif"

    def slow_writer() -> None:  # a TIFF that keeps growing for the whole test
        frames = (f for f in random_frames(10_000, seed=5))
        write_tiff(slow_path, frames, page_interval=0.05, stop=stop)

    writer = threading.Thread(target=slow_writer)
    writer.start()
    try:
        fast = random_frames(30, seed=9)
        write_whole_tiff(lab.session_dir("fast") / "fast_00001.tif", fast)
        lab.lab_files("fast", n_frames=len(fast))
        run_service(lab, finished("fast"))
        assert np.array_equal(nwb_frames(lab.nwb("fast")), fast)
        assert not lab.nwb("slow").exists()  # never appended partially
    finally:
        stop.set()
        writer.join()


def test_out_of_order_arrival_is_appended_in_run_order(lab: Lab) -> None:
    """File 2 lands before file 1 (e.g. a copy job); the series still holds 1 then 2."""
    a, b = random_frames(8, seed=1), random_frames(9, seed=2)
    write_whole_tiff(lab.session_dir() / "x_00002.tif", b)
    done = threading.Event()

    def late_first_file() -> None:
        done.wait(1.5)  # well past the settle time of file 2
        write_whole_tiff(lab.session_dir() / "x_00001.tif", a)
        lab.lab_files(n_frames=len(a) + len(b))

    t = threading.Thread(target=late_first_file)
    t.start()
    run_service(lab, finished("s1"))
    t.join()
    assert np.array_equal(nwb_frames(lab.nwb()), np.concatenate([a, b]))


def test_restart_after_finish_changes_nothing(lab: Lab) -> None:
    from rig2nwb.testing.filetrees import sha256

    write_whole_tiff(lab.session_dir() / "x_00001.tif", random_frames(5))
    lab.lab_files(n_frames=5)
    run_service(lab, finished("s1"))
    before = (sha256(lab.nwb()), lab.nwb().stat().st_mtime_ns)
    import time
    deadline = time.monotonic() + 3.0  # longer than a rescan (2 s): the daemon looked at it all
    run_service(lab, lambda e: time.monotonic() > deadline)
    assert (sha256(lab.nwb()), lab.nwb().stat().st_mtime_ns) == before


def test_marker_finishes_session_without_lab_files(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab: Lab = make_lab(rig={"end_marker": "{subject}/tif/{site}/{session}/done.txt"},
                        completion={"session_idle_seconds": 3600})
    frames = random_frames(6)
    write_whole_tiff(lab.session_dir() / "x_00001.tif", frames)
    (lab.session_dir() / "done.txt").write_text("")
    run_service(lab, finished("s1"), timeout=60)
    assert np.array_equal(nwb_frames(lab.nwb()), frames)




def test_tiff_growing_after_it_was_appended_gets_its_new_pages(lab: Lab) -> None:
    first, more = random_frames(10, seed=1), random_frames(7, seed=2)
    path = lab.session_dir() / "x_00001.tif"
    write_whole_tiff(path, first)
    grown = threading.Event()

    def committed_then_grow(engine: Engine) -> bool:
        row = engine.ledger.file("m1/tif/site1/s1/x_00001.tif")
        if not grown.is_set() and row is not None and row.state == "committed":
            append_pages(path, more)  # the rig paused longer than the settle time, then went on
            lab.lab_files(n_frames=len(first) + len(more))
            grown.set()
        return finished("s1")(engine)

    run_service(lab, committed_then_grow)
    assert grown.is_set()
    assert np.array_equal(nwb_frames(lab.nwb()), np.concatenate([first, more]))


def test_tiff_changing_after_later_files_were_appended_is_reported(lab: Lab) -> None:
    from rig2nwb.outputs.status import collect

    a, b = random_frames(5, seed=1), random_frames(6, seed=2)
    write_whole_tiff(lab.session_dir() / "x_00001.tif", a)
    write_whole_tiff(lab.session_dir() / "x_00002.tif", b)
    changed = threading.Event()

    def both_committed_then_change(engine: Engine) -> bool:
        row = engine.ledger.file("m1/tif/site1/s1/x_00002.tif")
        if not changed.is_set() and row is not None and row.state == "committed":
            append_pages(lab.session_dir() / "x_00001.tif", random_frames(3, seed=3))
            lab.lab_files(n_frames=len(a) + len(b))
            changed.set()
        return finished("s1")(engine)

    run_service(lab, both_committed_then_change)
    assert np.array_equal(nwb_frames(lab.nwb()), np.concatenate([a, b]))
    problems = collect(lab.config())[0]["problems"]
    assert any("x_00001.tif: changed after it was appended" in p for p in problems), problems
