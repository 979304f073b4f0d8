"""The lab page: every rig's sessions on one static HTML page (and its JSON twin), written by
`rig2nwb lab CONFIG ... --page PATH`.

Like each rig's own page: one self-contained file (inline CSS, no JavaScript), every text
HTML-escaped, replaced atomically with the umask's file mode. Each rig's name links its own
status page, and each session its summary picture (or live preview), by paths relative to the
lab page where they share a folder tree, else by ``file://`` URLs.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rig2nwb import __version__
from rig2nwb.config.paths import preview_png, status_html, summary_png
from rig2nwb.core.humanize import clip
from rig2nwb.fsutil import write_atomic
from rig2nwb.outputs.lab import RigView, lab_json
from rig2nwb.outputs.page import PAGE_CSS, check_html, escape, suite2p_html
from rig2nwb.outputs.status import frames_cell, local_time, own_problems

REFRESH_SECONDS = 10

_LAB_CSS = """
.rigs{display:flex;flex-wrap:wrap;gap:10px;margin:0 0 14px;padding:0;list-style:none}
.rigs li{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:8px 12px}
.d-running{color:#116329;font-weight:600}.d-silent{color:#9a6700;font-weight:600}
.d-stopped{color:#cf222e;font-weight:600}
"""


@dataclass(frozen=True)
class LabPageWrite:
    html: Path
    json: Path
    rigs: int
    sessions: int
    seconds: float


def href(target: Path, page: Path) -> str:
    """A link from ``page`` to ``target``: relative when both lie under one root folder, else
    a file:// URL."""
    try:
        rel = os.path.relpath(target, page.parent)
    except ValueError:  # another drive (Windows)
        return target.resolve().as_uri()
    return quote(Path(rel).as_posix())


def _picture(rig: RigView, r: dict[str, Any], page: Path) -> str:
    assert rig.cfg is not None
    for kind, path in (("summary", summary_png(rig.cfg, r["subject"], r["session"])),
                       ("preview", preview_png(rig.cfg, r["subject"], r["session"]))):
        if path.exists():
            return f'<a href="{escape(href(path, page))}">{kind}</a>'
    return '<span class="muted">-</span>'


def render_lab_html(rigs: list[RigView], page: Path, *, now: float) -> str:
    stamp = datetime.fromtimestamp(now).astimezone().isoformat(sep=" ", timespec="seconds")
    sessions = sum(len(r.rows) for r in rigs)
    out = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>rig2nwb: all rigs</title>", f"<style>{PAGE_CSS}{_LAB_CSS}</style>", "</head>",
        "<body>", "<header>", "<h1>All rigs <span>rig2nwb lab view</span></h1>",
        f'<p class="meta">page written <b>{escape(stamp)}</b> &middot; {len(rigs)} rig(s), '
        f"{sessions} session(s) &middot; rig2nwb {escape(__version__)}</p>", "</header>", "<main>",
        '<ul class="rigs">',
    ]
    for rig in rigs:
        name = escape(rig.name)
        if rig.cfg is not None and status_html(rig.cfg).exists():
            name = f'<a href="{escape(href(status_html(rig.cfg), page))}">{name}</a>'
        out.append(f'<li><b>{name}</b>: daemon <span class="d-{escape(rig.daemon.state)}">'
                   f"{escape(rig.daemon.state)}</span> "
                   f'<span class="small">({escape(rig.daemon.detail)})</span></li>')
    out.append("</ul>")
    errors = [r for r in rigs if r.error is not None]
    for rig in errors:
        out.append(f'<div class="banner err"><b>{escape(rig.name)}: cannot be read</b>'
                   f"<ul><li>{escape(rig.error)}</li></ul></div>")
    out.append(
        "<table><thead><tr><th>rig</th><th>session</th><th>stage</th>"
        '<th class="num">frames</th><th>picture</th><th>suite2p</th><th>check</th>'
        '<th>last update</th><th class="msgcol">problems</th></tr></thead><tbody>')
    for rig in rigs:
        if rig.error is not None:
            out.append(f'<tr class="err"><td>{escape(rig.name)}</td><td colspan="8">'
                       f"{escape(clip(rig.error, 400))}</td></tr>")
            continue
        tz = rig.cfg.tz if rig.cfg is not None else None
        for r in rig.rows:
            problems = own_problems(r, rig.rig_wide)
            cls = "err" if problems else ""
            msgs = "".join(f'<li class="err">{escape(clip(p, 400))}</li>' for p in problems[-3:])
            out.append(
                f'<tr class="{cls}"><td>{escape(rig.name)}</td>'
                f'<td><div class="name">{escape(r["subject"])} / {escape(r["session"])}</div></td>'
                f'<td><span class="badge s-{escape(r["state"])}">{escape(r["state"])}</span></td>'
                f'<td class="num">{escape(frames_cell(r))}</td><td>{_picture(rig, r, page)}</td>'
                f'<td>{suite2p_html(r["suite2p"], r.get("processing"))}</td>'
                f"<td>{check_html(r)}</td>"
                f'<td class="when">{escape(local_time(r["last_update"], tz) or "-")}</td>'
                f'<td><ul class="msgs">{msgs}</ul></td></tr>')
    out += ["</tbody></table>", "</main>",
            f"<footer>Written by <code>rig2nwb lab</code>; reloads every {REFRESH_SECONDS} s. "
            "Each rig's name opens its own status page.</footer>", "</body>", "</html>", ""]
    return "\n".join(out)


def write_lab_page(rigs: list[RigView], page: Path) -> LabPageWrite:
    """Both files replaced atomically (JSON first), with the umask's mode."""
    t0 = time.perf_counter()
    now = time.time()
    data = {"generated_at": datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="seconds"),
            "version": __version__,
            "rigs": [{"rig": r.name, "config": str(r.config), "daemon": r.daemon_json(),
                      "error": r.error, "rig_problems": r.rig_wide,
                      "status_page": href(status_html(r.cfg), page) if r.cfg else None}
                     for r in rigs],
            "sessions": lab_json(rigs)}
    twin = page.with_suffix(".json")
    write_atomic(twin, (json.dumps(data) + "\n").encode("utf-8"))
    write_atomic(page, render_lab_html(rigs, page, now=now).encode("utf-8"))
    return LabPageWrite(page, twin, len(rigs), sum(len(r.rows) for r in rigs),
                        time.perf_counter() - t0)
