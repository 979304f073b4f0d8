"""Where every session stands, read from the ledger (safe while the daemon runs: WAL readers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

from rig2nwb.config.paths import ledger_path
from rig2nwb.config.schema import Config
from rig2nwb.core.humanize import clip, duration, human_size
from rig2nwb.core.names import printable
from rig2nwb.core.pagelayout import PageLayout
from rig2nwb.ledger.rows import FileRow, JobRow, ProblemRow, SessionRow, Suite2pRow
from rig2nwb.ledger.store import Ledger
from rig2nwb.nwb.checksummary import NOT_CHECKED, CheckSummary
from rig2nwb.processing.jobfolder import log_tail
from rig2nwb.states import ACTIVE_JOB_STATES, SessionState, Suite2pState


def collect(cfg: Config) -> list[dict[str, Any]]:
    """One dict per session; the keys are the documented ``status --json`` contract."""
    return snapshot(cfg)[0]


def snapshot(cfg: Config) -> tuple[list[dict[str, Any]], list[str]]:
    """``collect`` and ``rig_problems`` read through one ledger connection (the status page
    needs both at every rewrite)."""
    path = ledger_path(cfg)
    if not path.exists():
        return [], []
    ledger = Ledger(path, readonly=True)
    try:
        # A constant number of queries, whatever the number of sessions: the status page runs
        # this on the daemon's worker thread, and ledgers grow for months.
        active_by_session: dict[int | None, list[ProblemRow]] = {}
        for p in ledger.problems():
            active_by_session.setdefault(p.session_id, []).append(p)
        # Rig-wide problems concern every session, so each session lists them too; rig-wide
        # warnings (the output disk filling up) are shown once, below the table / in the banner.
        rig_wide = active_by_session.get(None, [])
        global_problems = [p.message for p in rig_wide if p.severity != "warning"]
        global_warnings = [f"warning: {p.message}" for p in rig_wide if p.severity == "warning"]
        suite2p = ledger.suite2p_rows()
        jobs = ledger.latest_jobs()
        counts = ledger.file_facts()
        committed = ledger.all_frames_committed()
        out = []
        for s in ledger.sessions():
            try:
                out.append(_session_status(s, counts, committed, active_by_session, suite2p,
                                           global_problems, checked=_checks_run(cfg),
                                           job=jobs.get(s.id)))
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                # One unreadable row (hand-edited, or from another version) must not hide the
                # others: it is shown with what is wrong.
                out.append(_unreadable_row(s, exc, global_problems))
        return out, global_problems + global_warnings
    finally:
        ledger.close()


def _session_status(s: SessionRow, counts: dict[int, tuple[int, int, int, int, float | None]],
                    committed: dict[int, int], active_by_session: dict[int | None, list[ProblemRow]],
                    suite2p: dict[int, Suite2pRow], global_problems: list[str], *,
                    checked: bool = True, job: JobRow | None = None) -> dict[str, Any]:
    n_files, n_committed, n_failed, source_bytes, last_frame = counts.get(s.id, (0, 0, 0, 0, None))
    nwb = Path(s.nwb_path)
    active = active_by_session.get(s.id, [])
    problems = [p.message for p in active if p.severity != "warning"]
    check = CheckSummary.from_json(s.validation) if s.validation else None
    layout = PageLayout.from_json(s.layout) if s.layout else None
    pages = committed.get(s.id, 0)
    return {
        "subject": s.subject,
        "session": s.session,
        "site": s.site,
        "state": "quarantined" if s.quarantined else s.state,
        "frames": pages,
        "series": _series_frames(s, pages),
        "files": n_files,
        "files_committed": n_committed,
        "files_failed": n_failed,
        "source_bytes": source_bytes,
        "nwb_path": str(nwb),
        "nwb_bytes": _file_size(nwb),
        "start_time": s.start_time,
        "timestamps": s.timestamps_source or "as acquired (not finalized yet)",
        "last_update": _iso(s.updated_at),
        "finished_at": _iso(s.finished_at) if s.finished_at else None,
        "problems": problems + global_problems,
        "warnings": [p.message for p in active if p.severity == "warning"],
        "validation": check.short() if check else (
            ("pending" if checked else NOT_CHECKED) if s.state == SessionState.FINISHED else None),
        # None: pending, or not checked (output.check_files = false; see "validation").
        "validation_ok": check.ok if check and check.checked else None,
        "validation_counts": (
            {"validation_errors": check.validation_errors, **check.counts}
            if check and check.checked else None),
        "suite2p": _suite2p(suite2p.get(s.id)),
        # Added later (keys are only ever added): frames per second of each series and
        # of the scanner (flyback included); null before the session's first file.
        "rate_hz": layout.series_rate if layout else None,
        "scan_rate_hz": layout.frame_rate if layout else None,
        "quarantine": _quarantine(s),
        **_plugins(check),
        # When frames were last committed; the trials table's rows and the recording's length
        # (first to last frame) once finished; what the check said, most important first.
        "last_frame_at": _iso(last_frame),
        "trials": s.trials,
        "duration_s": s.duration_s,
        "validation_messages": check.messages[:MAX_CHECK_MESSAGES] if check else [],
        # The latest suite2p job rig2nwb started (suite2p.run); null when none.
        "processing": _job(job),
    }


MAX_CHECK_MESSAGES = 20


def _plugins(check: CheckSummary | None) -> dict[str, Any]:
    """Whether the finished file opens in every reader without filter plugins (null before its
    check, or when an older rig2nwb checked it), and the datasets that need one."""
    known = check is not None and check.plugin_datasets is not None
    return {"opens_without_plugins": (not check.plugin_datasets) if known and check else None,
            "plugin_datasets": list(check.plugin_datasets or []) if known and check else None}


def _checks_run(cfg: Config) -> bool:
    """Does a child look at finished files (the check, or only the summary picture)? When
    neither runs, a finished file's check is "not checked", never "pending" forever."""
    return cfg.output.check_files or cfg.status.summary_picture


def _unreadable_row(s: SessionRow, exc: Exception, global_problems: list[str]) -> dict[str, Any]:
    """What can be shown of a session whose ledger row does not parse."""
    why = f"its ledger row cannot be read ({type(exc).__name__}: {str(exc)[:200]})"
    return {
        "subject": str(s.subject), "session": str(s.session), "site": str(s.site or ""),
        "state": "quarantined" if s.quarantined else str(s.state), "frames": 0, "series": {},
        "files": 0, "files_committed": 0, "files_failed": 0, "source_bytes": 0,
        "nwb_path": str(s.nwb_path), "nwb_bytes": 0,
        "start_time": None, "timestamps": "unknown", "last_update": None, "finished_at": None,
        "problems": [why, *global_problems], "warnings": [], "validation": None,
        "validation_ok": None, "validation_counts": None, "suite2p": None, "rate_hz": None,
        "scan_rate_hz": None, "quarantine": _quarantine(s), "opens_without_plugins": None,
        "plugin_datasets": None, "last_frame_at": None, "trials": None, "duration_s": None,
        "validation_messages": [],
    }


def _quarantine(s: SessionRow) -> dict[str, Any] | None:
    """Why a session is quarantined (``state`` is where it stood): None when it is not."""
    if not s.quarantined:
        return None
    return {"phase": s.quarantine_phase, "reason": s.quarantine_reason,
            "since": _iso(s.quarantined_at), "state": s.state}


def rig_problems(cfg: Config) -> list[str]:
    """Active problems not tied to one session (rig folder unreachable, unsafe names, ...)."""
    path = ledger_path(cfg)
    if not path.exists():
        return []
    ledger = Ledger(path, readonly=True)
    try:
        rig_wide = [p for p in ledger.problems() if p.session_id is None]
        return ([p.message for p in rig_wide if p.severity != "warning"]
                + [f"warning: {p.message}" for p in rig_wide if p.severity == "warning"])
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
        files = ledger.files(s.id)
        events = ledger.events(s.id)
        s2p = ledger.suite2p(s.id)
        try:
            return _history(ledger, s, files, events, s2p)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            row = _unreadable_row(s, exc, [])
            return {**row, "start_source": None, "layout": None, "validation_messages": [],
                    "events": [], "timings": {}, "files": [],
                    "problems": [{"code": "ledger", "file": "", "active": True, "since": None,
                                  "severity": "error", "message": row["problems"][0]}]}
    finally:
        ledger.close()


def _history(ledger: Ledger, s: SessionRow, files: list[FileRow],
             events: list[tuple[float, str, str]], s2p: Suite2pRow | None) -> dict[str, Any]:
    jobs = ledger.jobs(s.id)
    return {
        "subject": s.subject, "session": s.session,
        "state": "quarantined" if s.quarantined else s.state,
        "quarantine": _quarantine(s),
        "nwb_path": s.nwb_path, "frames": ledger.frames_committed(s.id),
        "start_time": s.start_time, "start_source": s.start_source,
        "timestamps": s.timestamps_source or "as acquired (not finalized yet)",
        "layout": PageLayout.from_json(s.layout).describe() if s.layout else None,
        "series": _series_frames(s, ledger.frames_committed(s.id)),
        "validation": CheckSummary.from_json(s.validation).short() if s.validation else None,
        "suite2p": _suite2p(s2p),
        "validation_messages": (CheckSummary.from_json(s.validation).messages
                                if s.validation else []),
        **_plugins(CheckSummary.from_json(s.validation) if s.validation else None),
        "files": [{"path": f.path, "state": f.state, "frames": f.frames,
                   "first_frame": f.first_frame, "size": f.size, "error": f.error}
                  for f in files],
        "problems": [{"code": p.code, "file": p.file, "message": p.message,
                      "severity": p.severity, "active": bool(p.active),
                      "since": _iso(p.first_at)}
                     for p in ledger.problems(s.id, active_only=False)],
        "events": [{"at": _iso(at), "stage": st, "message": m}
                   for at, st, m in events],
        "rate_hz": PageLayout.from_json(s.layout).series_rate if s.layout else None,
        "timings": _timings(s, files, events, s2p),
        "processing": _job(jobs[-1]) if jobs else None,
        "jobs": [_job(j) for j in jobs],
        "job_log_tail": log_tail(Path(jobs[-1].log), JOB_LOG_LINES) if jobs else [],
    }


def _timings(s: SessionRow, files: list[FileRow], events: list[tuple[float, str, str]],
             s2p: Suite2pRow | None) -> dict[str, Any]:
    """When each stage happened, from the ledger's own timestamps and events (ISO UTC), and how
    long the check and the suite2p attach took (seconds, from their stored summaries)."""
    def last_event(stage: str) -> float | None:
        return max((at for at, st, _ in events if st == stage), default=None)

    committed = [f.updated_at for f in files if f.frames_committed > 0]
    check = CheckSummary.from_json(s.validation) if s.validation else None
    s2p_seconds = None
    if s2p is not None and s2p.summary and s2p.state == Suite2pState.ATTACHED:
        s2p_seconds = json.loads(s2p.summary).get("seconds")
    return {
        "first_file_seen": _iso(min((f.first_seen for f in files), default=None)),
        # The last creation counts: a lost or damaged file is rebuilt under the same name.
        "nwb_created": _iso(last_event("create")),
        "last_frame_committed": _iso(max(committed, default=None)),
        "finished": _iso(s.finished_at),
        "checked": _iso(last_event("validate")) if check else None,
        "check_seconds": check.seconds if check else None,
        "suite2p_attached": _iso(last_event("suite2p")) if s2p_seconds is not None else None,
        "suite2p_seconds": s2p_seconds,
    }


_TIMING_LABELS = (("first_file_seen", "first file seen"), ("nwb_created", "NWB file created"),
                  ("last_frame_committed", "last frame committed"), ("finished", "finished"))


def timing_lines(record: dict[str, Any], tz: tzinfo | None = None) -> list[str]:
    """The "timings:" part of ``rig2nwb status SESSION``: each stage's time and how long after
    the first file it came, then the durations of the check and of the suite2p attach."""
    t = record.get("timings") or {}
    start = datetime.fromisoformat(t["first_file_seen"]) if t.get("first_file_seen") else None
    lines = ["timings:"]
    for key, label in _TIMING_LABELS:
        if not t.get(key):
            lines.append(f"  {label:<21} -")
            continue
        since = (datetime.fromisoformat(t[key]) - start).total_seconds() if start else -1.0
        after = f"  (+{duration(since)})" if since >= 0 and key != "first_file_seen" else ""
        lines.append(f"  {label:<21} {local_time(t[key], tz)}{after}")
    for seconds, done, label in (("check_seconds", "checked", "check took"),
                                 ("suite2p_seconds", "suite2p_attached", "suite2p attach took")):
        if t.get(seconds) is not None:
            when = f" (done {local_time(t[done], tz)})" if t.get(done) else ""
            lines.append(f"  {label:<21} {t[seconds]:.3g} s{when}")
    return lines


ACTIVE_STATES = ("quarantined", "acquiring", "paused", "waiting")


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sessions as people look for them: the ones not finished yet first (most recently updated
    first), then finished ones, most recently finished first. ISO UTC strings sort as times."""
    active = sorted((r for r in rows if r["state"] != "finished"),
                    key=lambda r: r["last_update"] or "", reverse=True)
    done = sorted((r for r in rows if r["state"] == "finished"),
                  key=lambda r: r["finished_at"] or r["last_update"] or "", reverse=True)
    return active + done


def counts_line(rows: list[dict[str, Any]], rig_wide: list[str] | None = None) -> str:
    """One line that says how many sessions are in which stage and how many need a look."""
    stages: dict[str, int] = {}
    for r in rows:
        stages[r["state"]] = stages.get(r["state"], 0) + 1
    order = [*ACTIVE_STATES, "finished"]
    parts = [f"{stages[k]} {k}" for k in sorted(stages, key=lambda k: (
        order.index(k) if k in order else len(order), k))]
    line = f"{len(rows)} session(s): " + ", ".join(parts)
    errors = sum(bool(own_problems(r, rig_wide)) for r in rows)
    warned = sum(bool(r["warnings"]) and not own_problems(r, rig_wide) for r in rows)
    if errors:
        line += f"; {errors} with problems"
    if warned:
        line += f"; {warned} with warnings only"
    return line


def own_problems(row: dict[str, Any], rig_wide: list[str] | None = None) -> list[str]:
    """A row's active errors without the rig-wide ones that ``collect`` copies into every row."""
    shared = set(rig_wide or [])
    return [p for p in row["problems"] if p not in shared]


def check_cell(r: dict[str, Any]) -> str:
    if r["validation"] is not None and r["validation_ok"] is None and r["validation"] != "pending":
        return "not checked"  # output.check_files = false (only the summary picture was made)
    check = "-" if r["validation"] is None else (
        "pending" if r["validation_ok"] is None else ("ok" if r["validation_ok"] else "FAILED"))
    if r["validation_counts"] and r["validation_ok"] is not None:
        c = r["validation_counts"]
        check += (f" ({c['CRITICAL']}C/{c['BEST_PRACTICE_VIOLATION']}V/"
                  f"{c['BEST_PRACTICE_SUGGESTION']}S)")
    return check


def files_cell(r: dict[str, Any]) -> str:
    files = f"{r['files_committed']}/{r['files']}"
    if r["files_failed"]:
        files += f" ({r['files_failed']} bad)"
    return files


def frames_cell(r: dict[str, Any]) -> str:
    series = r["series"]
    return f"{r['frames']:,}" if len(series) <= 1 else f"{r['frames']:,} ({len(series)} series)"


def rate_cell(r: dict[str, Any]) -> str:
    rate = r.get("rate_hz")
    return "-" if rate is None else f"{rate:.4g} Hz"


def render_table(rows: list[dict[str, Any]], rig_wide: list[str] | None = None,
                 tz: tzinfo | None = None) -> str:
    """The ``rig2nwb status`` table, active sessions first; times in ``tz`` (default: UTC)."""
    footer = "".join(f"\nrig-wide {p}" if p.startswith("warning: ") else f"\nrig-wide problem: {p}"
                     for p in rig_wide or [])
    if not rows:
        return "no sessions yet" + footer
    header = ["SUBJECT", "SESSION", "STAGE", "FRAMES", "FILES", "NWB SIZE", "RATE", "UPDATED",
              "SUITE2P", "CHECK", "LAST PROBLEM"]
    body = []
    for r in sort_rows(rows):
        problems = own_problems(r, rig_wide or [])  # rig-wide ones are listed below the table
        warnings = [f"warning: {w}" for w in r["warnings"]]
        shown = problems or warnings  # errors first; warnings when there is nothing worse
        last = shown[-1] if shown else ""
        if len(shown) > 1:
            last = f"[{len(shown)}] {last}"
        body.append([r["subject"], r["session"], r["state"], frames_cell(r), files_cell(r),
                     human_size(r["nwb_bytes"]), rate_cell(r), local_time(r["last_update"], tz),
                     suite2p_cell(r["suite2p"], r.get("processing")), check_cell(r),
                     clip(last, 90)])
    # Names and messages come from the rig folder: nothing unprintable reaches the terminal
    # (each line of the footer on its own: the newlines between them are the table's).
    body = [[printable(str(c)) for c in row] for row in body]
    footer = "\n".join(printable(line) for line in footer.split("\n"))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *body]]
    if len(rows) > 1:
        lines.append(counts_line(rows, rig_wide))
    if tz is not None:
        lines.append(zone_line(tz, str(tz)))
    return "\n".join(lines) + footer


def local_time(iso: str | None, tz: tzinfo | None = None) -> str:
    """An ISO time from ``collect`` as ``2026-11-21 14:02:01+01:00`` in ``tz``: the format of
    every time people read (the log lines too, which add milliseconds; see logs.py)."""
    if not iso:
        return ""
    t = datetime.fromisoformat(iso)
    return (t.astimezone(tz) if tz else t).isoformat(sep=" ", timespec="seconds")


def zone_line(tz: tzinfo | None, name: str) -> str:
    """Which zone the times are in, e.g. ``times in Europe/Berlin (session.timezone), as in the
    log``."""
    return f"times in {name} (session.timezone), as in the log" if tz else "times in UTC"


def _suite2p(row: Suite2pRow | None) -> dict[str, Any] | None:
    """The session's suite2p stage: None when no suite2p output has been seen."""
    if row is None:
        return None
    summary = json.loads(row.summary) if row.summary and row.state == Suite2pState.ATTACHED else None
    return {"state": row.state, "detail": row.detail, "folder": row.folder,
            "rois": summary["rois"] if summary else None,
            "cells": summary["cells"] if summary else None,
            "planes": summary["planes"] if summary else None,
            "updated": _iso(row.updated_at)}


JOB_LOG_LINES = 20


def _job(job: JobRow | None) -> dict[str, Any] | None:
    """A suite2p job as ``status --json`` shows it."""
    if job is None:
        return None
    return {"state": job.state, "executor": job.executor, "job_id": job.scheduler_id,
            # attempts: how many jobs this run of the session took so far (the latest's number)
            "attempt": job.attempt, "attempts": job.attempt, "requested": bool(job.requested),
            "log": job.log,
            "detail": job.detail, "exit_code": job.exit_code,
            "submitted": _iso(job.submitted_at), "started": _iso(job.started_at),
            "ended": _iso(job.ended_at)}


def suite2p_cell(s: dict[str, Any] | None, job: dict[str, Any] | None = None) -> str:
    if job is not None and (s is None or s["state"] != Suite2pState.ATTACHED
                            or job["state"] in ACTIVE_JOB_STATES):
        where = f"{job['executor']} {job['job_id']}" if job["job_id"] else job["executor"]
        return f"job {job['state']} ({where})"
    if s is None:
        return "-"
    if s["state"] == Suite2pState.ATTACHED:
        return f"{s['cells']}/{s['rois']} cells"
    return str(s["state"])


def _series_frames(s: SessionRow, pages: int) -> dict[str, int]:
    """Frames in each TwoPhotonSeries of the NWB file (a finished session keeps whole cycles)."""
    if not s.layout:
        return {}
    layout = PageLayout.from_json(s.layout)
    kept = layout.complete(pages) if s.state == SessionState.FINISHED else pages
    return {spec.name: layout.count(spec.index, kept) for spec in layout.series}


def render_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2)


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds") if ts else None


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


