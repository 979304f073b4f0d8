"""The pure core: from what was observed and what the ledger says, decide what to do next.

No I/O here. The engine gathers facts (stat results, inspection results, ledger rows), asks
``plan_session`` for the next action of one session, carries it out, and asks again. Keeping
the decisions pure makes the ordering and completion rules easy to test exhaustively.

Rules (documented in docs/conversion.md, "How it decides"):
- Files of a session are appended strictly in run order (folder, run name, file index; numbers
  compare as numbers). Only the first unresolved file is ever a candidate, so a TIFF still being
  written holds back later files of its own session and nothing else.
- A file is complete when any configured signal says so: a later file of the same run exists
  (``next_file``), an end-of-run marker exists (``marker``), the writer closed it (``close_write``,
  Linux), or its size and mtime have not changed for the settle period (``stable``). Completion
  only makes a file a candidate: every page must still parse before a single frame is appended.
- When the file before a candidate in the same run is missing (index gap, or a run whose first
  file seen is numbered 2 or more), the candidate waits up to ``gap_wait_seconds`` (counted from
  its own last change) for it, so files copied out of order still land in order; after that it
  is appended and a late predecessor is reported as out of order.
- A file that turns up before files already committed cannot be inserted into an append-only
  series: it is marked out of order and reported, never silently dropped.
- A session's acquisition is complete when its end marker exists, or when its lab files are
  present (if required) and no TIFF has changed for the idle period; then every remaining file
  is complete and, once all are resolved, the session is finalized. A file that failed for a
  passing reason (permission denied, an I/O error) and is still there holds finalizing back: it
  is tried again on every rescan, and the session finishes once it reads or is removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rig2nwb.core.runorder import RunPosition
from rig2nwb.states import RESOLVED_FILE_STATES, FileState

RESOLVED = RESOLVED_FILE_STATES

Parsed = Literal["ok", "bad", "unknown"]


@dataclass(frozen=True)
class FileFacts:
    path: str
    position: RunPosition
    present: bool
    quiet_for: float  # seconds since size or mtime last changed (as observed)
    closed: bool  # a close-write event came after the last change
    parsed: Parsed  # inspection result for the current size and mtime
    state: str  # ledger state: waiting, appending, committed, failed, vanished, out_of_order
    holds_frames: bool = False  # some of its frames are in the series, whatever its state
    retrying: bool = False  # failed for a passing reason (permissions, I/O): tried again


@dataclass(frozen=True)
class SessionFacts:
    files: Sequence[FileFacts]
    marker: bool
    lab_files_present: bool
    idle_for: float  # seconds since any TIFF of the session last changed (wall clock)
    finished: bool  # ledger says the session is finished


@dataclass(frozen=True)
class Rules:
    signals: frozenset[str]
    settle_seconds: float
    session_idle_seconds: float
    require_lab_files: bool
    gap_wait_seconds: float
    convert: bool = False  # one-shot backfill: every TIFF that parses is complete


@dataclass(frozen=True)
class Action:
    kind: Literal["inspect", "append", "fail", "vanished", "out_of_order", "finalize", "wait"]
    path: str = ""
    reason: str = ""


def session_done(facts: SessionFacts, rules: Rules) -> bool:
    """True when the session's acquisition is over (marker, or lab files + idle period)."""
    if rules.convert:
        return True
    if "marker" in rules.signals and facts.marker:
        return True
    lab_ok = facts.lab_files_present or not rules.require_lab_files
    return lab_ok and facts.idle_for >= rules.session_idle_seconds


def plan_session(facts: SessionFacts, rules: Rules) -> list[Action]:
    """Return the actions to take now, in order. Bookkeeping actions (vanished, out of order)
    come first; then at most one action for the next file in run order, or finalize."""
    files = sorted(facts.files, key=lambda f: f.position.sort_key)
    actions: list[Action] = []

    last_done = -1  # index in ``files`` of the last file that holds committed frames
    for i, f in enumerate(files):
        if f.state in (FileState.COMMITTED, FileState.APPENDING) or f.holds_frames:
            last_done = i
    for i, f in enumerate(files):
        if f.state in RESOLVED:
            continue
        if not f.present:
            partly = f.state == FileState.APPENDING
            actions.append(Action("vanished", f.path, "deleted before it was completely appended"
                                  if partly else "deleted before it was appended"))
        elif f.state == FileState.APPENDING:
            continue
        elif i < last_done:
            later = files[last_done].position.name
            actions.append(Action(
                "out_of_order", f.path,
                f"arrived after {later} was already appended; an NWB series cannot take frames "
                "in the middle (run `rig2nwb convert` on a copy to rebuild in order)",
            ))
    handled = {a.path for a in actions}

    done = session_done(facts, rules)
    for i, f in enumerate(files):
        if f.path in handled or f.state in RESOLVED or not f.present:
            continue
        return [*actions, *_next_step(f, files[:i], facts, rules, done)]

    held = next((f for f in files if f.retrying and f.present), None)
    if done and held is not None and not facts.finished:
        # Finalizing now would finish the session without a file the lab can still fix (a
        # permission): it waits, with the file's problem in status, until the file reads or goes.
        actions.append(Action("wait", held.path, "failed for a passing reason; tried again"))
    elif done and not facts.finished and any(f.state == FileState.COMMITTED for f in files):
        actions.append(Action("finalize"))
    return actions


def _next_step(f: FileFacts, before: Sequence[FileFacts], facts: SessionFacts, rules: Rules,
               done: bool) -> list[Action]:
    complete, why = _is_complete(f, facts, rules, done)
    if not complete:
        return [Action("wait", f.path, why)]
    gap = _missing_predecessor(f, before)
    if gap is not None and not done and f.quiet_for < rules.gap_wait_seconds:
        return [Action("wait", f.path, f"waiting for {gap} (earlier file of the same run)")]
    if f.parsed == "unknown":
        return [Action("inspect", f.path, why)]
    if f.parsed == "bad":
        return [Action("fail", f.path, why)]
    return [Action("append", f.path, why)]


def _is_complete(f: FileFacts, facts: SessionFacts, rules: Rules, done: bool) -> tuple[bool, str]:
    if f.state == FileState.APPENDING:
        return True, "partly appended before a restart"
    if rules.convert:
        return True, "convert: every TIFF present is taken as complete"
    if done:
        return True, "session acquisition is complete"
    sig = rules.signals
    if "marker" in sig and facts.marker:
        return True, "end-of-run marker present"
    if "next_file" in sig and any(
        g.present and g.position.folder == f.position.folder and g.position.run == f.position.run
        and g.position.index > f.position.index
        for g in facts.files
    ):
        return True, "a later file of the same run appeared"
    if "close_write" in sig and f.closed:
        return True, "the writer closed the file"
    if "stable" in sig and f.quiet_for >= rules.settle_seconds:
        return True, f"size and mtime stable for {rules.settle_seconds:g} s"
    return False, "still being written"


def _missing_predecessor(f: FileFacts, before: Sequence[FileFacts]) -> str | None:
    """Name the missing earlier file of the same run, if the run has a gap just before ``f``.

    Runs are expected to start at index 0 or 1 (ScanImage starts at 00001), so a run whose
    first file seen is number 2 or higher waits for its start too."""
    if f.position.index < 0:
        return None
    same_run = [g.position.index for g in before if g.position.folder == f.position.folder
                and g.position.run == f.position.run and g.position.index >= 0]
    prev = max(same_run) if same_run else 0
    if f.position.index > prev + 1:
        return f"file index {prev + 1}"
    return None
