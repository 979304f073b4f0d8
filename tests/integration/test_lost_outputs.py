"""A finished session whose NWB file disappears (deleted by someone, moved away) is rebuilt
from its TIFFs and says so, by `convert` and by the daemon; found by the stateful test, where
`convert` said "done" for a file that did not exist. The expectations are the TIFFs' pages."""

from __future__ import annotations

import json
import shutil

import numpy as np

from rig2nwb.testing.labs import Lab
from rig2nwb.testing.nwbfiles import nwb_frames
from rig2nwb.testing.tiffs import random_frames, tiff_pages


def _status(lab: Lab) -> dict[str, object]:
    proc = lab.run_cli("status", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 1
    return rows[0]  # type: ignore[no-any-return]


def test_convert_rebuilds_a_deleted_file(lab: Lab) -> None:
    a = lab.tiff("r_00001.tif", random_frames(5, seed=1))
    b = lab.tiff("r_00002.tif", random_frames(5, seed=2))
    assert lab.run_cli("convert", str(lab.session_dir()), "--no-progress").returncode == 0
    lab.nwb().unlink()
    proc = lab.run_cli("convert", str(lab.session_dir()), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert lab.nwb().is_file()
    assert np.array_equal(nwb_frames(lab.nwb()), np.concatenate([tiff_pages(a), tiff_pages(b)]))
    row = _status(lab)
    assert row["state"] == "finished"
    assert any("is missing; rebuilt from the TIFFs" in p for p in row["problems"]), row


def test_an_unreachable_output_folder_is_not_a_deletion(lab: Lab) -> None:
    lab.tiff("r_00001.tif", random_frames(5, seed=1))
    assert lab.run_cli("convert", str(lab.session_dir()), "--no-progress").returncode == 0
    moved = lab.out.with_name("nwb-unmounted")
    shutil.move(lab.out, moved)  # the share's mount point is gone, with everything in it
    proc = lab.run_cli("convert", str(lab.session_dir()), "--no-progress")
    shutil.move(moved, lab.out)
    row = _status(lab)
    assert row["state"] == "finished" and row["problems"] == [], (proc.stderr, row)
