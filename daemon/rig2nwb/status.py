"""Where every session stands, read from the ledger (safe while the daemon runs: WAL readers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rig2nwb.config import Config
from rig2nwb.ledger import Ledger, SessionRow, Suite2pRow
from rig2nwb.pagelayout import PageLayout
from rig2nwb.service import ledger_path
from rig2nwb.validation import CheckSummary


def collect(cfg: Config) -> list[dict[str, Any]]:
    """One dict per session; the keys are the documented ``status --json`` contract."""
    path = ledger_path(cfg)
    if not path.exists():
        return []
    ledger = Ledger(path, readonly=True)
    try:
        # Rig-wide problems concern every session, so each session lists them too.
        global_problems = [p.message for p in ledger.problems() if p.session_id is None]
        suite2p = ledger.suite2p_rows()
        out = []
        for s in ledger.sessions():
            files = ledger.files(s.id)
            nwb = Path(s.nwb_path)
            active = ledger.problems(s.id)
            problems = [p.message for p in active if p.severity != "warning"]
            check = CheckSummary.from_json(s.validation) if s.validation else None
            out.append({
                "subject": s.subject,
                "session": s.session,
                "site": s.site,
                "state": s.state,
                "frames": ledger.frames_committed(s.id),
                "series": _series_frames(s, ledger.frames_committed(s.id)),
                "files": len(files),
                "files_committed": sum(f.state == "committed" for f in files),
                "files_failed": sum(f.state in ("failed", "vanished", "out_of_order")
                                    for f in files),
                "source_bytes": sum(f.size or 0 for f in files if f.state == "committed"),
                "nwb_path": str(nwb),
                "nwb_bytes": nwb.stat().st_size if nwb.exists() else 0,
                "start_time": s.start_time,
                "timestamps": s.timestamps_source or "as acquired (not finalized yet)",
                "last_update": _iso(s.updated_at),
                "finished_at": _iso(s.finished_at) if s.finished_at else None,
                "problems": problems + global_problems,
                "warnings": [p.message for p in active if p.severity == "warning"],
                "validation": check.short() if check else (
                    "pending" if s.state == "finished" else None),
                "validation_ok": check.ok if check else None,
                "validation_counts": (
                    {"validation_errors": check.validation_errors, **check.counts}
                    if check else None),
                "suite2p": _suite2p(suite2p.get(s.id)),
            })
        return out
    finally:
        ledger.close()


def rig_problems(cfg: Config) -> list[str]:
    """Active problems not tied to one session (rig folder unreachable, unsafe names, ...)."""
    path = ledger_path(cfg)
    if not path.exists():
        return []
    ledger = Ledger(path, readonly=True)
    try:
        return [p.message for p in ledger.problems() if p.session_id is None]
    finally:
        ledger.close()


def history(cfg: Config, session: str) -> dict[str, Any] | None:
    """A session's full record: files, problems (also resolved ones) and events."""
    path = ledger_path(cfg)
    if not path.exists():
        return None
    ledger = Ledger(path, readonly=True)
    try:
        rows = [s for s in ledger.sessions() if session in (s.session, f"{s.subject}/{s.session}")]
        if not rows:
            return None
        s = rows[0]
        return {
            "subject": s.subject, "session": s.session, "state": s.state,
            "nwb_path": s.nwb_path, "frames": ledger.frames_committed(s.id),
            "start_time": s.start_time, "start_source": s.start_source,
            "timestamps": s.timestamps_source or "as acquired (not finalized yet)",
            "layout": PageLayout.from_json(s.layout).describe() if s.layout else None,
            "series": _series_frames(s, ledger.frames_committed(s.id)),
            "validation": CheckSummary.from_json(s.validation).short() if s.validation else None,
            "suite2p": _suite2p(ledger.suite2p(s.id)),
            "validation_messages": (CheckSummary.from_json(s.validation).messages
                                    if s.validation else []),
            "files": [{"path": f.path, "state": f.state, "frames": f.frames,
                       "first_frame": f.first_frame, "size": f.size, "error": f.error}
                      for f in ledger.files(s.id)],
            "problems": [{"code": p.code, "file": p.file, "message": p.message,
                          "severity": p.severity, "active": bool(p.active),
                          "since": _iso(p.first_at)}
                         for p in ledger.problems(s.id, active_only=False)],
            "events": [{"at": _iso(at), "stage": st, "message": m}
                       for at, st, m in ledger.events(s.id)],
        }
    finally:
        ledger.close()


def render_table(rows: list[dict[str, Any]], rig_wide: list[str] | None = None) -> str:
    footer = "".join(f"\nrig-wide problem: {p}" for p in rig_wide or [])
    if not rows:
        return "no sessions yet" + footer
    header = ["SUBJECT", "SESSION", "STATE", "FRAMES", "FILES", "NWB SIZE", "UPDATED", "SUITE2P",
              "CHECK", "PROBLEM"]
    body = []
    for r in rows:
        files = f"{r['files_committed']}/{r['files']}"
        if r["files_failed"]:
            files += f" ({r['files_failed']} bad)"
        problems = [p for p in r["problems"] if p not in (rig_wide or [])]  # those go below
        warnings = [f"warning: {w}" for w in r["warnings"]]
        shown = problems or warnings  # errors first; warnings when there is nothing worse
        last = shown[-1] if shown else ""
        if len(shown) > 1:
            last = f"[{len(shown)}] {last}"
        check = "-" if r["validation"] is None else (
            "pending" if r["validation_ok"] is None else ("ok" if r["validation_ok"] else "FAILED"))
        if r["validation_counts"] and r["validation_ok"] is not None:
            c = r["validation_counts"]
            check += (f" ({c['CRITICAL']}C/{c['BEST_PRACTICE_VIOLATION']}V/"
                      f"{c['BEST_PRACTICE_SUGGESTION']}S)")
        series = r["series"]
        frames = f"{r['frames']:,}" if len(series) <= 1 else (
            f"{r['frames']:,} ({len(series)} series)")
        body.append([r["subject"], r["session"], r["state"], frames, files,
                     _size(r["nwb_bytes"]), (r["last_update"] or "")[:19].replace("T", " "),
                     _suite2p_cell(r["suite2p"]), check, last[:90]])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *body]]
    return "\n".join(lines) + footer


def _suite2p(row: Suite2pRow | None) -> dict[str, Any] | None:
    """The session's suite2p stage: None when no suite2p output has been seen."""
    if row is None:
        return None
    summary = json.loads(row.summary) if row.summary and row.state == "attached" else None
    return {"state": row.state, "detail": row.detail, "folder": row.folder,
            "rois": summary["rois"] if summary else None,
            "cells": summary["cells"] if summary else None,
            "planes": summary["planes"] if summary else None,
            "updated": _iso(row.updated_at)}


def _suite2p_cell(s: dict[str, Any] | None) -> str:
    if s is None:
        return "-"
    if s["state"] == "attached":
        return f"{s['cells']}/{s['rois']} cells"
    return str(s["state"])


def _series_frames(s: SessionRow, pages: int) -> dict[str, int]:
    """Frames in each TwoPhotonSeries of the NWB file (a finished session keeps whole cycles)."""
    if not s.layout:
        return {}
    layout = PageLayout.from_json(s.layout)
    kept = layout.complete(pages) if s.state == "finished" else pages
    return {spec.name: layout.count(spec.index, kept) for spec in layout.series}


def render_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2)


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds") if ts else None


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover
