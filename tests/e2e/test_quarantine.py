"""No request, file or state takes the daemon down: one session's failure quarantines that session.

Faults are injected into the real daemon's own processes through ``tests/faults/sitecustomize.py``
on PYTHONPATH (production code carries no hooks): an exception raised inside each phase, and a
worker that dies (SIGKILL, segfault) inside one. Expectations are independent of rig2nwb: frames
come from the TIFFs the test wrote (read back by tifffile), restarts from the supervisor's own
log lines, states from ``rig2nwb status --json``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from rig2nwb.testing.labs import Lab
from rig2nwb.testing.paths import REPO
from rig2nwb.testing.suite2p_folders import make_synthetic_folder
from rig2nwb.testing.tiffs import random_frames, tiff_pages, write_tiff
from rig2nwb.testing.waits import wait_for

FAULTS = REPO / "tests" / "faults"
SHAPE = (16, 20)


def fault_env(target: str = "", *, mode: str = "raise", match: str = "s_bad",
              flag: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(FAULTS), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if target:
        env.update(RIG2NWB_FAULT=target, RIG2NWB_FAULT_MODE=mode, RIG2NWB_FAULT_MATCH=match)
        if flag is not None:
            env["RIG2NWB_FAULT_FILE"] = str(flag)
    return env


class Daemon:
    """``rig2nwb run`` (supervisor + worker) as a child process, its stderr kept in a file."""

    def __init__(self, lab: Lab, env: dict[str, str]) -> None:
        self.lab = lab
        self.stderr_path = lab.base / f"daemon-{time.monotonic_ns()}.err"
        self.stderr = open(self.stderr_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rig2nwb", "run", "--config", str(lab.config_path)],
            stdout=subprocess.DEVNULL, stderr=self.stderr, env=env)

    def restarts(self) -> int:
        """Workers the supervisor had to start again (its own log lines)."""
        return self.stderr_path.read_text().count("worker stopped; starting a new one")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        finally:
            self.stderr.close()
        return rc


def status(lab: Lab) -> dict[str, dict[str, Any]]:
    out = lab.run_cli("status", "--json")
    assert out.returncode == 0, out.stderr
    return {r["session"]: r for r in json.loads(out.stdout)}


def all_finished(lab: Lab, n: int) -> bool:
    rows = status(lab)
    return len(rows) == n and all(r["state"] == "finished" for r in rows.values())


def two_sessions(lab: Lab, files: int = 2) -> dict[str, list[Path]]:
    """A good and a bad session of ``files`` TIFFs each (the bad one's name carries the marker
    the injected faults look for)."""
    written: dict[str, list[Path]] = {}
    for k, (session, stem) in enumerate((("s_good", "g"), ("s_bad", "b"))):
        written[session] = []
        for i in range(files):
            path = lab.session_dir(session) / f"{stem}_{i + 1:05d}.tif"
            write_tiff(path, random_frames(6, SHAPE, seed=10 * k + i))
            written[session].append(path)
    return written


def make_fault_lab(tmp_path: Path, **overrides: dict[str, Any]) -> Lab:
    sections: dict[str, dict[str, Any]] = {
        "rig": {"scan_file": "", "trial_file": ""},
        "output": {"check_files": False},
        "completion": {"settle_seconds": 0.3, "session_idle_seconds": 1.5},
        "suite2p": {"interval_seconds": 1.0, "settle_seconds": 0},
        "status": {"page": False, "preview": False, "summary_picture": False},
    }
    for name, values in overrides.items():
        sections.setdefault(name, {}).update(values)
    return Lab(tmp_path, **sections)


def expected_frames(paths: list[Path]) -> np.ndarray:
    return np.concatenate([tiff_pages(p) for p in paths])


def assert_committed_frames_intact(lab: Lab, session: str, paths: list[Path]) -> int:
    """Every frame the ledger counts as committed equals the TIFF page it came from."""
    with sqlite3.connect(lab.state / "ledger.sqlite") as db:
        row = db.execute("SELECT s.nwb_path, s.nwb_created, r.frames_committed FROM sessions s"
                         " JOIN series r ON r.session_id = s.id WHERE s.session = ?",
                         (session,)).fetchone()
    nwb, created, committed = row
    if not created or not committed:
        return 0
    with h5py.File(nwb, "r", locking=False) as f:  # the daemon may hold it open: read anyway
        stored = np.asarray(f["acquisition/TwoPhotonSeries/data"][:committed])
    np.testing.assert_array_equal(stored, expected_frames(paths)[:committed])
    return int(committed)


# phase as the quarantine names it, the function broken, the argument text that selects s_bad
PHASES = [
    ("inspecting a TIFF", "rig2nwb.engine.appending:inspect_tiff", "s_bad"),
    ("appending frames", "rig2nwb.engine.appending:AppendJob._stream", "b_00002"),
    ("finalizing the session", "rig2nwb.engine.finalizing:Finalizer.finalize", "s_bad"),
    ("checking the file", "rig2nwb.engine.checks:CheckQueue._start", "s_bad"),
    ("looking at its suite2p folder", "rig2nwb.suite2p.stage:Suite2pStage._survey_one", "s_bad"),
    ("attaching suite2p results", "rig2nwb.suite2p.stage:Suite2pStage.attach", "s_bad"),
]


@pytest.mark.parametrize(("phase", "target", "match"), PHASES, ids=[p[0].split()[0] for p in PHASES])
def test_exception_in_a_phase_quarantines_only_that_session(tmp_path: Path, phase: str, target: str,
                                                             match: str) -> None:
    lab = make_fault_lab(tmp_path, output={"check_files": phase == "checking the file"})
    written = two_sessions(lab)
    if "suite2p" in phase:
        make_synthetic_folder(lab.session_dir("s_bad") / "suite2p", n_rois=3, n_frames=12,
                              Ly=SHAPE[0], Lx=SHAPE[1])
    flag = lab.base / "fault-on"
    flag.touch()
    daemon = Daemon(lab, fault_env(target, match=match, flag=flag))
    try:
        wait_for(lambda: status(lab).get("s_bad", {}).get("state") == "quarantined", timeout=90,
                 what=f"s_bad to be quarantined while {phase}")
        wait_for(lambda: status(lab)["s_good"]["state"] == "finished", timeout=60,
                 what="the good session to finish")
        rows = status(lab)
        q = rows["s_bad"]["quarantine"]
        assert q["phase"] == phase
        assert "InjectedFault: injected fault" in q["reason"]
        assert any(p.startswith(f"quarantined while {phase}: InjectedFault: injected fault")
                   for p in rows["s_bad"]["problems"]), rows["s_bad"]["problems"]
        assert daemon.alive() and daemon.restarts() == 0
        # The traceback is in the log, not in the status.
        log = (lab.state / "rig2nwb.log").read_text()
        assert "session quarantined" in log and "Traceback (most recent call last)" in log
        assert "Traceback" not in json.dumps(rows)
        assert_committed_frames_intact(lab, "s_good", written["s_good"])
        np.testing.assert_array_equal(
            h5py.File(lab.nwb("s_good"), "r")["acquisition/TwoPhotonSeries/data"][:],
            expected_frames(written["s_good"]))
        kept = assert_committed_frames_intact(lab, "s_bad", written["s_bad"])
        if phase == "appending frames":
            assert kept == 6  # the first file's frames, committed before the fault, stay

        # The quarantine holds: nothing touches the session any more.
        time.sleep(2.5)
        assert status(lab)["s_bad"]["state"] == "quarantined"

        # The cause is fixed (an upgrade): retry carries on from what is committed.
        flag.unlink()
        out = lab.run_cli("retry", "m1/s_bad")
        assert out.returncode == 0, out.stderr
        assert "quarantine lifted" in out.stdout
        if "suite2p" in phase:
            wait_for(lambda: (status(lab)["s_bad"]["suite2p"] or {}).get("state") == "attached",
                     timeout=60, what="the suite2p results to be attached after retry")
        else:
            wait_for(lambda: status(lab)["s_bad"]["state"] == "finished", timeout=60,
                     what="the session to finish after retry")
        row = status(lab)["s_bad"]
        assert row["quarantine"] is None and not any("quarantined" in p for p in row["problems"])
        if phase == "checking the file":
            wait_for(lambda: status(lab)["s_bad"]["validation_ok"] is not None, timeout=60,
                     what="the check after retry")
        with h5py.File(lab.nwb("s_bad"), "r") as f:
            np.testing.assert_array_equal(f["acquisition/TwoPhotonSeries/data"][:],
                                          expected_frames(written["s_bad"]))
        assert daemon.restarts() == 0
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize(("mode", "target", "match", "phase"), [
    ("kill", "rig2nwb.engine.appending:AppendJob._stream", "b_00002", "appending frames"),
    ("segv", "rig2nwb.engine.finalizing:Finalizer.finalize", "s_bad", "finalizing the session"),
])
def test_worker_dying_in_a_session_quarantines_it_after_two_deaths(
        tmp_path: Path, mode: str, target: str, match: str, phase: str) -> None:
    lab = make_fault_lab(tmp_path)
    written = two_sessions(lab)
    daemon = Daemon(lab, fault_env(target, mode=mode, match=match))
    try:
        wait_for(lambda: status(lab).get("s_bad", {}).get("state") == "quarantined", timeout=120,
                 what="s_bad to be quarantined after the worker died twice")
        wait_for(lambda: status(lab)["s_good"]["state"] == "finished", timeout=60,
                 what="the good session to finish")
        q = status(lab)["s_bad"]["quarantine"]
        assert q["phase"] == phase
        signal_name = "SIGKILL" if mode == "kill" else "SIGSEGV"
        assert q["reason"] == f"the worker died 2 times in a row during it (last: killed by {signal_name})"
        time.sleep(3)  # no third death: the quarantined session is not retried
        assert daemon.alive() and daemon.restarts() == 2
        assert_committed_frames_intact(lab, "s_good", written["s_good"])
        kept = assert_committed_frames_intact(lab, "s_bad", written["s_bad"])
        assert kept == (6 if mode == "kill" else 12)
    finally:
        assert daemon.stop() == 0


def test_exception_while_recovering_at_start(tmp_path: Path) -> None:
    """A session that breaks start-up recovery is quarantined; the others are recovered and go on."""
    lab = make_fault_lab(tmp_path, completion={"session_idle_seconds": 3600})
    written = two_sessions(lab, files=3)  # two complete files each (the third one is next_file-less)
    daemon = Daemon(lab, fault_env())
    def both_appended() -> bool:
        rows = status(lab)
        return len(rows) == 2 and all(r["frames"] >= 12 for r in rows.values())

    wait_for(both_appended, timeout=60, what="both sessions to have appended frames")
    assert daemon.stop() == 0
    daemon = Daemon(lab, fault_env("rig2nwb.engine.engine:Engine._recover_one", match="s_bad"))
    try:
        wait_for(lambda: status(lab)["s_bad"]["state"] == "quarantined", timeout=60,
                 what="s_bad to be quarantined while recovering")
        assert status(lab)["s_bad"]["quarantine"]["phase"] == "recovering"
        extra = random_frames(6, SHAPE, seed=99)
        write_tiff(lab.session_dir("s_good") / "g_00004.tif", extra)
        written["s_good"].append(lab.session_dir("s_good") / "g_00004.tif")
        wait_for(lambda: status(lab)["s_good"]["frames"] >= 18, timeout=60,
                 what="the good session to go on after start-up")
        assert daemon.restarts() == 0
        assert_committed_frames_intact(lab, "s_good", written["s_good"])
        assert_committed_frames_intact(lab, "s_bad", written["s_bad"])
    finally:
        assert daemon.stop() == 0


def test_reported_sequence_attach_without_results_while_the_daemon_runs(tmp_path: Path) -> None:
    """The reported bug, end to end: `attach` on a finished session without a suite2p folder
    while `run` runs used to crash-loop the worker for good. Now it is answered at once, by the
    client and by the daemon, and nothing else changes."""
    lab = make_fault_lab(tmp_path)
    written = two_sessions(lab)
    daemon = Daemon(lab, fault_env())
    try:
        wait_for(lambda: all_finished(lab, 2), timeout=60, what="both sessions to finish")
        t0 = time.monotonic()
        out = lab.run_cli("attach", str(lab.session_dir("s_bad")), "--wait", "10")
        took = time.monotonic() - t0
        assert out.returncode == 1
        folder = lab.session_dir("s_bad") / "suite2p"
        assert out.stderr.strip().splitlines()[-1].startswith(f"rig2nwb: no suite2p folder at {folder}")
        assert "Traceback" not in out.stderr
        assert took < 8, took  # the interpreter's start-up included; no waiting on the daemon
        # A request the client could not check beforehand reaches the daemon, which answers it
        # without a crash: the folder vanishes between the client's look and the daemon's.
        make_synthetic_folder(folder, n_rois=2, n_frames=12, Ly=SHAPE[0], Lx=SHAPE[1])
        proc = subprocess.Popen(
            [sys.executable, "-m", "rig2nwb", "attach", str(lab.session_dir("s_bad")),
             "--wait", "10", "--config", str(lab.config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # (race either way: attached, or "no suite2p folder"; never a worker crash)
        _stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode in (0, 1) and "Traceback" not in stderr, stderr
        time.sleep(2)
        rows = status(lab)
        assert daemon.alive() and daemon.restarts() == 0
        assert all(r["state"] == "finished" and r["quarantine"] is None for r in rows.values())
        for session, paths in written.items():
            assert_committed_frames_intact(lab, session, paths)
    finally:
        assert daemon.stop() == 0
    # convert and status on that state folder work afterwards
    out = lab.run_cli("convert", str(lab.session_dir("s_good")))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr


def test_attach_without_results_and_no_daemon_answers_at_once(tmp_path: Path) -> None:
    lab = make_fault_lab(tmp_path)
    two_sessions(lab)
    assert lab.run_cli("convert", str(lab.session_dir("s_bad"))).returncode == 0
    out = lab.run_cli("attach", str(lab.session_dir("s_bad")))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("rig2nwb: no suite2p folder at ")
    rows = status(lab)
    assert rows["s_bad"]["suite2p"] is None  # no row claiming "ready" for a missing folder


def test_request_for_a_quarantined_session_is_refused_at_once(tmp_path: Path) -> None:
    lab = make_fault_lab(tmp_path)
    two_sessions(lab)
    daemon = Daemon(lab, fault_env("rig2nwb.engine.finalizing:Finalizer.finalize", match="s_bad"))
    try:
        wait_for(lambda: status(lab).get("s_bad", {}).get("state") == "quarantined", timeout=60,
                 what="s_bad to be quarantined")
        t0 = time.monotonic()
        out = lab.run_cli("attach", str(lab.session_dir("s_bad")), "--wait", "30")
        assert time.monotonic() - t0 < 8
        assert out.returncode == 1
        assert "is quarantined (while finalizing the session: InjectedFault: injected fault" in out.stderr
        assert "rig2nwb retry m1/s_bad" in out.stderr
        conv = lab.run_cli("convert", str(lab.session_dir("s_bad")))
        assert conv.returncode == 1  # the daemon owns the state folder: refused in one line
        assert len(conv.stderr.strip().splitlines()) == 1 and "Traceback" not in conv.stderr
    finally:
        assert daemon.stop() == 0
    # Without the daemon, convert refuses the quarantined session in one line as well.
    conv = lab.run_cli("convert", str(lab.session_dir("s_bad")))
    assert conv.returncode == 1 and "is quarantined" in conv.stderr.strip().splitlines()[-1]


def test_request_fault_quarantines_and_answers(tmp_path: Path) -> None:
    """An exception while the daemon serves an attach request: the client gets a refusal naming
    the quarantine at once, the daemon goes on."""
    lab = make_fault_lab(tmp_path, suite2p={"enabled": False})
    written = two_sessions(lab)
    make_synthetic_folder(lab.session_dir("s_bad") / "suite2p", n_rois=3, n_frames=12,
                          Ly=SHAPE[0], Lx=SHAPE[1])
    daemon = Daemon(lab, fault_env("rig2nwb.suite2p.stage:Suite2pStage.attach", match="s_bad"))
    try:
        wait_for(lambda: all_finished(lab, 2), timeout=60, what="both sessions to finish")
        out = lab.run_cli("attach", str(lab.session_dir("s_bad")), "--wait", "30")
        assert out.returncode == 1
        assert ("quarantined (while attaching suite2p results (asked by rig2nwb attach): "
                "InjectedFault: injected fault") in out.stderr
        assert daemon.alive() and daemon.restarts() == 0
        assert_committed_frames_intact(lab, "s_bad", written["s_bad"])
    finally:
        assert daemon.stop() == 0


# --- a damaged or unexpected ledger -------------------------------------------------------------

def _converted_lab(tmp_path: Path) -> tuple[Lab, dict[str, list[Path]]]:
    lab = make_fault_lab(tmp_path)
    written = two_sessions(lab)
    for session in written:
        out = lab.run_cli("convert", str(lab.session_dir(session)))
        assert out.returncode == 0, out.stderr
    return lab, written


def _damage(ledger: Path, how: str) -> None:
    if how == "garbage":
        ledger.write_bytes(np.random.default_rng(0).bytes(8192))
    elif how == "truncated":
        data = ledger.read_bytes()
        ledger.write_bytes(data[: len(data) // 2])
    elif how == "corrupt_page":
        db = sqlite3.connect(ledger)  # enough pages for an index and table b-trees
        with db:
            db.executemany("INSERT INTO events (session_id, at, stage, message) VALUES (1, 0, 'x', ?)",
                           [("x" * 200,) for _ in range(400)])
        db.close()  # checkpointed into the main file
        page = 4096
        data = bytearray(ledger.read_bytes())
        data[3 * page: 3 * page + 64] = b"\xff" * 64  # a b-tree page header, mid-file
        ledger.write_bytes(bytes(data))
    elif how == "missing_table":
        db = sqlite3.connect(ledger)
        with db:
            db.execute("DROP TABLE files")
        db.close()
    else:
        raise AssertionError(how)


def _one_line_error(out: subprocess.CompletedProcess[str], expect: str) -> None:
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr + out.stdout
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("rig2nwb: ") and expect in last, last


@pytest.mark.parametrize("how", ["garbage", "truncated", "corrupt_page", "missing_table"])
def test_damaged_ledger_is_reported_in_one_line_by_every_command(tmp_path: Path, how: str) -> None:
    lab, _ = _converted_lab(tmp_path)
    ledger = lab.state / "ledger.sqlite"
    db = sqlite3.connect(ledger)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file
    db.close()
    _damage(ledger, how)
    before = ledger.read_bytes()
    for args in (["status"], ["status", "--json"], ["status", "m1/s_good"],
                 ["convert", str(lab.session_dir("s_good"))],
                 ["attach", str(lab.session_dir("s_good"))], ["retry", "m1/s_bad"],
                 ["demo", "--files", "1", "--frames-per-file", "4", "--size", "16", "--idle", "1"]):
        out = lab.run_cli(*args, timeout=120)
        _one_line_error(out, f"the ledger {ledger} is damaged")
        assert "move it aside" in out.stderr
    assert ledger.read_bytes() == before  # reported, never "repaired" behind the lab's back
    # The daemon does not start on it, says why once, and is not restarted in a loop.
    daemon = Daemon(lab, fault_env())
    rc = daemon.proc.wait(timeout=60)
    daemon.stderr.close()
    assert rc == 4 and daemon.restarts() == 0
    assert f"the ledger {ledger} is damaged" in daemon.stderr_path.read_text()


def test_unexpected_rows_are_worked_around(tmp_path: Path) -> None:
    """Rows no version of rig2nwb writes (hand-edited, or from a newer version): status shows
    every session, the bad one with what is wrong; the daemon quarantines the session it cannot
    work on and converts the others."""
    lab, written = _converted_lab(tmp_path)
    with sqlite3.connect(lab.state / "ledger.sqlite") as db:
        db.execute("ALTER TABLE sessions ADD COLUMN from_the_future TEXT")  # a newer version
        db.execute("CREATE TABLE future_things (x)")
        db.execute("UPDATE sessions SET layout='not json', validation='{', state='acquiring'"
                   " WHERE session='s_bad'")
        db.execute("INSERT INTO suite2p (session_id, folder, state, detail, summary, updated_at)"
                   " SELECT id, '/nowhere', 'attached', '', 'garbage', 0 FROM sessions"
                   " WHERE session='s_bad'")
    out = lab.run_cli("status", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["session"]: r for r in json.loads(out.stdout)}
    assert rows["s_good"]["state"] == "finished" and rows["s_good"]["frames"] == 12
    assert any("ledger row cannot be read" in p for p in rows["s_bad"]["problems"])
    for args in (["status"], ["status", "s_bad"]):
        out = lab.run_cli(*args)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        assert "s_bad" in out.stdout
    daemon = Daemon(lab, fault_env())
    try:
        wait_for(lambda: status(lab)["s_bad"]["state"] == "quarantined", timeout=60,
                 what="the unreadable session to be quarantined")
        assert "JSONDecodeError" in status(lab)["s_bad"]["quarantine"]["reason"]
        extra = lab.session_dir("s_good") / "g_00003.tif"
        write_tiff(extra, random_frames(6, SHAPE, seed=7))
        wait_for(lambda: status(lab)["s_good"]["frames"] == 18
                 and status(lab)["s_good"]["state"] == "finished", timeout=60,
                 what="the other session to take a new file")
        assert daemon.restarts() == 0
        assert_committed_frames_intact(lab, "s_good", [*written["s_good"], extra])
    finally:
        assert daemon.stop() == 0


# --- small things -------------------------------------------------------------------------------

def test_status_says_when_rig_root_does_not_exist(tmp_path: Path) -> None:
    lab = make_fault_lab(tmp_path)
    lab.root.rmdir()
    out = lab.run_cli("status")
    assert out.returncode == 0
    assert f"rig.root {lab.root} does not exist" in out.stderr


def test_check_config_warns_when_timezone_is_unset(tmp_path: Path) -> None:
    lab = make_fault_lab(tmp_path)
    text = lab.config_path.read_text().replace('timezone = "Europe/Berlin"\n', "")
    lab.config_path.write_text(text)
    out = lab.run_cli("check-config")
    assert "warning: session.timezone is not set" in out.stdout
    lab2 = make_fault_lab(tmp_path / "b")
    assert "session.timezone" not in lab2.run_cli("check-config").stdout


def test_no_config_in_the_working_folder_is_one_line(tmp_path: Path) -> None:
    for args in (["status"], ["run"], ["convert", "x"], ["check-config"]):
        out = subprocess.run([sys.executable, "-m", "rig2nwb", *args], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2
        assert out.stderr.strip() == (f"rig2nwb: no config.toml in {tmp_path} (the folder looked "
                                      "in); give the configuration with --config PATH")


def test_session_finishing_without_required_lab_files_is_a_warning(tmp_path: Path) -> None:
    lab = make_fault_lab(tmp_path, rig={"scan_file": "{subject}/txt/{session}_scan.txt",
                                        "trial_file": "{subject}/txt/{session}_trial.txt"})
    write_tiff(lab.session_dir("s1") / "a_00001.tif", random_frames(6, SHAPE))
    out = lab.run_cli("convert", str(lab.session_dir("s1")))
    assert out.returncode == 0, out.stderr
    row = status(lab)["s1"]
    assert row["state"] == "finished"
    assert any(w.startswith("finished without its lab file(s) {subject}/txt/{session}_scan.txt and "
                            "{subject}/txt/{session}_trial.txt") for w in row["warnings"]), row


def test_sigterm_stops_the_daemon_within_10_s_even_when_the_worker_hangs(tmp_path: Path) -> None:
    """A read that never returns (a hung share): the worker ignores SIGTERM while stuck, the
    supervisor kills it after its grace period, and the service still stops within 10 s."""
    lab = make_fault_lab(tmp_path)
    two_sessions(lab)
    daemon = Daemon(lab, fault_env("rig2nwb.engine.appending:AppendJob._stream", mode="hang",
                                   match="b_00001"))
    log = lab.state / "rig2nwb.log"
    wait_for(lambda: log.exists() and '"nwb created"' in log.read_text()
             and "ses-s_bad" in log.read_text(), timeout=60,
             what="the worker to reach s_bad's first append (where it hangs)")
    time.sleep(1)
    t0 = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    rc = daemon.proc.wait(timeout=30)
    took = time.monotonic() - t0
    daemon.stderr.close()
    assert rc == 0 and took < 10, (rc, took)
    assert "worker did not stop in time; killing it" in daemon.stderr_path.read_text()
