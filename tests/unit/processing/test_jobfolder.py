"""A job's folder run as SLURM runs it (``sh run.sh``) and as the local wrapper runs it, its log
tail, and the default job command's answers when suite2p or its settings are missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rig2nwb.processing.jobfolder import JobFolder
from rig2nwb.suite2p.job import EXIT_BAD_SETTINGS, EXIT_NO_SUITE2P, read_settings


def test_batch_script_records_start_and_exit_status(tmp_path: Path) -> None:
    folder = JobFolder(tmp_path, "tok")
    folder.write([sys.executable, "-c", "import sys; print('hi \\'there\\''); sys.exit(7)"],
                 title="m1/s1")
    out = subprocess.run(["sh", str(folder.script)], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert out.returncode == 7 and out.stdout == "hi 'there'\n"  # quoting survived
    seen = folder.status()
    assert seen.exit_code == 7 and seen.started_at is not None and seen.pid is None
    assert json.loads(folder.spec.read_text())["title"] == "m1/s1"


def test_local_wrapper_logs_and_records_exit_status(tmp_path: Path) -> None:
    folder = JobFolder(tmp_path, "tok")
    folder.write([sys.executable, "-c", "import sys; print('to the log'); sys.exit(5)"],
                 title="t")
    rc = subprocess.run([sys.executable, "-m", "rig2nwb.processing.runjob", str(folder.path)],
                        timeout=60).returncode
    assert rc == 5
    assert folder.status().exit_code == 5 and folder.status().pid is not None
    assert folder.log_tail() == ["to the log"]
    folder.write(["/no/such/program"], title="t")
    rc = subprocess.run([sys.executable, "-m", "rig2nwb.processing.runjob", str(folder.path)],
                        timeout=60).returncode
    assert rc == 127 and "cannot start '/no/such/program'" in folder.log_tail()[-1]


def test_log_tail_shows_progress_bars_as_last_drawn_and_reads_little(tmp_path: Path) -> None:
    folder = JobFolder(tmp_path, "tok")
    folder.path.mkdir(parents=True)
    with open(folder.log, "wb") as f:
        f.write(b"x" * 10_000_000 + b"\n")  # a 10 MB log: only its end is read
        f.write(b"start\n10%\r50%\r100%\nbad \xff byte\n\n")
    assert folder.log_tail(3) == ["start", "100%", "bad \ufffd byte"]
    assert JobFolder(tmp_path, "none").log_tail() == []


def test_settings_files_in_three_formats_never_run_pickles(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"tau": 1.5}')
    (tmp_path / "a.toml").write_text("tau = 1.5\n[detection]\nthreshold_scaling = 2.0\n")
    np.save(tmp_path / "a.npy", np.array({"tau": 1.5}, dtype=object), allow_pickle=True)
    assert read_settings(tmp_path / "a.json") == {"tau": 1.5}
    assert read_settings(tmp_path / "a.toml")["detection"] == {"threshold_scaling": 2.0}
    assert read_settings(tmp_path / "a.npy") == {"tau": 1.5}
    (tmp_path / "b.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a dict"):
        read_settings(tmp_path / "b.json")


def test_default_job_says_how_to_get_suite2p(tmp_path: Path) -> None:
    pytest.importorskip("numpy")
    try:
        import suite2p  # noqa: F401
        pytest.skip("suite2p is installed here: tests/e2e/test_suite2p_job.py runs it")
    except ImportError:
        pass
    out = subprocess.run([sys.executable, "-m", "rig2nwb.suite2p.job", "--session-folder",
                          str(tmp_path), "--suite2p-folder", str(tmp_path / "s2p"), "--fs", "30"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == EXIT_NO_SUITE2P
    assert "pip install 'rig2nwb[suite2p]'" in out.stderr and "Traceback" not in out.stderr
    assert EXIT_BAD_SETTINGS != EXIT_NO_SUITE2P
