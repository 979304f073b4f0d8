"""suite2p jobs on this machine (suite2p.run.executor = "local"): `rig2nwb process`, the daemon
starting each finished session's job by itself, failures with their log, retries, timeouts, and
jobs that outlive the daemon that started them. The job is the stand-in
(rig2nwb.testing.stand_in_job); what it writes is made again by the test and compared with
what the NWB file holds (plain h5py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rig2nwb.testing.configs import append_config
from rig2nwb.testing.filetrees import tree_checksums
from rig2nwb.testing.jobs import JobLab, alive, fault_env, nwb_iscell
from rig2nwb.testing.receivers import HttpReceiver
from rig2nwb.testing.waits import wait_for

FAULTS = Path(__file__).resolve().parents[1] / "faults"


def test_process_runs_the_job_and_attaches_its_results(tmp_path: Path) -> None:
    lab = JobLab(tmp_path / "lab", executor="none")
    rig_before = tree_checksums(lab.root)
    assert nwb_iscell(lab.nwb()) is None
    out = lab.run_cli("process", str(lab.folder), "--executor", "local", "--wait", "120")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "attached" in out.stdout and "Traceback" not in out.stderr
    np.testing.assert_array_equal(nwb_iscell(lab.nwb()), lab.expected_iscell(tmp_path / "x"))
    runs = lab.run_lines()
    assert len(runs) == 1 and runs[0].endswith("fs=30")  # the session's rate reached the job
    status = lab.status()
    assert status["processing"]["state"] == "done" and status["processing"]["exit_code"] == 0
    assert status["processing"]["job_id"].startswith("pid:")
    assert status["suite2p"]["state"] == "attached"
    assert tree_checksums(lab.root) == rig_before  # the job wrote outside the rig folder
    # Asked again: a new run, attached again (results replaced, still one set).
    again = lab.run_cli("process", str(lab.folder), "--executor", "local", "--wait", "120")
    assert again.returncode == 0, again.stderr
    assert len(lab.run_lines()) == 2


def test_process_without_an_executor_or_before_conversion_says_why(tmp_path: Path) -> None:
    lab = JobLab(tmp_path / "lab", executor="none")
    out = lab.run_cli("process", str(lab.folder))
    assert out.returncode == 1 and "no executor" in out.stderr and "Traceback" not in out.stderr
    out = lab.run_cli("process", str(lab.root / "m1" / "nosuch"))
    assert out.returncode == 1 and "nosuch: no such folder" in out.stderr
    (lab.root / "m1" / "other").mkdir()
    out = lab.run_cli("process", str(lab.root / "m1" / "other"))
    assert out.returncode == 1 and "no converted session" in out.stderr
    assert lab.run_lines() == []


def test_failed_job_shows_its_log_is_retried_then_stops(tmp_path: Path) -> None:
    lab = JobLab(tmp_path / "lab", executor="none", exit_code=3, sleep=0.5,
                 run={"retries": 1})
    out = lab.run_cli("process", str(lab.folder), "--executor", "local", "--wait", "60")
    assert out.returncode == 1
    assert "exit status 3" in out.stderr and "giving up with exit status 3" in out.stderr
    # The daemon's retry: once more (retries = 1), then no more; the failure is notified.
    lab.set_run(executor="local")
    http = HttpReceiver()
    append_config(lab.config_path, {"notify.targets": [{"url": http.url("/lab"),
                                                        "tags": ["problem"]}]})
    daemon = lab.start_daemon()
    try:
        wait_for(lambda: len(lab.run_lines()) >= 2 and lab.status()["processing"]["state"]
                 == "failed" and lab.status()["processing"]["attempt"] == 2, timeout=60,
                 what="the second attempt to fail")
        time.sleep(3)  # several polls: no third attempt
        assert len(lab.run_lines()) == 2
        status = lab.status()
        problem = " ".join(status["problems"])
        assert "exit status 3" in problem and "no retries left" in problem
        assert "giving up with exit status 3" in problem  # the log's tail, in the problem
        history = lab.run_cli("status", "m1/s1")
        assert "| stand-in suite2p: giving up with exit status 3" in history.stdout
        assert "registering" in history.stdout  # the progress line, as last shown
        assert nwb_iscell(lab.nwb()) is None
        wait_for(lambda: any("no retries left" in p.body for p in http.at("/lab")),
                 timeout=60, what="the failure's notification")
        told = next(p.body for p in http.at("/lab") if "no retries left" in p.body)
        assert "exit status 3" in told and "giving up with exit status 3" in told
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        http.close()


def test_daemon_runs_each_finished_session_once_and_attaches(tmp_path: Path) -> None:
    lab = JobLab(tmp_path / "lab", executor="local", convert=False, sleep=1.0,
                 output={"check_files": True})
    daemon = lab.start_daemon()
    try:
        lab.write_tiff()
        wait_for(lambda: lab.status()["suite2p"] is not None and lab.status()["suite2p"]
                 ["state"] == "attached", timeout=120, what="the job's results attached")
        np.testing.assert_array_equal(nwb_iscell(lab.nwb()), lab.expected_iscell(tmp_path / "x"))
        wait_for(lambda: lab.status()["validation"] not in (None, "pending"), timeout=120,
                 what="the file checked again")
        assert lab.status()["validation_ok"] is True
        time.sleep(3)
        assert len(lab.run_lines()) == 1
        assert lab.status()["processing"]["state"] == "done"
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)


def test_sessions_finished_before_jobs_were_on_are_left_alone(tmp_path: Path) -> None:
    lab = JobLab(tmp_path / "lab", executor="local")  # converted while jobs were off
    daemon = lab.start_daemon()
    try:
        time.sleep(4)
        assert lab.run_lines() == [] and lab.status()["processing"] is None
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)


def test_job_outlives_a_killed_daemon_and_is_adopted(tmp_path: Path) -> None:
    lab = JobLab(tmp_path / "lab", executor="local", convert=False, sleep=6.0)
    daemon = lab.start_daemon()
    lab.write_tiff()
    wait_for(lambda: len(lab.run_lines()) == 1, timeout=60, what="the job to start")
    daemon.kill()  # SIGKILL to the supervisor; its worker dies with it (PR_SET_PDEATHSIG)
    daemon.wait(timeout=30)
    wait_for(lambda: subprocess.run(["pgrep", "-f", "--", f"--worker --config {lab.config_path}"],
                                    capture_output=True).returncode == 1, timeout=30,
             what="the worker to be gone")
    job_pid = int(lab.run_lines()[0].split()[0])
    assert alive(job_pid)  # the job did not die with the daemon
    daemon = lab.start_daemon()
    try:
        wait_for(lambda: (lab.status()["suite2p"] or {}).get("state") == "attached",
                 timeout=120, what="the adopted job's results attached")
        assert len(lab.run_lines()) == 1  # adopted, never started twice
        np.testing.assert_array_equal(nwb_iscell(lab.nwb()), lab.expected_iscell(tmp_path / "x"))
        assert any("adopted" in e["message"] or "submitted" in e["message"]
                   for e in lab.history()["events"])
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)


def test_timeout_cancels_the_job_and_is_not_retried(tmp_path: Path) -> None:
    lab = JobLab(tmp_path / "lab", executor="none", sleep=60.0,
                 run={"timeout_minutes": 0.03, "retries": 2})
    out = lab.run_cli("process", str(lab.folder), "--executor", "local", "--wait", "60")
    assert out.returncode == 1 and "timeout_minutes" in out.stderr, out.stderr
    job_pid = int(lab.run_lines()[0].split()[0])
    wait_for(lambda: not alive(job_pid), timeout=20, what="the cancelled job's process to end")
    lab.set_run(executor="local")
    daemon = lab.start_daemon()
    try:
        time.sleep(3)
        assert len(lab.run_lines()) == 1  # a timeout would time out again: not retried
        assert lab.status()["processing"]["state"] == "failed"
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)


@pytest.mark.parametrize("ended_before_restart", [False, True])
def test_killed_between_start_and_record_never_runs_twice(tmp_path: Path,
                                                          ended_before_restart: bool) -> None:
    """SIGKILL right after the job was started, before its id reached the ledger: the next
    daemon finds the job by its process, or, when it has ended meanwhile, by what its folder
    says; it never starts a second one."""
    lab = JobLab(tmp_path / "lab", executor="none", sleep=0.5 if ended_before_restart else 3.0)
    env = fault_env("rig2nwb.processing.local:LocalExecutor.submit", "kill-after", FAULTS)
    out = subprocess.run([sys.executable, "-m", "rig2nwb", "process", str(lab.folder),
                          "--executor", "local", "--config", str(lab.config_path)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert lab.status()["processing"]["job_id"] is None  # started, but not recorded
    if ended_before_restart:
        wait_for(lambda: any((lab.state / "jobs").glob("*/exit_code")), timeout=60,
                 what="the job to end")
    lab.set_run(executor="local")
    daemon = lab.start_daemon()
    try:
        wait_for(lambda: (lab.status()["suite2p"] or {}).get("state") == "attached",
                 timeout=120, what="the job found and its results attached")
        assert len(lab.run_lines()) == 1
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)


@pytest.mark.parametrize("bad", ["{nope}", "{session_folder"])
def test_bad_command_template_is_a_config_error(tmp_path: Path, bad: str) -> None:
    lab = JobLab(tmp_path / "lab", executor="none", convert=False)
    lab.set_run(command=["echo", bad])
    out = lab.run_cli("check-config")
    assert out.returncode == 2 and "suite2p.run.command" in out.stderr + out.stdout


def test_slurm_tools_missing_is_a_failed_job_not_a_quarantine(tmp_path: Path) -> None:
    lab = JobLab(tmp_path / "lab", executor="none")
    env = {**os.environ, "PATH": str(tmp_path / "empty")}  # no sbatch, squeue, scontrol
    out = lab.run_cli("process", str(lab.folder), "--executor", "slurm", env=env)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "sbatch not found" in out.stderr or "squeue not found" in out.stderr
    status = lab.status()
    assert status["state"] == "finished"  # not quarantined
    assert status["processing"]["state"] == "failed"
    assert any("not installed" in p for p in status["problems"])
