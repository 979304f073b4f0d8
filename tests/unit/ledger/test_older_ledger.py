"""A ledger written by an older rig2nwb (before suite2p jobs) is read by `rig2nwb status` before
any daemon has upgraded it: status works (read-only, so the missing table cannot be made), and
the next writer adds the table. Found by the CI run: a `status` racing a starting daemon."""

from __future__ import annotations

import json
import sqlite3

from rig2nwb.testing.labs import Lab
from rig2nwb.testing.tiffs import random_frames


def test_status_reads_a_ledger_without_the_jobs_table(lab: Lab) -> None:
    frames = random_frames(5, seed=2)
    lab.tiff("x_00001.tif", frames)
    lab.lab_files(n_frames=len(frames))
    assert lab.run_cli("convert", str(lab.session_dir())).returncode == 0
    ledger = lab.state / "ledger.sqlite"
    with sqlite3.connect(ledger) as db:  # what a ledger of the previous version holds
        db.execute("DROP TABLE jobs")
    out = lab.run_cli("status", "--json")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)[0]
    assert row["state"] == "finished" and row["frames"] == 5 and row["processing"] is None
    history = lab.run_cli("status", "s1")
    assert history.returncode == 0 and "Traceback" not in history.stderr, history.stderr
    with sqlite3.connect(ledger) as db:
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name='jobs'").fetchall()
    # The next writer (a command or the daemon) upgrades the ledger.
    assert lab.run_cli("convert", str(lab.session_dir())).returncode == 0
    with sqlite3.connect(ledger) as db:
        assert db.execute("SELECT 1 FROM sqlite_master WHERE name='jobs'").fetchall()
