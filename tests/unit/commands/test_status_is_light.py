"""`rig2nwb status` answers from the ledger alone: the libraries that read HDF5, NWB and TIFF
files or watch folders are never imported (they cost seconds on a slow share; the status
command runs on every experimenter's request). Measured in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rig2nwb.config.paths import ledger_path
from rig2nwb.ledger.store import Ledger
from rig2nwb.testing.labs import Lab

HEAVY = ("h5py", "pynwb", "hdmf", "tifffile", "watchdog", "hdf5plugin", "matplotlib")

PROBE = """
import json, sys
from rig2nwb.commands.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "loaded": sorted(m for m in %r if m in sys.modules)}))
"""


def test_status_command_imports_no_file_library(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    ledger = Ledger(ledger_path(lab.config()))
    sess = ledger.ensure_session("m1", "s1", "site1", str(lab.out / "sub-m1_ses-s1.nwb"))
    ledger.update_session(sess.id, state="acquiring")
    ledger.close()
    for args in (["status"], ["status", "--json"], ["status", "m1/s1"]):
        out = subprocess.run(
            [sys.executable, "-c", PROBE % (HEAVY,), *args, "--config", str(lab.config_path)],
            capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result == {"code": 0, "loaded": []}, (args, result)
