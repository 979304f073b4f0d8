"""The lab view: every rig's sessions in one table (`rig2nwb lab CONFIG ...`).

Read-only by construction, so that it can never slow or block a rig: each rig's ledger is opened
read-only (SQLite WAL readers never wait for the writer, nor make it wait), its lock is never
touched, and whether its daemon runs is told by its heartbeat file alone (core.liveness). A rig
that cannot be read (its config, a share that is down, permissions) becomes one row saying so;
the other rigs are shown all the same.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rig2nwb.config.loading import load_config
from rig2nwb.config.paths import heartbeat_path, ledger_path
from rig2nwb.config.schema import Config
from rig2nwb.core.humanize import clip
from rig2nwb.core.liveness import Liveness, liveness
from rig2nwb.core.names import printable
from rig2nwb.errors import ConfigError
from rig2nwb.outputs.status import (
    check_cell,
    frames_cell,
    local_time,
    own_problems,
    snapshot,
    sort_rows,
    suite2p_cell,
)


@dataclass
class RigView:
    """One rig as the lab view sees it."""

    config: Path
    name: str
    cfg: Config | None
    daemon: Liveness
    rows: list[dict[str, Any]] = field(default_factory=list)
    rig_wide: list[str] = field(default_factory=list)
    error: str | None = None  # why the rig could not be read (None: it was)

    def daemon_json(self) -> dict[str, Any]:
        return {"state": self.daemon.state, "age_seconds": self.daemon.age_seconds,
                "detail": self.daemon.detail}


def config_files(args: list[Path]) -> list[Path]:
    """The config files named, a folder standing for every ``*.toml`` in it (sorted)."""
    out: list[Path] = []
    for arg in args:
        out += sorted(arg.glob("*.toml")) if arg.is_dir() else [arg]
    return out


def read_rig(path: Path, now: float | None = None) -> RigView:
    """One rig: its sessions, rig-wide problems and daemon state; never raises."""
    now = time.time() if now is None else now
    try:
        cfg = load_config(path, check_paths=False, check_secrets=False)
    except (ConfigError, OSError) as exc:
        return RigView(path, path.stem, None,
                       Liveness("stopped", None, "unknown: its configuration cannot be read"),
                       error=f"the configuration cannot be read ({path}): {_one_line(exc)}")
    daemon = _daemon(cfg, now)
    view = RigView(path, cfg.rig.name, cfg, daemon)
    try:
        if not ledger_path(cfg).exists():  # raises when the state folder cannot be looked into
            return view  # a rig that has not converted anything yet
        rows, rig_wide = snapshot(cfg)
    except Exception as exc:  # sqlite3 errors, PermissionError, a share that is gone, ...
        view.error = (f"the ledger in {cfg.state.folder} cannot be read: {_one_line(exc)} "
                      "(share down? permissions?); its daemon may still be converting")
        return view
    view.rows = [{"rig": cfg.rig.name, **r, "daemon": view.daemon_json()}
                 for r in sort_rows(rows)]
    view.rig_wide = rig_wide
    return view


def _daemon(cfg: Config, now: float) -> Liveness:
    try:
        beat = json.loads(heartbeat_path(cfg).read_bytes())
    except FileNotFoundError:
        return liveness(None, now, process_alive=None)
    except (OSError, ValueError) as exc:
        return Liveness("stopped", None, f"its heartbeat file cannot be read: {_one_line(exc)}")
    if not isinstance(beat, dict):
        return liveness({}, now, process_alive=None)
    alive = None
    if beat.get("host") == socket.gethostname() and isinstance(beat.get("pid"), int):
        alive = _pid_alive(beat["pid"])
    return liveness(beat, now, process_alive=alive)


def _pid_alive(pid: int) -> bool | None:
    if os.name != "posix":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process (the service user's): it exists
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:  # a zombie has ended
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _one_line(exc: BaseException) -> str:
    return clip(" ".join(str(exc).split()) or type(exc).__name__, 300)


def collect_lab(paths: list[Path]) -> list[RigView]:
    now = time.time()
    return [read_rig(p, now) for p in config_files(paths)]


def lab_json(rigs: list[RigView]) -> list[dict[str, Any]]:
    """One object per session (``rig`` + the fields of ``status --json`` + ``daemon``); a rig
    that cannot be read is one object with ``subject`` and ``session`` null, ``state``
    ``unreadable`` and the reason in ``problems``."""
    out: list[dict[str, Any]] = []
    for rig in rigs:
        if rig.error is not None:
            out.append({"rig": rig.name, "subject": None, "session": None,
                        "state": "unreadable", "problems": [rig.error], "warnings": [],
                        "daemon": rig.daemon_json(), "config": str(rig.config)})
        out += rig.rows
    return out


def render_lab_table(rigs: list[RigView]) -> str:
    header = ["RIG", "SUBJECT", "SESSION", "STATE", "FRAMES", "SUITE2P", "CHECK", "UPDATED",
              "PROBLEMS"]
    body: list[list[str]] = []
    for rig in rigs:
        tz = rig.cfg.tz if rig.cfg is not None else None
        if rig.error is not None:
            body.append([rig.name, "-", "-", "unreadable", "", "", "", "", clip(rig.error, 100)])
            continue
        for r in rig.rows:
            problems = own_problems(r, rig.rig_wide)
            last = problems[-1] if problems else ""
            if len(problems) > 1:
                last = f"[{len(problems)}] {last}"
            body.append([rig.name, r["subject"], r["session"], r["state"], frames_cell(r),
                         suite2p_cell(r["suite2p"], r.get("processing")), check_cell(r),
                         local_time(r["last_update"], tz), clip(last, 80)])
    body = [[printable(str(c)) for c in row] for row in body]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=False)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *body]]
    if not body:
        lines.append("no sessions on any rig yet")
    lines.append("")
    for rig in rigs:
        lines.append(printable(f"{rig.name}: daemon {rig.daemon.state} ({rig.daemon.detail}); "
                               f"{len(rig.rows)} session(s); config {rig.config}"))
        lines += [printable(f"  rig-wide: {p}") for p in rig.rig_wide]
        if rig.error is not None:
            lines.append(printable(f"  cannot be read: {rig.error}"))
    return "\n".join(lines)
