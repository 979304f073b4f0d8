"""Labs for the suite2p job tests: one converted session, and a job command that runs the
stand-in (testing.stand_in_job) with what the session holds, plus what a test needs to judge
the outcome independently (the suite2p folder the stand-in writes, made again by the test)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from rig2nwb.config.paths import resolve_session_folder
from rig2nwb.service.oneshot import convert_scope, one_shot
from rig2nwb.testing.configs import write_config
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.suite2p_folders import make_synthetic_folder, raw_npy
from rig2nwb.testing.tiffs import random_frames

SUBJECT, SESSION = "m1", "s1"
FRAMES, LY, LX, ROIS = 40, 32, 48, 5


def stand_in_command(runs: Path, *, sleep: float = 0.0, exit_code: int = 0) -> list[str]:
    return ["{python}", "-m", "rig2nwb.testing.stand_in_job", "--out", "{suite2p_folder}",
            "--frames", str(FRAMES), "--ly", str(LY), "--lx", str(LX), "--rois", str(ROIS),
            "--sleep", str(sleep), "--exit", str(exit_code), "--runs", str(runs),
            "--fs", "{fs}"]


class JobLab(Lab):
    """A lab whose session m1/s1 (40 frames of 32 x 48) waits for its suite2p job."""

    def __init__(self, base: Path, *, executor: str = "local", sleep: float = 0.0,
                 exit_code: int = 0, run: dict[str, Any] | None = None, convert: bool = True,
                 **overrides: dict[str, Any]) -> None:
        self.runs = base / "runs.txt"
        self.s2p_base = base / "s2p"
        sections: dict[str, dict[str, Any]] = {
            "rig": {"frames": "{subject}/{session}/*.tif", "scan_file": "", "trial_file": ""},
            "imaging": {"frame_rate": 30.0},
            "output": {"check_files": False},
            "suite2p": {"folder": str(self.s2p_base / "{subject}" / "{session}"),
                        "settle_seconds": 0, "interval_seconds": 1.0},
            "suite2p.run": {"executor": executor, "poll_seconds": 0.3,
                            "command": stand_in_command(self.runs, sleep=sleep,
                                                        exit_code=exit_code),
                            **(run or {})},
        }
        for name, values in overrides.items():
            sections.setdefault(name, {}).update(values)
        super().__init__(base, **sections)
        self.folder = self.root / SUBJECT / SESSION
        self.frames = random_frames(FRAMES, (LY, LX), seed=3)
        self.tiff_path = self.folder / "f1.tif"
        if convert:
            self.convert()

    def write_tiff(self) -> None:
        from rig2nwb.testing.tiffs import write_tiff

        write_tiff(self.tiff_path, self.frames)

    def convert(self, *, write: bool = True) -> None:
        """The session converted and finished (as `rig2nwb convert` leaves it), no job yet:
        jobs are off while converting, as they are for sessions finished before they were on."""
        if write:
            self.write_tiff()
        off = {**self.sections, "suite2p.run": {**self.sections["suite2p.run"],
                                                "executor": "none"}}
        write_config(self.config_path, off)
        try:
            cfg = self.config()
            with one_shot(cfg, scope=resolve_session_folder(cfg, self.folder)) as run:
                convert_scope(run.engine)
                sess = run.ledger.session(SUBJECT, SESSION)
                assert sess is not None and sess.state == "finished", sess
        finally:
            write_config(self.config_path, self.sections)

    def set_run(self, **values: Any) -> None:
        self.sections["suite2p.run"].update(values)
        write_config(self.config_path, self.sections)

    @property
    def suite2p_folder(self) -> Path:
        return self.s2p_base / SUBJECT / SESSION

    def run_lines(self) -> list[str]:
        return self.runs.read_text().splitlines() if self.runs.exists() else []

    def status(self) -> dict[str, Any]:
        out = self.run_cli("status", "--json")
        assert out.returncode == 0, out.stderr
        rows: list[dict[str, Any]] = json.loads(out.stdout)
        return rows[0]

    def history(self) -> dict[str, Any]:
        out = self.run_cli("status", f"{SUBJECT}/{SESSION}", "--json")
        assert out.returncode == 0, out.stderr
        rows: list[dict[str, Any]] = json.loads(out.stdout)
        return rows[0]

    def expected_iscell(self, scratch: Path) -> np.ndarray:
        """What the stand-in writes, written again here and read with numpy itself."""
        make_synthetic_folder(scratch, n_rois=ROIS, n_frames=FRAMES, Ly=LY, Lx=LX, style="1.x")
        return np.asarray(raw_npy(scratch / "plane0" / "iscell.npy"))[:, 0] > 0


def fault_env(target: str, mode: str, faults: Path, flag: Path | None = None) -> dict[str, str]:
    """The environment of a child that runs with a fault injected (tests/faults)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(faults),
                                                        os.environ.get("PYTHONPATH", "")]),
           "RIG2NWB_FAULT": target, "RIG2NWB_FAULT_MODE": mode}
    if flag is not None:
        env["RIG2NWB_FAULT_FILE"] = str(flag)
    return env


def nwb_iscell(nwb: Path) -> np.ndarray | None:
    """The NWB file's iscell column (None: no suite2p results in it), read with plain h5py."""
    with h5py.File(nwb, "r") as f:
        seg = "processing/ophys/ImageSegmentation"
        if seg not in f:
            return None
        tables = sorted(f[seg])
        assert len(tables) == 1, tables  # one plane
        return np.asarray(f[f"{seg}/{tables[0]}/iscell"][:]).astype(bool)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie is not running
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"



# A job that produces genuine suite2p output: after a delay, it copies a real suite2p 1.1.0
# result of the shared fixtures (whose raw TIFFs the session holds) to {suite2p_folder}.
COPY_SCRIPT = ('echo "$$" >> "$2"; sleep "$3"; mkdir -p "$(dirname "$1")" && '
               'cp -r "$0" "$1"')


def fixture_lab(base: Path, name: str, *, executor: str, delay: float = 2.0,
                run: dict[str, Any] | None = None, **imaging: Any) -> tuple[JobLab, Path]:
    """A lab whose session m1/s1 holds a shared suite2p fixture's raw TIFFs, converted (with
    jobs off), and whose job copies that fixture's suite2p folder. Returns the lab and the
    fixture (skips the test when the shared fixtures are absent)."""
    from rig2nwb.testing.paths import shared_fixture

    fixture = shared_fixture("suite2p", name)
    lab = JobLab(base, executor=executor, convert=False, imaging={"frame_rate": 30.0, **imaging},
                 run={"command": ["sh", "-c", COPY_SCRIPT, str(fixture / "suite2p"),
                                  "{suite2p_folder}", str(base / "runs.txt"), str(delay)],
                      **(run or {})})
    lab.folder.mkdir(parents=True, exist_ok=True)
    for tif in sorted((fixture / "raw").glob("*.tif")):
        (lab.folder / tif.name).write_bytes(tif.read_bytes())
    lab.convert(write=False)
    return lab, fixture


def fixture_iscell(fixture: Path, plane: int) -> np.ndarray:
    """The fixture's own iscell of one plane, read with numpy."""
    return np.asarray(raw_npy(fixture / "suite2p" / f"plane{plane}" / "iscell.npy"))[:, 0] > 0


def nwb_iscell_of(nwb: Path, table: str) -> np.ndarray:
    with h5py.File(nwb, "r") as f:
        return np.asarray(f[f"processing/ophys/ImageSegmentation/{table}/iscell"][:]).astype(bool)
