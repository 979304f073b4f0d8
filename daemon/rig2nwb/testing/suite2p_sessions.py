"""A session of a real suite2p fixture (its raw TIFFs and a copy of its suite2p folder) in a lab's
rig folder, converted to NWB and ready for ``rig2nwb attach``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from rig2nwb.config.paths import resolve_session_folder
from rig2nwb.service.oneshot import convert_scope, one_shot
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.paths import shared_fixture

SUBJECT, SESSION = "m1", "s1"


def make_session(base: Path, name: str, compression: str = "none",
                 **imaging: Any) -> tuple[Lab, Path, Path]:
    """A rig folder holding one fixture's raw TIFFs and a copy of its suite2p output,
    converted to NWB (not yet attached)."""
    fixture = shared_fixture("suite2p", name)
    lab = Lab(base, rig={"frames": "{subject}/{session}/*.tif", "scan_file": "", "trial_file": ""},
              imaging={"frame_rate": 30.0, **imaging}, suite2p={"settle_seconds": 0},
              output={"compression": compression})
    folder = lab.root / SUBJECT / SESSION
    folder.mkdir(parents=True)
    for tif in sorted((fixture / "raw").glob("*.tif")):
        shutil.copy2(tif, folder / tif.name)
    cfg = lab.config()
    with one_shot(cfg, scope=resolve_session_folder(cfg, folder)) as run:
        convert_scope(run.engine)  # what `rig2nwb convert` does, without its report
        sess = run.ledger.session(SUBJECT, SESSION)
        assert sess is not None and sess.state == "finished", sess
    s2p = folder / "suite2p"
    shutil.copytree(fixture / "suite2p", s2p)
    return lab, fixture, s2p


def attach_cli(lab: Lab) -> subprocess.CompletedProcess[str]:
    """``rig2nwb attach`` of the session, as a child process."""
    return lab.run_cli("attach", str(lab.root / SUBJECT / SESSION))
