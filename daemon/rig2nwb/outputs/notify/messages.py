"""The words of each notification: title, body and attachment, from the ledger's facts about
the session the event belongs to."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rig2nwb.config.paths import display_path, summary_png
from rig2nwb.config.schema import Config, NotifyKind
from rig2nwb.core.humanize import duration, human_size
from rig2nwb.core.names import printable
from rig2nwb.core.pagelayout import PageLayout
from rig2nwb.ledger.rows import EventRow, SessionRow
from rig2nwb.ledger.store import Ledger
from rig2nwb.outputs.notify.sender import Notification, NotifyType
from rig2nwb.states import SessionState

if TYPE_CHECKING:
    pass


def format_message(cfg: Config, ledger: Ledger, ev: EventRow, kind: NotifyKind,
                   facts: EventRow) -> Notification:
    """The title and body of one notification (``facts``: the finalize/suite2p event of a
    converted/suite2p message, else ``ev``). Names and file names come from the rig: the title
    is one line and no line carries a control character (a newline in a name must not forge a
    line, an ESC must not reach a terminal that shows the message)."""
    note = _format_message(cfg, ledger, ev, kind, facts)
    return dataclasses.replace(note, title=printable(note.title), body="\n".join(
        printable(line) for line in note.body.split("\n")))


def _format_message(cfg: Config, ledger: Ledger, ev: EventRow, kind: NotifyKind,
                    facts: EventRow) -> Notification:
    head = f"rig2nwb {cfg.rig.name}:"
    sess = ledger.session_by_id(ev.session_id) if ev.session_id is not None else None
    if sess is None:
        what = f"daemon {ev.message.split(':', 1)[0]}" if kind == "daemon" else kind
        title = f"{head} {what}"
        kind_type: NotifyType = {"problem": "failure", "warning": "warning"}.get(  # type: ignore[assignment]
            kind, "info")
        return Notification(ev.id, kind, title, ev.message, kind_type)
    label = f"sub-{sess.subject} ses-{sess.session}"
    nwb = display_path(cfg, Path(sess.nwb_path))
    details = f"Details: rig2nwb status {sess.session}"
    if kind in ("problem", "warning"):
        body = [ev.message, *([f"NWB file: {nwb}"] if Path(sess.nwb_path).exists() else []), details]
        return Notification(ev.id, kind, f"{head} {label} {kind}", "\n".join(body),
                            "failure" if kind == "problem" else "warning")
    check, ok = _check_line(cfg, sess, ev)
    picture = summary_png(cfg, sess.subject, sess.session)
    attach = str(picture) if picture.is_file() else None
    size = _file_size(Path(sess.nwb_path))
    if kind == "converted":
        body = [*_frames_lines(ledger, sess), f"Check: {check}", f"NWB file: {nwb}{size}",
                *_warning_lines(ledger, sess), details]
        title = f"{head} {label} converted" + ("" if ok is not False else " (check failed)")
    else:
        verb = "replaced" if facts.message.startswith("suite2p replaced") else "attached"
        row = ledger.suite2p(sess.id)
        summary = json.loads(row.summary) if row is not None and row.summary else None
        found = (f"{summary['rois']} ROIs, {summary['cells']} cells, {summary['planes']} plane(s)"
                 if summary else facts.message)
        body = [f"suite2p results {verb}: {found}"]
        if row is not None:
            body.append(f"From: {display_path(cfg, Path(row.folder))}")
        body += [f"Check: {check}", f"NWB file: {nwb}{size}", details]
        title = f"{head} {label} suite2p {verb}" + ("" if ok is not False else " (check failed)")
    return Notification(ev.id, kind, title, "\n".join(body),
                        "success" if ok is not False else "warning", attach)


def _check_line(cfg: Config, sess: SessionRow, ev: EventRow) -> tuple[str, bool | None]:
    """The check result (text, ok) for a message sent on ``ev``."""
    from rig2nwb.nwb.checksummary import CheckSummary

    if ev.stage != "validate":
        return ("off (output.check_files = false)" if not cfg.output.check_files
                else "not run"), None
    if sess.validation:
        with contextlib.suppress(ValueError):
            summary = CheckSummary.from_json(sess.validation)
            if summary.short() == ev.message:
                return ev.message, summary.ok if summary.checked else None
    # checked again since: judge by the event's own line
    if ev.message.startswith("not checked"):
        return ev.message, None
    return ev.message, ev.message.startswith("valid;") and " 0 critical" in ev.message


def _frames_lines(ledger: Ledger, sess: SessionRow) -> list[str]:
    pages = ledger.frames_committed(sess.id)
    if not sess.layout:
        return [f"Finished: {pages} frames"]
    layout = PageLayout.from_json(sess.layout)
    kept = layout.complete(pages) if sess.state == SessionState.FINISHED else pages
    counts = [(spec.name, layout.count(spec.index, kept)) for spec in layout.series]
    if len(counts) == 1:
        lines = [f"Finished: {counts[0][1]} frames"]
    else:
        lines = [f"Finished: {len(counts)} series: " + ", ".join(f"{n} {c} frames" for n, c in counts)]
    longest = max(c for _, c in counts)
    if longest:
        lines.append(f"Acquisition: {duration(longest / layout.series_rate)} "
                     f"({longest} frames at {layout.series_rate:.3g} Hz per series)")
    return lines


def _warning_lines(ledger: Ledger, sess: SessionRow) -> list[str]:
    active = ledger.problems(sess.id)
    lines = []
    for severity, label in (("error", "Problems"), ("warning", "Warnings")):
        found = [p.message for p in active if (p.severity == "warning") == (severity == "warning")]
        if found:
            lines.append(f"{label} ({len(found)}): {found[0]}" + (" ..." if len(found) > 1 else ""))
    return lines


def _file_size(path: Path) -> str:
    """`` (1.2 GB)``, or "" when the file cannot be looked at."""
    try:
        return f" ({human_size(path.stat().st_size)})"
    except OSError:
        return ""
