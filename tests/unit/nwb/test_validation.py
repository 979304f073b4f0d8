"""rig2nwb.nwb.check: pynwb validation + nwbinspector on finished files, in-process and in a child.

The files are written here with pynwb (and damaged with h5py), never by rig2nwb's writer, so the
expected verdicts come from the test's own construction.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import h5py
import pytest

from rig2nwb.nwb.check import CheckRun, check_nwb
from rig2nwb.nwb.checksummary import IMPORTANCES, CheckSummary
from rig2nwb.testing.nwbfiles import write_nwb


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nwb(tmp_path_factory.mktemp("nwb") / "good.nwb", compress=True)


def test_good_file_is_ok(good: Path) -> None:
    s = check_nwb(good)
    assert s.failed is None, s.failed
    assert s.validation_errors == 0
    assert set(s.counts) == set(IMPORTANCES)
    assert s.counts["CRITICAL"] == 0 and s.counts["ERROR"] == 0, s.messages
    assert s.ok
    assert s.short().startswith("valid; nwbinspector: 0 critical, ")
    assert s.seconds > 0


def test_species_not_binomial_is_critical(tmp_path: Path) -> None:
    s = check_nwb(write_nwb(tmp_path / "mouse.nwb", species="mouse"))
    assert s.failed is None and s.validation_errors == 0
    assert s.counts["CRITICAL"] == 1, s.messages
    assert s.messages[0].startswith("CRITICAL check_subject_species_form: /general/subject: ")
    assert not s.ok
    assert "1 critical" in s.short()


def test_timestamps_shorter_than_data_is_critical(tmp_path: Path, good: Path) -> None:
    # What a crash between extending data and timestamps could leave behind; pynwb refuses to
    # write it, so cut the timestamps with h5py.
    path = tmp_path / "short_ts.nwb"
    shutil.copy(good, path)
    with h5py.File(path, "a") as f:
        g = f["acquisition/TwoPhotonSeries"]
        ts, attrs = g["timestamps"][:30], dict(g["timestamps"].attrs)
        del g["timestamps"]
        g.create_dataset("timestamps", data=ts).attrs.update(attrs)
    s = check_nwb(path)
    assert s.validation_errors == 0 and s.failed is None
    assert s.counts["CRITICAL"] == 1
    assert any("check_timestamps_match_first_dimension" in m and "(40)" in m and "(30)" in m
               for m in s.messages), s.messages


def test_missing_required_attribute_is_a_validation_error(tmp_path: Path, good: Path) -> None:
    path = tmp_path / "no_unit.nwb"
    shutil.copy(good, path)
    with h5py.File(path, "a") as f:
        del f["acquisition/TwoPhotonSeries/data"].attrs["unit"]
    s = check_nwb(path)
    assert s.failed is None
    assert s.validation_errors == 1
    assert s.messages[0].startswith("VALIDATION: ") and "unit" in s.messages[0]
    assert not s.ok
    assert s.short().startswith("1 validation error; nwbinspector: ")


def test_file_pynwb_cannot_read_fails_with_reason(tmp_path: Path, good: Path) -> None:
    path = tmp_path / "no_device.nwb"
    shutil.copy(good, path)
    with h5py.File(path, "a") as f:
        del f["general/devices/Microscope"]
    s = check_nwb(path)
    assert s.validation_errors >= 1
    assert s.failed is not None and "pynwb could not read the file" in s.failed and "device" in s.failed
    assert len(s.failed) < 500
    assert not s.ok


@pytest.mark.parametrize("kind", ["missing", "text", "folder"])
def test_unreadable_path_fails(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x.nwb"
    if kind == "text":
        path.write_text("not hdf5")
    elif kind == "folder":
        path.mkdir()
    s = check_nwb(path)
    assert s.failed is not None and str(path) in s.failed
    assert not s.ok
    assert s.short().startswith("check failed: ")


def test_json_round_trip_and_short() -> None:
    s = CheckSummary(validation_errors=2, counts={"CRITICAL": 1, "BEST_PRACTICE_VIOLATION": 1,
                                                  "BEST_PRACTICE_SUGGESTION": 5, "ERROR": 0},
                     messages=["VALIDATION: a", "CRITICAL b"], seconds=1.5)
    assert CheckSummary.from_json(s.to_json()) == s
    assert s.short() == "2 validation errors; nwbinspector: 1 critical, 1 violation, 5 suggestions"
    assert CheckSummary().short() == "valid; nwbinspector: 0 critical, 0 violations, 0 suggestions"
    assert CheckSummary.failure("boom").short() == "check failed: boom"
    for bad in ("", "[]", "{}", '{"counts": 3, "validation_errors": 0}', "garbage"):
        with pytest.raises(ValueError):
            CheckSummary.from_json(bad)


def test_check_run_end_to_end(good: Path) -> None:
    run = CheckRun.start(good, timeout_s=120)
    s = run.wait()
    assert s.failed is None and s.ok, s
    assert CheckSummary.from_json(s.to_json()) == s
    assert run.poll() is s  # stays answered


def test_check_run_child_reports_unreadable_file(tmp_path: Path) -> None:
    s = CheckRun.start(tmp_path / "missing.nwb").wait()
    assert s.failed == f"file not found: {tmp_path / 'missing.nwb'}"


def test_check_run_killed_child_fails_without_raising(good: Path) -> None:
    run = CheckRun.start(good)
    assert run.poll() is None  # importing pynwb alone takes longer than this
    if sys.platform == "win32":
        run.proc.kill()
    else:
        os.kill(run.pid, signal.SIGKILL)
    s = run.wait()
    assert s.failed is not None
    if sys.platform != "win32":
        assert "killed by signal 9" in s.failed


def test_check_run_timeout_kills_child(good: Path) -> None:
    run = CheckRun.start(good, timeout_s=0.3)
    t0 = time.monotonic()
    s = run.wait(0.05)
    assert s.failed is not None and s.failed.startswith("timed out after 0.3 s")
    assert time.monotonic() - t0 < 5
    assert run.proc.poll() is not None  # the child is gone


def test_check_run_cancel(good: Path) -> None:
    run = CheckRun.start(good)
    run.cancel()
    assert run.proc.poll() is not None
    s = run.poll()
    assert s is not None and s.failed == "cancelled"


@pytest.mark.skipif(sys.platform == "win32", reason="uses a shell script as the child")
def test_check_run_garbage_output_fails(good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho 'Segmentation fault? not JSON'\necho 'some warning' >&2\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    s = CheckRun.start(good).wait()
    assert s.failed is not None and "printed no summary" in s.failed and "some warning" in s.failed
