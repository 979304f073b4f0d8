"""The suite2p stage end to end: partial and inconsistent folders, hostile pickles, the scheduled
survey in the running service, re-curation, and SIGKILL during a replace."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from rig2nwb.ledger.store import Ledger
from rig2nwb.testing.figures import record
from rig2nwb.testing.filetrees import tree_checksums
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.services import run_service
from rig2nwb.testing.suite2p_folders import raw_npy
from rig2nwb.testing.suite2p_sessions import SESSION, SUBJECT, attach_cli, make_session


def ledger_row(lab: Lab) -> Any:
    ledger = Ledger(lab.state / "ledger.sqlite", readonly=True)
    try:
        sess = ledger.session(SUBJECT, SESSION)
        assert sess is not None
        return ledger.suite2p(sess.id)
    finally:
        ledger.close()


def assert_valid_without_results(nwb: Path) -> None:
    from pynwb import validate

    assert not validate(path=str(nwb))
    with h5py.File(nwb, "r") as f:
        assert "ophys" not in f["processing"]
        assert not [k for k in f["processing"] if "staging" in k]


def iscell_in_nwb(nwb: Path, table: str = "PlaneSegmentation_plane0") -> np.ndarray:
    with h5py.File(nwb, "r") as f:
        return np.asarray(f[f"processing/ophys/ImageSegmentation/{table}/iscell"][:])


class Evil:
    """A pickle payload that would create ``marker`` when loaded unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def write_object_npy(path: Path, obj: Any) -> None:
    """An .npy with an object array header whose pickle holds ``obj`` (as suite2p writes
    stat.npy), made with numpy's own writer."""
    arr = np.empty(1, dtype=object)
    arr[0] = obj
    np.save(path, arr, allow_pickle=True)


# --- broken folders: reported, nothing written, then attached once fixed -------------------------


def _missing_spks(s2p: Path, tmp: Path) -> str:
    (s2p / "plane1" / "spks.npy").unlink()
    return "spks.npy"


def _short_f(s2p: Path, tmp: Path) -> str:
    f = np.load(s2p / "plane0" / "F.npy")
    np.save(s2p / "plane0" / "F.npy", f[:, :-3])
    return "F.npy"


def _iscell_rows(s2p: Path, tmp: Path) -> str:
    iscell = np.load(s2p / "plane0" / "iscell.npy")
    np.save(s2p / "plane0" / "iscell.npy", iscell[:-1])
    return "iscell.npy"


def _truncated_f(s2p: Path, tmp: Path) -> str:
    path = s2p / "plane1" / "F.npy"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy still in progress
    return "F.npy"


def _evil_stat(s2p: Path, tmp: Path) -> str:
    write_object_npy(s2p / "plane0" / "stat.npy", {"ypix": Evil(tmp / "pwned")})
    return "stat.npy"


BREAKAGES = [_missing_spks, _short_f, _iscell_rows, _truncated_f, _evil_stat]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=[b.__name__.strip("_") for b in BREAKAGES])
def test_broken_folder_is_reported_then_attached_once_fixed(tmp_path: Path, breakage: Any) -> None:
    lab, fixture, s2p = make_session(tmp_path / "lab", "twoplane", planes=2)
    name = breakage(s2p, tmp_path)
    res = attach_cli(lab)
    assert res.returncode == 1
    # Log lines go to stderr too; the command's own answer is its last line.
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("rig2nwb: ") and "Traceback" not in res.stderr
    assert name in line, line
    assert not (tmp_path / "pwned").exists()
    assert_valid_without_results(lab.nwb(SESSION, SUBJECT))
    status = json.loads(lab.run_cli("status", "--json").stdout)[0]
    record("bad_input", case=f"suite2p_folder_{breakage.__name__.strip('_')}",
           handled=res.returncode == 1 and name in line and name in status["suite2p"]["detail"]
           and not (tmp_path / "pwned").exists(), detail=line)
    assert status["suite2p"]["state"] in ("problem", "incomplete")
    assert name in status["suite2p"]["detail"]
    if status["suite2p"]["state"] == "problem":
        assert any(name in p for p in status["problems"])

    shutil.rmtree(s2p)
    shutil.copytree(fixture / "suite2p", s2p)
    res = attach_cli(lab)
    assert res.returncode == 0, res.stderr
    status = json.loads(lab.run_cli("status", "--json").stdout)[0]
    assert status["suite2p"]["state"] == "attached"
    assert not [p for p in status["problems"] if "suite2p" in p or name in p]


def test_hostile_pickles_in_every_pickled_file_never_run(tmp_path: Path) -> None:
    lab, fixture, s2p = make_session(tmp_path / "lab", "twoplane", planes=2)
    marker = tmp_path / "ran"
    payloads: list[Any] = [Evil(marker)]
    for target in ("ops.npy", "stat.npy"):
        for payload in payloads:
            shutil.rmtree(s2p)
            shutil.copytree(fixture / "suite2p", s2p)
            if target == "ops.npy":
                ops = raw_npy(fixture / "suite2p" / "plane0" / "ops.npy")
                ops["meanImg"] = payload
                np.save(s2p / "plane0" / "ops.npy", np.array(ops, dtype=object), allow_pickle=True)
            else:
                stat = list(raw_npy(fixture / "suite2p" / "plane0" / "stat.npy"))
                stat[3] = {**stat[3], "lam": payload}
                arr = np.empty(len(stat), dtype=object)
                arr[:] = stat
                np.save(s2p / "plane0" / "stat.npy", arr, allow_pickle=True)
            res = attach_cli(lab)
            refused = res.returncode == 1 and target in res.stderr and "system" in res.stderr
            record("security", test=f"hostile pickle in suite2p {target} (real attach)", tried=1,
                   refused=int(refused and not marker.exists()))
            assert res.returncode == 1
            assert target in res.stderr and "os.system" in res.stderr.replace("posix.system", "os.system")
            assert not marker.exists()
    assert_valid_without_results(lab.nwb(SESSION, SUBJECT))
    # The pickle is what it claims: numpy's unrestricted loader would have run it.
    np.load(s2p / "plane0" / "stat.npy", allow_pickle=True)
    assert marker.exists()


# --- the running service: survey, attach, re-curation ---------------------------------------------


def test_service_attaches_when_complete_and_replaces_after_recuration(tmp_path: Path) -> None:
    lab, fixture, s2p = make_session(tmp_path / "lab", "twoplane", planes=2)
    # suite2p is still running: plane1 has no traces yet.
    for name in ("F.npy", "Fneu.npy", "spks.npy"):
        (s2p / "plane1" / name).unlink()
    lab.sections["suite2p"].update(interval_seconds=0.3, settle_seconds=0)
    from rig2nwb.testing.configs import write_config
    write_config(lab.config_path, lab.sections)
    rig_before = tree_checksums(lab.root)

    def state(want: str) -> Any:
        def check(engine: Any) -> bool:
            sess = engine.ledger.session(SUBJECT, SESSION)
            row = engine.ledger.suite2p(sess.id)
            return row is not None and row.state == want and (
                want != "attached" or engine.ledger.session_by_id(sess.id).validation is not None)
        return check

    run_service(lab, state("incomplete"), timeout=60)
    row = ledger_row(lab)
    assert "plane1" in row.detail and "F.npy" in row.detail
    assert_valid_without_results(lab.nwb(SESSION, SUBJECT))

    for name in ("F.npy", "Fneu.npy", "spks.npy"):
        shutil.copy2(fixture / "suite2p" / "plane1" / name, s2p / "plane1" / name)
    run_service(lab, state("attached"), timeout=120)
    first = ledger_row(lab)
    iscell = raw_npy(fixture / "suite2p" / "plane0" / "iscell.npy")
    np.testing.assert_array_equal(iscell_in_nwb(lab.nwb(SESSION, SUBJECT)), iscell[:, 0] > 0)

    # Re-curation in the suite2p GUI: two ROIs change their mind.
    curated = iscell.copy()
    curated[[0, 5], 0] = 1 - curated[[0, 5], 0]
    np.save(s2p / "plane0" / "iscell.npy", curated)

    def replaced(engine: Any) -> bool:
        sess = engine.ledger.session(SUBJECT, SESSION)
        row = engine.ledger.suite2p(sess.id)
        return (row.state == "attached" and row.attached != first.attached
                and engine.ledger.session_by_id(sess.id).validation is not None)

    run_service(lab, replaced, timeout=120)
    nwb = lab.nwb(SESSION, SUBJECT)
    np.testing.assert_array_equal(iscell_in_nwb(nwb), curated[:, 0] > 0)
    with h5py.File(nwb, "r") as f:
        assert sorted(f["processing"]) == ["ophys"]
    from pynwb import validate
    assert not validate(path=str(nwb))
    status = json.loads(lab.run_cli("status", "--json").stdout)[0]
    assert status["validation_ok"] is True
    assert status["suite2p"]["state"] == "attached"
    history = json.loads(lab.run_cli("status", SESSION, "--json").stdout)[0]
    assert any("suite2p replaced" in e["message"] for e in history["events"])
    # rig files untouched (the suite2p folder is the lab's too: only our own edit changed it)
    after = tree_checksums(lab.root)
    changed = {k for k in after if rig_before.get(k) != after[k]}
    assert changed <= {"m1/s1/suite2p/plane1/F.npy", "m1/s1/suite2p/plane1/Fneu.npy",
                       "m1/s1/suite2p/plane1/spks.npy", "m1/s1/suite2p/plane0/iscell.npy"}


# --- SIGKILL during a replace: complete old or complete new ---------------------------------------


def test_killed_replace_leaves_complete_old_or_new_results(tmp_path: Path,
                                                           request: pytest.FixtureRequest) -> None:
    trials = request.config.getoption("--crash-trials") or 3
    lab, fixture, s2p = make_session(tmp_path / "lab", "twoplane", planes=2)
    assert attach_cli(lab).returncode == 0
    nwb = lab.nwb(SESSION, SUBJECT)
    f_expected = raw_npy(fixture / "suite2p" / "plane1" / "F.npy").T
    version = raw_npy(fixture / "suite2p" / "plane0" / "iscell.npy")
    rng = random.Random(7)
    cmd = [sys.executable, "-m", "rig2nwb", "attach", str(lab.root / SUBJECT / SESSION),
           "--config", str(lab.config_path)]
    # How long an attach takes here, to spread the kills over it.
    new = version.copy()
    new[0, 0] = 1 - new[0, 0]
    np.save(s2p / "plane0" / "iscell.npy", new)
    t0 = time.monotonic()
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    duration = time.monotonic() - t0
    version = new
    outcomes = {"old": 0, "new": 0, "survived": 0}
    try:
        killed_replaces(cmd, s2p, nwb, version, f_expected, trials, rng, duration, outcomes)
    finally:  # recorded before the assertions below (and whatever failed above)
        record("crash", test=request.node.name, trials_run=trials,
               trials_survived=outcomes["survived"],
               frames_expected=0, frames_lost=0, frames_duplicated=0,
               phases={"suite2p replace": trials}, suite2p_old=outcomes["old"],
               suite2p_new=outcomes["new"])
    from pynwb import validate
    assert not validate(path=str(nwb))
    with h5py.File(nwb, "r") as f:
        assert sorted(f["processing"]) == ["ophys"]
    print(f"killed replace: {outcomes}")


def killed_replaces(cmd: list[str], s2p: Path, nwb: Path, version: np.ndarray,
                    f_expected: np.ndarray, trials: int, rng: random.Random, duration: float,
                    outcomes: dict[str, int]) -> None:
    """Kill ``trials`` re-curation replaces at random instants; count the outcomes and the
    trials that left the complete old or new results and that the next attach finished."""
    for trial in range(trials):
        new = version.copy()
        new[trial % len(new), 0] = 1 - new[trial % len(new), 0]
        np.save(s2p / "plane0" / "iscell.npy", new)
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, duration))
        child.send_signal(signal.SIGKILL)
        child.wait()
        got = iscell_in_nwb(nwb)
        if np.array_equal(got, version[:, 0] > 0):
            outcomes["old"] += 1
        else:
            np.testing.assert_array_equal(got, new[:, 0] > 0)
            outcomes["new"] += 1
        with h5py.File(nwb, "r") as f:  # and the rest of that version is complete
            np.testing.assert_array_equal(
                f["processing/ophys/Fluorescence/RoiResponseSeries_plane1/data"][:], f_expected)
        # The next attach (here: the command again, as after a restart) finishes the job.
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        np.testing.assert_array_equal(iscell_in_nwb(nwb), new[:, 0] > 0)
        version = new
        outcomes["survived"] += 1


def test_killed_first_attach_leaves_no_results_or_complete_ones(tmp_path: Path,
                                                                request: pytest.FixtureRequest
                                                                ) -> None:
    """SIGKILL during the first attach of a session: a reader then finds no suite2p results
    or the complete ones, never a partial module; the next attach (as after a restart) recovers
    and leaves a valid file with the complete results. Each trial starts again from the file
    and ledger as converted (copies restored while nothing runs)."""
    from pynwb import validate

    trials = request.config.getoption("--crash-trials") or 3
    lab, fixture, _s2p = make_session(tmp_path / "lab", "twoplane", planes=2)
    nwb = lab.nwb(SESSION, SUBJECT)
    pristine = tmp_path / "pristine"
    shutil.copytree(lab.state, pristine / "state")
    shutil.copy2(nwb, pristine / nwb.name)

    def restore() -> None:
        shutil.rmtree(lab.state)
        shutil.copytree(pristine / "state", lab.state)
        shutil.copy2(pristine / nwb.name, nwb)

    f_expected = raw_npy(fixture / "suite2p" / "plane1" / "F.npy").T
    iscell = raw_npy(fixture / "suite2p" / "plane0" / "iscell.npy")[:, 0] > 0

    def complete(f: h5py.File) -> bool:
        ophys = "processing/ophys"
        np.testing.assert_array_equal(
            f[f"{ophys}/ImageSegmentation/PlaneSegmentation_plane0/iscell"][:], iscell)
        np.testing.assert_array_equal(f[f"{ophys}/Fluorescence/RoiResponseSeries_plane1/data"][:],
                                      f_expected)
        return True

    cmd = [sys.executable, "-m", "rig2nwb", "attach", str(lab.root / SUBJECT / SESSION),
           "--config", str(lab.config_path)]
    t0 = time.monotonic()
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    duration = time.monotonic() - t0  # to spread the kills over an attach
    rng = random.Random(11)
    outcomes = {"none": 0, "complete": 0, "survived": 0}
    try:
        for _ in range(trials):
            restore()
            child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.2, duration))
            child.send_signal(signal.SIGKILL)
            child.wait()
            with h5py.File(nwb, "r") as f:  # what a reader sees right after the kill
                if "ophys" in f["processing"]:
                    outcomes["complete"] += complete(f)
                else:
                    outcomes["none"] += 1
            res = subprocess.run(cmd, capture_output=True, text=True)
            assert res.returncode == 0, res.stderr
            with h5py.File(nwb, "r") as f:
                assert sorted(f["processing"]) == ["ophys"]  # no staging leftovers
                complete(f)
            assert not validate(path=str(nwb))
            outcomes["survived"] += 1
    finally:
        record("crash", test=request.node.name, trials_run=trials,
               trials_survived=outcomes["survived"], frames_expected=0, frames_lost=0,
               frames_duplicated=0, phases={"suite2p first attach": trials},
               suite2p_old=outcomes["none"], suite2p_new=outcomes["complete"])
    print(f"killed first attach: {outcomes}")
