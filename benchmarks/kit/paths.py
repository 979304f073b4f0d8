"""Where things are, and how to start benchmark code in a child process from any folder.

The benchmarks folder, the repository root and the peers venv are found from this file, never
from the current directory. A child that runs benchmark code (a script's hidden subcommand, or a
kit module such as ``benchmarks.kit.h5append``) is started as ``python -m benchmarks....`` with the
repository root on its ``PYTHONPATH`` (``module_env``), so it works whatever the cwd is and in
the peers venv too. Standard library only.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

BENCHMARKS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = BENCHMARKS_DIR.parent
# NeuroConv and its readers, in a venv of their own (bash benchmarks/setup_peers.sh)
PEERS_PYTHON = BENCHMARKS_DIR / ".venv-peers" / "bin" / "python"
SETUP_PEERS = BENCHMARKS_DIR / "setup_peers.sh"


def module_command(module: str, *args: str, python: str | Path | None = None) -> list[str]:
    """``python -m module args...`` (this interpreter unless ``python`` is given). Run it with
    ``env=module_env()`` so ``benchmarks`` is importable whatever the child's cwd."""
    return [str(python or sys.executable), "-m", module, *args]


def module_env() -> dict[str, str]:
    """This process's environment with the repository root first on ``PYTHONPATH`` (unless it
    is on it already), so a child can import ``benchmarks``."""
    env = dict(os.environ)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO_ROOT) not in parts:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *parts])
    return env


def command_line(module: str, argv: Sequence[str]) -> str:
    """How this run can be repeated from the repository root: ``python -m module argv...``."""
    return shlex.join(module_command(module, *argv))


def make_workdir(given: Path | None, prefix: str = "rig2nwb-bench-") -> Path:
    """A fresh folder: inside ``given`` if set (never reusing old data), else under /tmp."""
    if given is None:
        return Path(tempfile.mkdtemp(prefix=prefix))
    given.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=given))
