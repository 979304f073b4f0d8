"""The rig2nwb config files the benchmarks write: a minimal one for ``rig2nwb convert`` and the
latency daemon (``write_config``), and the sections a measured ``rig2nwb run`` starts from
(``base_sections`` + ``write_daemon_config``). Every key not written keeps rig2nwb's default.

rig2nwb is imported inside the functions: the peers venv, which imports the kit too, has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

TomlValue = str | int | float | bool | list[str]


def write_config(path: Path, *, writer: str, rig_root: Path, output: Path, state: Path,
                 compression: str, level: int | None = None, settle: float | None = None,
                 rescan: float | None = None, signals: Sequence[str] | None = None) -> None:
    """A minimal rig2nwb config; everything not written here keeps rig2nwb's defaults
    (``level``: output.compression_level, else the compression's default level). ``writer``:
    the script named in the file's comment."""
    from rig2nwb.testing.configs import write_config as write_toml

    out: dict[str, object] = {"folder": str(output), "compression": compression}
    if level is not None:
        out["compression_level"] = level
    # The post-session file check (pynwb validator + nwbinspector, ~1-2 s in a child process
    # after the session) is not part of the append path measured here.
    out["check_files"] = False
    sections: dict[str, dict[str, object]] = {
        "rig": {"name": "bench", "root": str(rig_root)}, "output": out,
        "state": {"folder": str(state)}, "subject": {"age": "P90D"}}
    completion: dict[str, object] = {}
    if settle is not None:
        completion["settle_seconds"] = float(settle)
    if signals is not None:
        completion["signals"] = list(signals)
    if completion:
        sections["completion"] = completion
    if rescan is not None:
        sections["watch"] = {"rescan_seconds": float(rescan)}
    # JSON explicitly (not "auto"): the benchmark parses the log lines.
    sections["logging"] = {"level": "INFO", "format": "json"}
    write_toml(path, sections, comment=f"Written by benchmarks/{writer}")


def write_daemon_config(path: Path, sections: dict[str, dict[str, TomlValue]], writer: str) -> None:
    """A rig2nwb config holding only ``sections``: every other key keeps rig2nwb's default."""
    from rig2nwb.testing.configs import write_config as write_toml

    write_toml(path, sections, comment=f"Written by benchmarks/{writer}")


def base_sections(rig_root: Path, output: Path, state: Path) -> dict[str, dict[str, TomlValue]]:
    """rig/output/state/logging, and the default layout with an end marker so a session finishes
    as soon as the rig says so (instead of after session_idle_seconds = 300 s)."""
    return {
        "rig": {"name": "bench", "root": str(rig_root),
                "end_marker": "{subject}/tif/{site}/{session}/acquisition_done",
                # The simulated rig writes no lab files; with the end marker they are not needed.
                "scan_file": "", "trial_file": ""},
        "output": {"folder": str(output)},
        "state": {"folder": str(state)},
        # DANDI wants an age; without it every finished file gets a check message (noise only).
        "subject": {"age": "P90D"},
        # JSON explicitly (not "auto"): the benchmarks parse the log lines.
        "logging": {"level": "INFO", "format": "json"},
    }


def end_marker(session_folder: Path) -> Path:
    return session_folder / "acquisition_done"
