"""What the figures were measured on: the machine, its disk, the software versions on both sides
(this venv and benchmarks/.venv-peers) and rig2nwb's git revision.

``environment_lines`` is the short header the scripts print first; ``machine_description`` is
the ``machine`` object of the shared JSON result (``machine_lines`` prints it). Standard library
only at module level (psutil, h5py and friends are imported where used).
"""

from __future__ import annotations

import os
import platform
import subprocess
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.kit.paths import PEERS_PYTHON, REPO_ROOT


def _run(cmd: Sequence[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


# --- rig2nwb's revision and the packages of another interpreter -------------------------------


def git_revision() -> tuple[str | None, bool | None]:
    """(short HEAD, whether daemon/ has uncommitted changes), by read-only git commands."""
    head = _run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"]) or None
    if head is None:
        return None, None
    # Only daemon/ counts: benchmark scripts being edited do not change what is measured.
    return head, bool(_run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "daemon"]))


def git_state() -> str:
    """'git abc1234' and whether daemon/ has uncommitted changes."""
    head, dirty = git_revision()
    return f"git {head or '?'}" + (", daemon/ has uncommitted changes" if dirty else "")


def versions(python: str, packages: Sequence[str]) -> str:
    """'name version, ...' of packages installed for another interpreter."""
    if not Path(python).exists():
        return f"{python} missing (run: bash benchmarks/setup_peers.sh)"
    code = ("import importlib.metadata as m, sys\n"
            "for n in sys.argv[1:]:\n"
            "    try: print(n, m.version(n))\n"
            "    except m.PackageNotFoundError: print(n, '-')\n")
    proc = subprocess.run([python, "-c", code, *packages], capture_output=True, text=True,
                          check=False)
    return ", ".join(proc.stdout.split("\n")[:-1]) if proc.returncode == 0 else "unknown"


# --- the header the scripts print -------------------------------------------------------------


def environment_lines(workdir: Path) -> list[str]:
    """rig2nwb and library versions, CPUs and load, RAM, and the workdir's disk (mount options
    included: e.g. "discard" makes deleting the previous run's output cost I/O)."""
    import h5py
    import hdf5plugin
    import numpy as np
    import psutil  # type: ignore[import-untyped]  # no stubs installed
    import tifffile

    mount = max((p for p in psutil.disk_partitions(all=True)
                 if str(workdir.resolve()).startswith(p.mountpoint)),
                key=lambda p: len(p.mountpoint), default=None)
    disk = f"{mount.device} ({mount.fstype}, {mount.opts}) at {mount.mountpoint}" if mount else "?"
    vm = psutil.virtual_memory()
    return [
        f"rig2nwb {_version('rig2nwb')} ({git_state()}); "
        f"h5py {h5py.__version__} / HDF5 {h5py.version.hdf5_version}; tifffile "
        f"{tifffile.__version__}; hdf5plugin {hdf5plugin.version}; numpy {np.__version__}",
        f"{psutil.cpu_count()} CPUs, load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"RAM {vm.total / 1e9:.1f} GB ({vm.available / 1e9:.1f} GB available)",
        f"workdir {workdir} on {disk}",
    ]


# --- the machine object of the shared JSON result ---------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 1e9, 1)
    except (OSError, ValueError):
        pass
    return None


def _disk(path: Path) -> str:
    """``df -T -h`` of the folder: device, file system, size, free space, mount point."""
    lines = _run(["df", "-T", "-h", str(path)]).splitlines()
    if len(lines) < 2:
        return "?"
    dev, fstype, size, _used, avail, _pct, *mount = lines[-1].split()
    return f"{dev} ({fstype}, {size}, {avail} free) at {' '.join(mount)}"


def _neuroconv_version() -> str | None:
    if not PEERS_PYTHON.exists():
        return None
    code = "import importlib.metadata as m; print(m.version('neuroconv'))"
    return _run([str(PEERS_PYTHON), "-c", code]) or None


def machine_description(workdir: Path | None = None) -> dict[str, Any]:
    """What the figures were measured on: hardware, the workdir's disk and software versions."""
    where = workdir if workdir is not None and workdir.exists() else Path(tempfile.gettempdir())
    hdf5: str | None = None
    try:
        import h5py

        hdf5 = h5py.version.hdf5_version
    except ImportError:
        pass
    head, dirty = git_revision()
    uname = platform.uname()
    return {
        "cpu": _cpu_model(), "cpus": os.cpu_count(), "ram_gb": _ram_gb(),
        "disk": f"{where}: {_disk(where)}",
        "kernel": f"{uname.system} {uname.release} {uname.machine}",
        "python": platform.python_version(),
        "h5py": _version("h5py"), "hdf5": hdf5, "pynwb": _version("pynwb"), "hdmf": _version("hdmf"),
        "hdf5plugin": _version("hdf5plugin"), "tifffile": _version("tifffile"),
        "numpy": _version("numpy"), "rig2nwb": _version("rig2nwb"), "git": head,
        "daemon_dirty": dirty, "neuroconv": _neuroconv_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def machine_lines(m: dict[str, Any]) -> list[str]:
    git = m.get("git") or "?"
    if m.get("daemon_dirty"):
        git += ", daemon/ has uncommitted changes"
    neuroconv = m.get("neuroconv") or f"not installed ({PEERS_PYTHON.relative_to(REPO_ROOT)} missing)"
    return [
        f"CPU: {m.get('cpu')}, {m.get('cpus')} cores; RAM {m.get('ram_gb')} GB; load average "
        f"{', '.join(str(x) for x in m.get('load_average') or [])}",
        f"disk: {m.get('disk')}",
        f"kernel: {m.get('kernel')}; Python {m.get('python')}",
        f"h5py {m.get('h5py')} / HDF5 {m.get('hdf5')}; pynwb {m.get('pynwb')}; hdmf {m.get('hdmf')}; "
        f"hdf5plugin {m.get('hdf5plugin')}; tifffile {m.get('tifffile')}; numpy {m.get('numpy')}",
        f"rig2nwb {m.get('rig2nwb')} (git {git}); NeuroConv {neuroconv}",
        f"date: {m.get('date')}",
    ]

