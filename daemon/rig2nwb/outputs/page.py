"""The status page: ``rig2nwb-status.html`` and its JSON twin in the output folder.

Experimenters open it from the network share that already holds the NWB files, on any machine,
so it is one static, self-contained file: inline CSS, no JavaScript, no external resources,
pictures linked by paths relative to the page, and ``<meta http-equiv="refresh">`` so an open
page follows the daemon. Every text taken from the ledger is HTML-escaped: problem messages
carry file names, and file names are whatever the rig's users typed.

:class:`StatusPageHook` keeps it current from the worker loop. A rewrite costs about 20 ms
with 200 sessions (measured, 2 cores), too much for every 0.5 s tick, so a tick only compares
a change token: the ledger's ``PRAGMA data_version`` (commits by other processes, e.g.
``rig2nwb attach``) and its connection's ``total_changes`` (the daemon's own commits), plus the
picture folder's mtime (pictures are replaced by rename, which touches the folder). The page is
rewritten when the token moved, at most every ``status.page_interval_seconds``, and at least
every ``HEARTBEAT_SECONDS`` so its "page written" time tells a reader the daemon is alive.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rig2nwb import __version__
from rig2nwb.config.paths import (
    display_path,
    picture_folder,
    preview_png,
    status_html,
    status_json,
    summary_png,
    thumbnail_of,
)
from rig2nwb.config.schema import Config
from rig2nwb.core.humanize import clip, duration, human_size
from rig2nwb.core.names import printable
from rig2nwb.engine.view import LoopView
from rig2nwb.fsutil import write_atomic
from rig2nwb.logs import get_logger
from rig2nwb.outputs.status import (
    check_cell,
    counts_line,
    files_cell,
    frames_cell,
    local_time,
    own_problems,
    rate_cell,
    snapshot,
    sort_rows,
)
from rig2nwb.states import ACTIVE_JOB_STATES, Suite2pState

HEARTBEAT_SECONDS = 60.0
MIN_REFRESH_SECONDS = 5  # how often an open page reloads itself, at the fastest
MAX_MESSAGES = 5  # problems shown per session; the rest: `rig2nwb status SESSION`
MAX_MESSAGE_CHARS = 400


@dataclass(frozen=True)
class Picture:
    """A session's picture as the page links it."""

    rel: str  # relative to the output folder (the page's folder), '/'-separated
    kind: str  # "summary" or "preview"
    mtime_ns: int

    @property
    def href(self) -> str:
        # The query only defeats a browser's image cache when the picture is replaced; file://
        # URLs ignore it when loading.
        return f"{quote(self.rel)}?v={self.mtime_ns}"


@dataclass(frozen=True)
class PageWrite:
    html: Path
    json: Path
    sessions: int
    seconds: float


def session_pictures(cfg: Config, row: dict[str, Any]) -> tuple[Picture | None, Picture | None]:
    """(summary, preview) pictures of a session that exist on disk."""
    found = _pictures(cfg, (("summary", summary_png(cfg, row["subject"], row["session"])),
                            ("preview", preview_png(cfg, row["subject"], row["session"]))))
    return found[0], found[1]


def thumbnail(cfg: Config, row: dict[str, Any]) -> Picture | None:
    """The small mean image drawn with the summary picture, when there is one."""
    return _pictures(cfg, (("thumbnail", thumbnail_of(summary_png(cfg, row["subject"],
                                                                  row["session"]))),))[0]


def _pictures(cfg: Config, wanted: tuple[tuple[str, Path], ...]) -> list[Picture | None]:
    found: list[Picture | None] = []
    for kind, path in wanted:
        try:
            st = path.stat()
        except OSError:
            found.append(None)
            continue
        found.append(Picture(path.relative_to(cfg.output.folder).as_posix(), kind, st.st_mtime_ns))
    return found


def linked_picture(summary: Picture | None, preview: Picture | None) -> Picture | None:
    """The summary picture once there is one, else the live preview (while acquiring; after
    that, the last preview is still a better look at the data than nothing, e.g. with
    ``status.summary_picture = false``)."""
    return summary if summary is not None else preview


def build(cfg: Config, *, running: bool, now: float | None = None) -> tuple[dict[str, Any], str]:
    """The JSON twin (a dict) and the HTML text of the page, from one ledger read."""
    now = time.time() if now is None else now
    rows, rig_wide = snapshot(cfg)
    rows = sort_rows(rows)
    sessions = []
    pictures: list[tuple[Picture | None, Picture | None]] = []
    for r in rows:
        summary, preview = session_pictures(cfg, r)
        pic = linked_picture(summary, preview)
        thumb = thumbnail(cfg, r) if summary is not None else None
        # The page shows a picture you can read at its size: the summary's mean-image
        # thumbnail, linking the full summary; else the live preview (already small).
        pictures.append((pic, thumb or pic))
        sessions.append({**r, "summary_picture": summary.rel if summary else None,
                         "preview_picture": preview.rel if preview else None,
                         "thumbnail_picture": thumb.rel if thumb else None,
                         "picture": pic.rel if pic else None,
                         "nwb_link": display_path(cfg, Path(r["nwb_path"]))})
    data = {
        "generated_at": datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="seconds"),
        "rig": cfg.rig.name,
        "version": __version__,
        "daemon": "running" if running else "stopped",
        "rig_problems": rig_wide,
        "sessions": sessions,
    }
    return data, render_html(cfg, data, pictures, now=now)


def write_page(cfg: Config, *, running: bool = True) -> PageWrite:
    """Build the page and replace both files atomically (JSON first: a reader that follows the
    HTML's link to the JSON gets data at least as new as the page)."""
    t0 = time.perf_counter()
    folder = cfg.output.folder
    if not folder.is_dir():  # an unmounted share: never create a stand-in folder
        raise OSError(f"{folder}: the output folder does not exist")
    data, text = build(cfg, running=running)
    # Compact: json's C encoder only runs without indent (4x faster on hundreds of sessions).
    write_atomic(status_json(cfg), (json.dumps(data) + "\n").encode("utf-8"))
    write_atomic(status_html(cfg), text.encode("utf-8"))
    return PageWrite(status_html(cfg), status_json(cfg), len(data["sessions"]),
                     time.perf_counter() - t0)


def refresh_seconds(cfg: Config) -> int:
    return max(MIN_REFRESH_SECONDS, math.ceil(cfg.status.page_interval_seconds))


# --- HTML -------------------------------------------------------------------------------------

def escape(value: object) -> str:
    """Text for HTML: escaped, and control characters from rig file names (no valid HTML
    text) shown as escapes."""
    return html.escape(printable(str(value)), quote=True)


_e = escape


def _when(iso: str | None, cfg: Config) -> str:
    return local_time(iso, cfg.tz) if iso else "-"


def render_html(cfg: Config, data: dict[str, Any],
                pictures: list[tuple[Picture | None, Picture | None]], *,
                now: float) -> str:
    written = datetime.fromtimestamp(now, tz=cfg.tz)
    stamp = written.isoformat(sep=" ", timespec="seconds")
    running = data["daemon"] == "running"
    rig_wide: list[str] = data["rig_problems"]
    rows: list[dict[str, Any]] = data["sessions"]
    refresh = refresh_seconds(cfg)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{refresh}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(data['rig'])}: rig2nwb status</title>",
        f"<style>{PAGE_CSS}</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>{_e(data['rig'])} <span>rig2nwb status</span></h1>",
        f'<p class="meta">page written <b>{_e(stamp)}</b> &middot; daemon '
        + ('<span class="run">running</span>' if running else '<span class="stop">stopped</span>')
        + f" &middot; rig2nwb {_e(data['version'])}</p>",
        "</header>",
        "<main>",
    ]
    if not running:
        out.append(f'<div class="banner stopped"><b>rig2nwb is stopped</b> (since '
                   f"{_e(stamp)}): nothing is being converted and this page is "
                   "not updated until it starts again.</div>")
    rig_errors = [p for p in rig_wide if not p.startswith("warning: ")]
    rig_warnings = [p.removeprefix("warning: ") for p in rig_wide if p.startswith("warning: ")]
    for kind, label, items_ in (("err", "Rig-wide problem", rig_errors),
                                ("warn", "Rig-wide warning", rig_warnings)):
        if items_:
            items = "".join(f"<li>{_e(clip(p, MAX_MESSAGE_CHARS))}</li>" for p in items_)
            out.append(f'<div class="banner {kind}"><b>{label}{"s" if len(items_) > 1 else ""}'
                       f"</b><ul>{items}</ul></div>")
    if not rows:
        out.append('<p class="empty">No sessions yet.</p>')
    else:
        out.append(f'<p class="counts">{_e(counts_line(rows, rig_wide))}</p>')
        out.append(
            '<table><thead><tr><th>picture</th><th>session / NWB file</th><th>stage</th>'
            '<th class="num" title="TIFF pages committed to the NWB file">frames</th>'
            '<th class="num" title="TIFFs committed / seen">files</th>'
            '<th class="num" title="size of the NWB file">size</th>'
            '<th class="num" title="frames per second of each imaging series">rate</th>'
            '<th title="cells / ROIs once attached">suite2p</th>'
            '<th title="pynwb validator + nwbinspector: Critical / Violations / Suggestions">check</th>'
            '<th>last update</th><th class="msgcol">problems</th></tr></thead><tbody>')
        out += [_row(cfg, r, pic, rig_wide, now) for r, pic in zip(rows, pictures, strict=True)]
        out.append("</tbody></table>")
    out += [
        "</main>",
        f"<footer>Written by rig2nwb whenever something changes, at least every "
        f"{HEARTBEAT_SECONDS:.0f} s while it runs; an open page reloads every {refresh} s. "
        "If &ldquo;page written&rdquo; is several minutes old, the daemon is not running. All "
        f"times are in {_e(cfg.session.timezone)} (session.timezone), as in the log. One session "
        "in full: <code>rig2nwb status SESSION</code>; "
        f'the same data as JSON: <a href="{quote(status_json(cfg).name)}">'
        f"{_e(status_json(cfg).name)}</a>.</footer>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(out)


def _row(cfg: Config, r: dict[str, Any], pics: tuple[Picture | None, Picture | None],
         rig_wide: list[str], now: float) -> str:
    errors = own_problems(r, rig_wide)
    warnings: list[str] = r["warnings"]
    cls = "err" if errors or r["validation_ok"] is False else ("warn" if warnings else "")
    pic, shown = pics
    if pic is None or shown is None:
        picture = '<div class="nopic">no picture</div>'
    else:
        label = "mean image &middot; summary" if pic.kind == "summary" and shown is not pic else (
            "summary" if pic.kind == "summary" else
            "live preview" if r["state"] != "finished" else "last preview")
        picture = (f'<a href="{_e(pic.href)}" title="open the full picture">'
                   f'<img class="thumb" src="{_e(shown.href)}" '
                   f'alt="{_e(shown.kind)} of {_e(r["subject"])}/{_e(r["session"])}" '
                   f'loading="lazy"></a><div class="cap">{label}</div>')
    site = f' <span class="muted">{_e(r["site"])}</span>' if r["site"] else ""
    link = str(r.get("nwb_link") or r["nwb_path"])
    path = (f'<a href="{_e(link)}">{_e(link)}</a>' if link.startswith(("http://", "https://"))
            else _e(link))
    session = (f'<div class="name">{_e(r["subject"])} / {_e(r["session"])}{site}</div>'
               f'<div class="path">{path}</div>{_facts_html(cfg, r, now)}')
    stage = f'<span class="badge s-{_e(r["state"])}">{_e(r["state"])}</span>'
    return (f'<tr class="{cls}"><td class="pic">{picture}</td><td>{session}</td><td>{stage}</td>'
            f'<td class="num">{_e(frames_cell(r))}</td><td class="num">{_e(files_cell(r))}</td>'
            f'<td class="num">{_e(human_size(r["nwb_bytes"]))}</td>'
            f'<td class="num">{_e(rate_cell(r))}</td>'
            f'<td>{suite2p_html(r["suite2p"], r.get("processing"))}</td>'
            f"<td>{check_html(r)}</td><td class=\"when\">{_e(_when(r['last_update'], cfg))}</td>"
            f"<td>{_messages_html(errors, warnings)}</td></tr>")


def _facts_html(cfg: Config, r: dict[str, Any], now: float) -> str:
    """Start, length, trials and the source of the frame times; while acquiring, for how long
    and how long ago the last frame came."""
    facts = []
    if r.get("start_time"):
        facts.append(f"start {local_time(r['start_time'], cfg.tz)}")
    if r["state"] == "finished":
        if r.get("duration_s") is not None:
            facts.append(duration(float(r["duration_s"])))
        if r.get("trials") is not None:
            facts.append(f"{r['trials']} trial{'s' * (r['trials'] != 1)}")
    elif r["state"] in ("acquiring", "paused") and r.get("start_time"):
        started = datetime.fromisoformat(r["start_time"]).timestamp()
        facts.append(f"acquiring for {duration(max(0.0, now - started))}")
        if r.get("last_frame_at"):
            ago = max(0.0, now - datetime.fromisoformat(r["last_frame_at"]).timestamp())
            facts.append(f"last frame {duration(ago)} ago")
    out = f'<div class="small">{_e(" · ".join(facts))}</div>' if facts else ""
    if r["state"] == "finished" and r.get("timestamps"):
        out += f'<div class="small">timestamps: {_e(clip(r["timestamps"], 160))}</div>'
    return out


def suite2p_html(s: dict[str, Any] | None, job: dict[str, Any] | None = None) -> str:
    if job is not None and (s is None or s["state"] != Suite2pState.ATTACHED
                            or job["state"] in ACTIVE_JOB_STATES):
        css = "bad" if job["state"] in ("failed", "lost") else "muted"
        where = f'{job["executor"]} {job["job_id"] or ""}'.strip()
        detail = f'<div class="small">{_e(clip(job["detail"], 160))}</div>' if job["detail"] else ""
        return f'<span class="{css}">job {_e(job["state"])}</span> ({_e(where)}){detail}'
    if s is None:
        return '<span class="muted">-</span>'
    if s["state"] == Suite2pState.ATTACHED:
        return (f'<span class="good nowrap">{_e(s["cells"])}/{_e(s["rois"])} cells</span>'
                f'<div class="small">{_e(s["planes"])} plane(s)</div>')
    css = "bad" if s["state"] == "problem" else "muted"
    detail = f'<div class="small">{_e(clip(s["detail"], 160))}</div>' if s["detail"] else ""
    return f'<span class="{css}">{_e(s["state"])}</span>{detail}'


def check_html(r: dict[str, Any]) -> str:
    text = check_cell(r)
    if r["validation"] is None:
        return '<span class="muted">-</span>'
    if r["validation_ok"] is None:
        # Not checked at all (output.check_files = false) is not "pending": nothing will come.
        shown = "not checked" if str(r["validation"]).startswith("not checked") else "pending"
        return f'<span class="muted">{shown}</span>'
    css = "good" if r["validation_ok"] else "bad"
    head, _, counts = text.partition(" ")
    plugins = ""
    if r.get("opens_without_plugins") is False:
        plugins = '<div class="small bad">needs filter plugins (rig2nwb repack)</div>'
    messages = r.get("validation_messages") or []
    if not messages:
        return (f'<span class="{css}" title="{_e(r["validation"])}">{_e(head)}</span>'
                f'<div class="small">{_e(counts)}</div>{plugins}')
    # What each violation says, one click away (no JavaScript: a details element).
    items = "".join(f"<li>{_e(clip(m, 300))}</li>" for m in messages)
    return (f'<details><summary><span class="{css}">{_e(head)}</span> '
            f'<span class="small">{_e(counts)}</span></summary><ul class="checks">{items}</ul>'
            f"</details>{plugins}")


def _messages_html(errors: list[str], warnings: list[str]) -> str:
    items = [("err", "error", m) for m in errors] + [("warn", "warning", m) for m in warnings]
    if not items:
        return '<span class="muted">none</span>'
    shown = "".join(f'<li class="{css}"><b>{label}</b> {_e(clip(m, MAX_MESSAGE_CHARS))}</li>'
                    for css, label, m in items[:MAX_MESSAGES])
    more = (f'<li class="more">and {len(items) - MAX_MESSAGES} more</li>'
            if len(items) > MAX_MESSAGES else "")
    return f'<ul class="msgs">{shown}{more}</ul>'


PAGE_CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,
sans-serif;color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:12px 20px;display:flex;flex-wrap:wrap;
align-items:baseline;gap:4px 24px}
h1{font-size:20px;margin:0;font-weight:600}
h1 span{font-weight:400;color:#afb8c1;font-size:15px;margin-left:6px}
.meta{margin:0;color:#d0d7de;font-size:13px}
.run{color:#4ac26b;font-weight:600}.stop{color:#ff8182;font-weight:600}
main{padding:16px 20px}
.banner{border-radius:6px;padding:10px 14px;margin:0 0 14px}
.banner ul{margin:4px 0 0;padding-left:20px}
.banner.err{background:#ffebe9;border:1px solid #cf222e;color:#82071e}
.banner.warn{background:#fff8c5;border:1px solid #d4a72c;color:#6a4300}
.banner.stopped{background:#eaeef2;border:1px solid #8c959f}
.counts{margin:0 0 10px;color:#57606a}
.empty{color:#57606a}
table{border-collapse:separate;border-spacing:0;width:100%;background:#fff;
border:1px solid #d0d7de;border-radius:6px;overflow:hidden}
th{text-align:left;font-size:12px;font-weight:600;color:#57606a;background:#f6f8fa;
padding:8px 10px;border-bottom:1px solid #d0d7de;white-space:nowrap;text-transform:uppercase;
letter-spacing:.03em}
td{padding:8px 10px;border-bottom:1px solid #eaeef2;vertical-align:top}
tbody tr:last-child td{border-bottom:0}
tr.err td:first-child{box-shadow:inset 5px 0 #cf222e}
tr.warn td:first-child{box-shadow:inset 5px 0 #d4a72c}
tr.err{background:#fff8f7}
.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
.when{white-space:nowrap;font-variant-numeric:tabular-nums}
td.pic{width:138px;padding-left:14px}
.thumb{display:block;width:120px;height:120px;object-fit:contain;border-radius:4px;
border:1px solid #d0d7de;background:#000}
.nopic{width:120px;height:120px;border:1px dashed #d0d7de;border-radius:4px;color:#8c959f;
font-size:11px;display:flex;align-items:center;justify-content:center;text-align:center}
.cap{font-size:11px;color:#57606a;margin-top:2px}
details summary{cursor:pointer;white-space:nowrap}
ul.checks{margin:4px 0 0;padding-left:16px;font-size:12px;max-width:36em}
.name{font-weight:600;white-space:nowrap}
.path{font:12px/1.3 ui-monospace,SFMono-Regular,Consolas,"Liberation Mono",monospace;color:#57606a;
word-break:break-all;margin-top:2px;max-width:26em}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;font-size:12px;font-weight:600}
.s-acquiring{background:#ddf4ff;color:#0550ae}.s-finished{background:#dafbe1;color:#116329}
.s-paused{background:#fff8c5;color:#7d4e00}.s-waiting{background:#eaeef2;color:#57606a}
.s-quarantined{background:#ffebe9;color:#82071e;font-weight:600}
.good{color:#116329;font-weight:600}.bad{color:#cf222e;font-weight:600}.muted{color:#57606a}
.small{font-size:12px;color:#57606a}.nowrap{white-space:nowrap}
th.msgcol{min-width:20em}
.msgs{list-style:none;margin:0;padding:0;max-width:46em}
.msgs li{padding:3px 8px;border-radius:4px;margin:0 0 3px;word-break:break-word}
.msgs li.err{background:#ffebe9;color:#82071e;border-left:3px solid #cf222e}
.msgs li.warn{background:#fff8c5;color:#6a4300;border-left:3px solid #d4a72c}
.msgs li.more{color:#57606a}
.msgs b{text-transform:uppercase;font-size:11px;margin-right:4px}
footer{color:#57606a;font-size:12px;padding:0 20px 24px}
code{font-family:ui-monospace,SFMono-Regular,Consolas,monospace}
"""


# --- the service hook -------------------------------------------------------------------------

class StatusPageHook:
    """Keeps the status page current from the worker loop (see the module docstring)."""

    name = "status-page"

    def __init__(self, cfg: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.interval = cfg.status.page_interval_seconds
        self._clock = clock
        self._written: tuple[object, ...] | None = None  # change token of the page on disk
        self._last_write = -math.inf
        self._last_try = -math.inf
        self._failing = False
        self.writes = 0
        self.last: PageWrite | None = None
        self.log = get_logger("rig2nwb.outputs.page", stage="status-page")

    def started(self, view: LoopView) -> None:
        self._write(view, running=True)

    def tick(self, view: LoopView) -> None:
        now = self._clock()
        if now - self._last_try < self.interval:
            return
        token = self._token(view)
        if token == self._written and now - self._last_write < HEARTBEAT_SECONDS:
            return
        self._write(view, running=True, token=token)

    def stopping(self, view: LoopView) -> None:
        self._write(view, running=False)

    def _token(self, view: LoopView) -> tuple[object, ...]:
        try:
            pictures = os.stat(picture_folder(self.cfg)).st_mtime_ns
        except OSError:
            pictures = 0
        return (view.ledger.change_token(), pictures)

    def _write(self, view: LoopView, *, running: bool, token: tuple[object, ...] | None = None) -> None:
        now = self._clock()
        self._last_try = now
        # Taken before the read: a change made while the page is built moves the token again,
        # so the next tick writes a page that includes it.
        token = self._token(view) if token is None else token
        try:
            done = write_page(self.cfg, running=running)
        except Exception as exc:  # the page must never disturb conversion; one error a streak
            if not self._failing:
                self.log.error("status page not written", file=str(status_html(self.cfg)),
                               error=f"{type(exc).__name__}: {exc}")
            self._failing = True
            return
        if self._failing:
            self.log.info("status page written again", file=str(done.html))
        elif self.writes == 0:
            self.log.info("status page written", file=str(done.html), sessions=done.sessions,
                          seconds=round(done.seconds, 4))
        self._failing = False
        self._written = token
        self._last_write = now
        self.writes += 1
        self.last = done
