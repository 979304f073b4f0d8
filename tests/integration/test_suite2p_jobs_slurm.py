"""suite2p jobs on a real single-node SLURM cluster (rig2nwb.testing.slurm: munged, slurmctld
and slurmd started for this module): a job that ends well is attached once, a failing job's
log reaches the status, a job cancelled by hand is not started again, a controller that is down
is waited for, and a daemon killed right after `sbatch` returned never submits a second job.
Skipped with the reason when SLURM is not installed or this is not root."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from rig2nwb.testing.jobs import JobLab, fault_env, nwb_iscell
from rig2nwb.testing.slurm import Cluster
from rig2nwb.testing.waits import wait_for

FAULTS = Path(__file__).resolve().parents[1] / "faults"


def ours(cluster: Cluster, lab: JobLab) -> list[dict[str, str]]:
    """The scheduler's jobs of this lab's session (by the job folders rig2nwb made)."""
    tokens = {p.name for p in (lab.state / "jobs").iterdir()} if (lab.state / "jobs").exists() \
        else set()
    return [j for j in cluster.jobs_named("rig2nwb-") if j["JobName"][len("rig2nwb-"):] in tokens]


def stop(daemon: subprocess.Popen[str]) -> None:
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=60)


def test_job_done_is_attached_once(cluster: Cluster, tmp_path: Path) -> None:
    lab = JobLab(tmp_path / "lab", executor="slurm", convert=False, sleep=1.0)
    daemon = lab.start_daemon()
    try:
        lab.write_tiff()
        wait_for(lambda: (lab.status()["suite2p"] or {}).get("state") == "attached",
                 timeout=120, what="the SLURM job's results attached")
        np.testing.assert_array_equal(nwb_iscell(lab.nwb()), lab.expected_iscell(tmp_path / "x"))
        time.sleep(2)
        jobs = ours(cluster, lab)
        assert len(jobs) == 1 and jobs[0]["JobState"] == "COMPLETED", jobs
        status = lab.status()["processing"]
        assert status["executor"] == "slurm" and status["state"] == "done"
        assert status["job_id"] == jobs[0]["JobId"]
        assert len(lab.run_lines()) == 1
    finally:
        stop(daemon)


def test_failed_job_reports_its_exit_status_and_log(cluster: Cluster, tmp_path: Path) -> None:
    lab = JobLab(tmp_path / "lab", executor="none", exit_code=3, sleep=0.3,
                 run={"retries": 0})
    out = lab.run_cli("process", str(lab.folder), "--executor", "slurm", "--wait", "120")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "exit status 3" in out.stderr and "giving up with exit status 3" in out.stderr
    jobs = ours(cluster, lab)
    assert len(jobs) == 1 and jobs[0]["JobState"] == "FAILED" and jobs[0]["ExitCode"] == "3:0"
    status = lab.status()
    assert status["processing"]["state"] == "failed" and status["processing"]["exit_code"] == 3
    assert any("giving up with exit status 3" in p for p in status["problems"])


def test_job_cancelled_by_hand_is_not_started_again(cluster: Cluster, tmp_path: Path) -> None:
    lab = JobLab(tmp_path / "lab", executor="slurm", convert=False, sleep=60.0,
                 run={"retries": 2})
    daemon = lab.start_daemon()
    try:
        lab.write_tiff()
        wait_for(lambda: len(lab.run_lines()) == 1, timeout=90, what="the job to run")
        job_id = ours(cluster, lab)[0]["JobId"]
        subprocess.run(["scancel", job_id], env=dict(cluster.env), check=True, timeout=30)
        wait_for(lambda: lab.status()["processing"]["state"] == "cancelled", timeout=60,
                 what="the cancel to be seen")
        time.sleep(3)
        assert len(ours(cluster, lab)) == 1 and len(lab.run_lines()) == 1
        assert any("cancelled" in p for p in lab.status()["problems"])
    finally:
        stop(daemon)


def test_controller_down_at_submit_then_back(cluster: Cluster, tmp_path: Path) -> None:
    lab = JobLab(tmp_path / "lab", executor="none")
    cluster.stop_controller()
    try:
        out = lab.run_cli("process", str(lab.folder), "--executor", "slurm", timeout=300)
        assert out.returncode == 0, out.stderr  # recorded; submitted once the scheduler answers
        assert "cannot be reached" in out.stdout
        status = lab.status()
        assert any("scheduler cannot be reached" in w for w in status["warnings"]), status
        assert status["processing"]["job_id"] is None
    finally:
        cluster.start_controller()
    daemon = lab.start_daemon()
    try:
        wait_for(lambda: (lab.status()["suite2p"] or {}).get("state") == "attached",
                 timeout=180, what="the job submitted once the controller is back")
        assert len(ours(cluster, lab)) == 1
        assert not any("cannot be reached" in w for w in lab.status()["warnings"])
    finally:
        stop(daemon)


def test_killed_right_after_sbatch_never_submits_twice(cluster: Cluster, tmp_path: Path) -> None:
    lab = JobLab(tmp_path / "lab", executor="none", sleep=2.0)
    env = fault_env("rig2nwb.processing.slurm:SlurmExecutor.submit", "kill-after", FAULTS)
    out = subprocess.run([sys.executable, "-m", "rig2nwb", "process", str(lab.folder),
                          "--executor", "slurm", "--config", str(lab.config_path)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert lab.status()["processing"]["job_id"] is None  # sbatch answered; nothing recorded
    assert len(ours(cluster, lab)) == 1
    lab.set_run(executor="slurm")
    daemon = lab.start_daemon()
    try:
        wait_for(lambda: (lab.status()["suite2p"] or {}).get("state") == "attached",
                 timeout=120, what="the submitted job found and its results attached")
        assert len(ours(cluster, lab)) == 1 and len(lab.run_lines()) == 1
        assert lab.status()["processing"]["job_id"] == ours(cluster, lab)[0]["JobId"]
    finally:
        stop(daemon)
