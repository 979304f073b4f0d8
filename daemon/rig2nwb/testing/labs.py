"""``Lab``: a temporary rig folder, output and state folders, and a config that points at them,
with the ways a test starts rig2nwb on it (the daemon or a command, as child processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rig2nwb.config.loading import load_config
from rig2nwb.config.schema import Config
from rig2nwb.testing.configs import write_config
from rig2nwb.testing.tiffs import write_tiff
from rig2nwb.testing.waits import wait_for


class Lab:
    """A temporary rig folder, output and state folders, and a config that points at them."""

    def __init__(self, base: Path, **overrides: dict[str, Any]) -> None:
        self.base = base
        self.root = base / "rig"
        self.out = base / "nwb"
        self.state = base / "state"
        for p in (self.root, self.out):
            p.mkdir(parents=True, exist_ok=True)
        self.sections: dict[str, dict[str, Any]] = {
            "rig": {"root": str(self.root)},
            "output": {"folder": str(self.out), "compression": "none", "min_free_mb": 0},
            "state": {"folder": str(self.state)},
            "watch": {"rescan_seconds": 2.0},
            "completion": {"settle_seconds": 0.5, "session_idle_seconds": 2.0},
            "append": {"batch_frames": 16, "commit_every_frames": 32},
            "session": {"timezone": "Europe/Berlin"},
            "subject": {"age": "P90D"},  # DANDI requires it: nwbinspector calls its absence critical
            "logging": {"format": "json", "file": str(base / "state" / "rig2nwb.log")},
            # Drawing the summary picture adds ~1.5 s to every check child; the tests about
            # pictures (and notifications carrying them) turn it back on.
            "status": {"summary_picture": False},
        }
        for section, values in overrides.items():
            self.sections.setdefault(section, {}).update(values)
        self.config_path = write_config(base / "config.toml", self.sections)

    def config(self) -> Config:
        return load_config(self.config_path)

    def session_dir(self, session: str = "s1", subject: str = "m1", site: str = "site1") -> Path:
        return self.root / subject / "tif" / site / session

    def tiff(self, name: str, frames: np.ndarray, session: str = "s1", subject: str = "m1",
             site: str = "site1") -> Path:
        path = self.session_dir(session, subject, site) / name
        write_tiff(path, frames)
        return path

    def lab_files(self, session: str = "s1", subject: str = "m1", *, n_frames: int) -> None:
        """The lab's scan file (onsets of ``n_frames`` frames at exactly 30 Hz, in ms: equal to
        the nominal timestamps) and a one-trial trial file."""
        txt = self.root / subject / "txt"
        txt.mkdir(parents=True, exist_ok=True)
        (txt / f"{session}_scan.txt").write_text(
            " ".join(repr(i * 1000.0 / 30.0) for i in range(n_frames)) + "\n")
        (txt / f"{session}_trial.txt").write_text("10 5 0 0.04 0 90\n")

    def nwb(self, session: str = "s1", subject: str = "m1") -> Path:
        return self.out / f"sub-{subject}_ses-{session}.nwb"

    def start_daemon(self, *, wait_until_watching: bool = True,
                     prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
        """`rig2nwb run` as a child process (supervisor + worker), optionally until it watches;
        ``prefix`` wraps the command (e.g. setpriv)."""
        daemon = subprocess.Popen(
            [*prefix, sys.executable, "-m", "rig2nwb", "run", "--config", str(self.config_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if wait_until_watching:
            log = self.state / "rig2nwb.log"
            try:
                wait_for(lambda: log.exists() and '"watching"' in log.read_text(), timeout=60,
                         what="the daemon to start watching")
            except AssertionError:
                daemon.kill()
                raise
        return daemon

    def run_cli(self, *args: str, timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rig2nwb", *args, "--config", str(self.config_path)],
            capture_output=True, text=True, timeout=timeout, **kw)
