"""Opt-in (``--run-suite2p``): real suite2p 1.x, run by rig2nwb's default job command on a small
simulated session (rig2nwb.testing.simrig's movie: 12 cells, 128 x 128, 600 frames), through
both executors, with the lab's settings file named in a rig2nwb.toml sidecar. The job's Python
is $RIG2NWB_SUITE2P_PYTHON, or a venv this test makes once (``pip install -e '.[suite2p]'``,
several GB: torch) in ~/.cache/rig2nwb/suite2p-venv. The ROIs in the NWB file are compared with
suite2p's own arrays (read with numpy) and with the simulated cells."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from rig2nwb.config.paths import summary_png
from rig2nwb.config.schema import DEFAULT_JOB_COMMAND
from rig2nwb.testing.jobs import JobLab, nwb_iscell
from rig2nwb.testing.paths import REPO
from rig2nwb.testing.simrig import MovieSpec, SyntheticMovie

VENV = Path.home() / ".cache" / "rig2nwb" / "suite2p-venv"


@pytest.fixture(scope="module")
def suite2p_python(request: pytest.FixtureRequest) -> str:
    if not request.config.getoption("--run-suite2p"):
        pytest.skip("real suite2p: run with --run-suite2p")
    given = os.environ.get("RIG2NWB_SUITE2P_PYTHON")
    if given:
        return given
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", f"{REPO}[suite2p]"],
                   check=True, timeout=3600)
    return str(python)


@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_real_suite2p_from_frames_to_rois(executor: str, suite2p_python: str, tmp_path: Path,
                                          request: pytest.FixtureRequest) -> None:
    if executor == "slurm":
        request.getfixturevalue("cluster")
    lab = JobLab(tmp_path / "lab", executor="none", convert=False,
                 imaging={"frame_rate": 15.0}, output={"check_files": True},
                 status={"summary_picture": True},
                 run={"command": [suite2p_python, *DEFAULT_JOB_COMMAND[1:]],
                      "timeout_minutes": 30})
    sim = SyntheticMovie(MovieSpec(shape=(128, 128), rate=15.0, n_cells=12, seed=1))
    movie, cells = np.stack(list(sim.frames(0, 600))), sim.centers
    lab.folder.mkdir(parents=True)
    tifffile.imwrite(lab.folder / "file_00001.tif", movie[:300])
    tifffile.imwrite(lab.folder / "file_00002.tif", movie[300:])
    # The lab's settings for this subject: 64-pixel blocks for 128-pixel frames.
    (lab.root / "m1" / "s2p.toml").write_text(
        "[registration]\nblock_size = [64, 64]\n[detection]\nblock_size = [64, 64]\n")
    (lab.root / "m1" / "rig2nwb.toml").write_text('[suite2p]\nsettings = "s2p.toml"\n')
    lab.convert(write=False)
    t0 = time.monotonic()
    out = lab.run_cli("process", str(lab.folder), "--executor", executor, "--wait", "1500",
                      timeout=1800)
    seconds = time.monotonic() - t0
    assert out.returncode == 0, out.stdout + out.stderr
    plane = lab.suite2p_folder / "plane0"
    stat = np.load(plane / "stat.npy", allow_pickle=True)
    iscell = np.load(plane / "iscell.npy")[:, 0] > 0
    got = nwb_iscell(lab.nwb())
    assert got is not None and (got == iscell).all()
    found = [c for c in cells if any(np.hypot(*(np.asarray(s["med"]) - c)) < 5 for s in stat)]
    assert len(found) >= len(cells) // 2, (len(found), len(stat))
    log = Path(lab.status()["processing"]["log"])
    argv = json.loads((log.parent / "job.json").read_text())["argv"]
    assert argv[argv.index("--settings") + 1] == str(lab.root / "m1" / "s2p.toml")
    assert "suite2p 1." in log.read_text()
    assert summary_png(lab.config(), "m1", "s1").exists()
    print(f"\nreal suite2p via {executor}: {seconds:.0f} s from `rig2nwb process` to attached; "
          f"{len(stat)} ROIs ({int(iscell.sum())} cells), {len(found)} of {len(cells)} "
          f"simulated cells found")
