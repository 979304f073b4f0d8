"""Jobs that produce genuine suite2p output (a real suite2p 1.1.0 result of the shared
fixtures, copied by the job after a delay, for a session holding that fixture's raw TIFFs),
through both executors, and the daemon SIGKILLed while a SLURM job runs and while its results
are attached: each time exactly one job ran (the scheduler's jobs counted) and the results are
in the NWB file once, equal to the fixture's own arrays."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from rig2nwb.testing.jobs import JobLab, fault_env, fixture_iscell, fixture_lab, nwb_iscell_of
from rig2nwb.testing.slurm import Cluster
from rig2nwb.testing.waits import wait_for

FAULTS = Path(__file__).resolve().parents[1] / "faults"


def attached(lab: JobLab) -> bool:
    return (lab.status()["suite2p"] or {}).get("state") == "attached"


def assert_fixture_attached_once(lab: JobLab, fixture: Path) -> None:
    nwb = lab.nwb()
    for plane in (0, 1):
        want = fixture_iscell(fixture, plane)
        got = nwb_iscell_of(nwb, f"PlaneSegmentation_plane{plane}")
        assert (got == want).all() and len(got) == len(want)
    with h5py.File(nwb, "r") as f:
        assert sorted(f["processing"]) == ["ophys"]  # one set of results, no staging left
        assert sorted(f["processing/ophys/ImageSegmentation"]) == [
            "PlaneSegmentation_plane0", "PlaneSegmentation_plane1"]


def stop(daemon: subprocess.Popen[str]) -> None:
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=60)


@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_genuine_suite2p_output_is_attached(executor: str, tmp_path: Path,
                                            request: pytest.FixtureRequest) -> None:
    if executor == "slurm":
        request.getfixturevalue("cluster")
    lab, fixture = fixture_lab(tmp_path / "lab", "twoplane", executor="none", planes=2)
    out = lab.run_cli("process", str(lab.folder), "--executor", executor, "--wait", "240")
    assert out.returncode == 0, out.stdout + out.stderr
    assert_fixture_attached_once(lab, fixture)
    assert len(lab.run_lines()) == 1
    assert lab.status()["processing"]["executor"] == executor


def test_killed_while_the_slurm_job_runs(cluster: Cluster, tmp_path: Path) -> None:
    lab, fixture = fixture_lab(tmp_path / "lab", "twoplane", executor="none", delay=5.0,
                               planes=2)
    lab.set_run(executor="slurm")
    out = lab.run_cli("process", str(lab.folder))  # recorded and submitted; the daemon follows
    assert out.returncode == 0, out.stderr
    daemon = lab.start_daemon()
    wait_for(lambda: len(lab.run_lines()) == 1, timeout=90, what="the job to run")
    daemon.kill()
    daemon.wait(timeout=30)
    daemon = lab.start_daemon()
    try:
        wait_for(lambda: attached(lab), timeout=180, what="results attached after the restart")
        time.sleep(2)
        jobs = [j for j in cluster.jobs_named("rig2nwb-")
                if (lab.state / "jobs" / j["JobName"][len("rig2nwb-"):]).exists()]
        assert len(jobs) == 1 and len(lab.run_lines()) == 1
        assert_fixture_attached_once(lab, fixture)
    finally:
        stop(daemon)


def test_killed_while_results_are_attached(tmp_path: Path) -> None:
    lab, fixture = fixture_lab(tmp_path / "lab", "twoplane", executor="local", delay=0.5,
                               planes=2)
    flag = tmp_path / "kill-once"
    flag.write_text("")
    env = fault_env("rig2nwb.suite2p.stage:Suite2pStage.attach", "kill", FAULTS, flag)
    out = subprocess.run([sys.executable, "-m", "rig2nwb", "process",
                          str(lab.folder), "--wait", "120", "--config", str(lab.config_path)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == -signal.SIGKILL, out.stdout + out.stderr
    assert lab.status()["processing"]["state"] == "done"  # the job had ended well
    flag.unlink()
    daemon = lab.start_daemon()
    try:
        wait_for(lambda: attached(lab), timeout=180, what="results attached by the next daemon")
        time.sleep(2)
        assert len(lab.run_lines()) == 1  # not run again: its results were there
        assert_fixture_attached_once(lab, fixture)
    finally:
        stop(daemon)
