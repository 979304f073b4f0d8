"""Crash safety with real processes: SIGKILL at random instants, restart, and the final NWB file
holds every frame exactly once, in order, bit-identical to the TIFFs.

The suite runs 20 kills by default; ``--crash-trials N`` runs more (e.g. 200 for a long run).
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time

import numpy as np
import pytest
from pynwb import NWBHDF5IO, validate

from tests.conftest import Lab, nwb_frames, nwb_timestamps, random_frames, wait_for, write_tiff

FILE_INTERVAL = 0.8  # seconds between TIFFs from the simulated rig
FRAMES_PER_FILE = 150
SHAPE = (128, 128)


def session_state(lab: Lab) -> dict[str, object] | None:
    proc = lab.run_cli("status", "--json", timeout=60)
    rows = json.loads(proc.stdout) if proc.returncode == 0 else []
    return rows[0] if rows else None


def run_daemon_until_finished(lab: Lab, timeout: float) -> None:
    """Start the daemon, wait for the session to finish, stop it with SIGTERM."""
    daemon = lab.start_daemon(wait_until_watching=False)
    try:
        wait_for(lambda: (session_state(lab) or {}).get("state") == "finished", timeout=timeout,
                 interval=0.5, what="the session to finish")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)


def frames_for(i: int) -> np.ndarray:
    frames = random_frames(FRAMES_PER_FILE, shape=SHAPE, seed=100 + i)
    frames[:, : SHAPE[0] // 2] //= 256  # half compressible: gzip does real work
    return frames


@pytest.fixture
def crash_lab(make_lab):  # type: ignore[no-untyped-def]
    # gzip-9 makes appends slow enough (~0.3 s a file) that many kills land mid-file.
    return make_lab(output={"compression": "gzip", "compression_level": 9},
                    append={"batch_frames": 16, "commit_every_frames": 48},
                    completion={"settle_seconds": 0.3, "session_idle_seconds": 1.0},
                    logging={"level": "INFO"})


def test_sigkill_at_random_instants_loses_and_duplicates_nothing(crash_lab: Lab,
                                                                  request: pytest.FixtureRequest
                                                                  ) -> None:
    lab = crash_lab
    trials = int(request.config.getoption("--crash-trials"))
    rng = random.Random(int(os.environ.get("RIG2NWB_CRASH_SEED", "1234")))
    folder = lab.session_dir()
    rig_done, kills_done = threading.Event(), threading.Event()
    written: list[int] = []

    max_files = trials + 10  # enough to keep the daemon busy, bounded so catching up is quick

    def rig() -> None:  # the rig keeps delivering files while the daemon is being killed
        i = 0
        while (not kills_done.is_set() or i < 2) and i < max_files:
            write_tiff(folder / f"s1_{i + 1:05d}.tif", frames_for(i))
            written.append(i)
            i += 1
            kills_done.wait(FILE_INTERVAL)
        lab.lab_files(n_frames=len(written) * FRAMES_PER_FILE)
        rig_done.set()

    threading.Thread(target=rig, daemon=True).start()
    kills = 0
    phases: dict[str, int] = {}
    progress: list[int] = []
    while kills < trials:
        daemon = lab.start_daemon(wait_until_watching=False)
        # Start-up (imports, recovery) takes ~1.5 s: the spread also kills during recovery.
        time.sleep(rng.uniform(0.5, 4.0))
        if daemon.poll() is not None:
            err = daemon.stderr.read() if daemon.stderr else ""
            pytest.fail(f"daemon exited by itself (rc {daemon.returncode}):\n{err[-3000:]}")
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        kills += 1
        state = session_state(lab)
        phase = str(state["state"]) if state else "before-first-file"
        phases[phase] = phases.get(phase, 0) + 1
        progress.append(int(state["frames"]) if state else 0)  # type: ignore[call-overload]
    kills_done.set()
    mid_file = sum(1 for f in progress if f % FRAMES_PER_FILE)
    print(f"\ncrash test: {kills} SIGKILLs; session state after each kill: {phases}; "
          f"{mid_file} left a partly appended file; frames committed after each kill: {progress}")

    assert rig_done.wait(60)
    run_daemon_until_finished(lab, timeout=300)

    expected = np.concatenate([frames_for(i) for i in written])
    got = nwb_frames(lab.nwb())
    assert got.shape == expected.shape, f"{got.shape[0]} frames, expected {expected.shape[0]}"
    assert np.array_equal(got, expected)
    np.testing.assert_allclose(nwb_timestamps(lab.nwb()), np.arange(len(expected)) / 30.0)
    assert validate(path=str(lab.nwb())) == []
    print(f"crash test result: {kills} SIGKILLs, {len(written)} TIFFs, {len(expected)} frames: "
          "every frame present exactly once, in order, bit-identical; pynwb opens and validates")
    with NWBHDF5IO(str(lab.nwb()), "r") as io:
        assert io.read().acquisition["TwoPhotonSeries"].data.shape[0] == len(expected)
    state = session_state(lab)
    assert state is not None and state["frames"] == len(expected)
    # Leftovers of interrupted creations never stay under the real name.
    assert sorted(p.name for p in lab.out.iterdir() if p.suffix == ".nwb") == [lab.nwb().name]


def test_sigterm_stops_within_seconds_and_resumes_exactly(crash_lab: Lab) -> None:
    lab = crash_lab
    big = [random_frames(600, shape=(256, 256), seed=s) for s in (1, 2)]
    for i, frames in enumerate(big):
        frames[:, :128] //= 256
        write_tiff(lab.session_dir() / f"s1_{i + 1:05d}.tif", frames)
    lab.lab_files(n_frames=sum(len(f) for f in big))
    daemon = lab.start_daemon(wait_until_watching=False)
    log = lab.state / "rig2nwb.log"
    wait_for(lambda: log.exists() and '"nwb created"' in log.read_text(), timeout=60,
             what="the daemon to start appending")
    time.sleep(0.3)
    t0 = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    rc = daemon.wait(timeout=30)
    took = time.monotonic() - t0
    print(f"\nSIGTERM to exit: {took:.2f} s")
    assert rc == 0
    assert took < 10, f"SIGTERM took {took:.1f} s"
    text = log.read_text()
    assert '"stop requested"' in text and '"stopped"' in text
    state = session_state(lab)
    assert state is not None and state["state"] != "finished"  # it really was interrupted

    run_daemon_until_finished(lab, timeout=120)
    assert np.array_equal(nwb_frames(lab.nwb()), np.concatenate(big))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_crash_fuzz_long(crash_lab: Lab, request: pytest.FixtureRequest) -> None:
    """The long run: ``pytest --run-slow --crash-trials 200 -k crash_fuzz_long``."""
    test_sigkill_at_random_instants_loses_and_duplicates_nothing(crash_lab, request)


