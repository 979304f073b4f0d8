"""Admission: the rules that decide whether a complete TIFF may join its session's series, and
how a session's times are chosen. Pure functions of observed facts (no disk, no clock): the
engine gathers the facts and carries out the verdicts.

The planner (core.planner) decides *when* a file is considered; these rules decide *whether* its
pages may be appended, and what the data says about start times and frame onsets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from rig2nwb.core.pagelayout import PageLayout
from rig2nwb.states import FileState, Problem

# A series' measured rate that differs from the nominal one by more than this is worth saying
# (a slow stack's header rate ignores the moves between slices).
RATE_NOTE_TOLERANCE = 0.05


@dataclass(frozen=True)
class Refusal:
    """Why a file is not appended: a stable problem code and a message naming the file."""

    code: Problem
    message: str


def shape_text(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def admit(name: str, *, file_site: str, session_site: str, session_name: str,
          shape: tuple[int, int], dtype: str, session_shape: str | None,
          session_dtype: str | None) -> Refusal | None:
    """Can a TIFF of this site and frame shape join the session's series? (None: yes.)"""
    if session_site and file_site != session_site:
        return Refusal(Problem.WRONG_SITE, f"{name}: in site {file_site!r} but session "
                       f"{session_name!r} was started in site {session_site!r}")
    if session_shape is not None and (session_shape != shape_text(shape) or session_dtype != dtype):
        return Refusal(Problem.SHAPE_MISMATCH, f"{name}: frames are {shape[0]}x{shape[1]} {dtype}, "
                       f"the session's series is {session_shape} {session_dtype}")
    return None


def admit_layout(name: str, layout: PageLayout, session_layout: PageLayout | None) -> Refusal | None:
    """A later file must hold the acquisition the session's series were made for."""
    if session_layout is not None and not session_layout.same_acquisition(layout):
        return Refusal(Problem.LAYOUT_MISMATCH, f"{name}: holds {layout.describe()} but the "
                       f"session's series were made for {session_layout.describe()}")
    return None


def grown_file_continues(first_frame: int | None, frames: int | None, committed: int) -> bool:
    """A committed TIFF that changed afterwards: may its new pages be appended? Only while it
    is still the last file of the series (a series cannot grow in the middle)."""
    return first_frame is not None and first_frame + (frames or 0) == committed


def retry_failed(state: str, seen: tuple[int | None, int | None], now: tuple[int, int]) -> bool:
    """A failed file is tried again once it changed (it was still being written)."""
    return state == FileState.FAILED and seen != now


def start_time(name: str, *, scanimage_start: datetime | None, scanimage_version: str,
               datetime_tag: datetime | None, mtime_ns: int, pages: int,
               layout: PageLayout, tz: tzinfo) -> tuple[datetime, str]:
    """Session start from the data, never "now": ScanImage's acquisition start (epoch, or SI3
    triggerTimeString), else the TIFF's DateTime tag, else its mtime minus the duration of its
    frames at the nominal rate. Rig clocks are local time: the config's timezone.
    Returns (start, where it came from)."""
    if scanimage_start is not None:
        key = "triggerTimeString" if scanimage_version.startswith("3") else "epoch"
        return scanimage_start.replace(tzinfo=tz), f"the ScanImage {key} of {name}"
    if datetime_tag is not None:
        return datetime_tag.replace(tzinfo=tz), f"the DateTime tag of {name}"
    end = datetime.fromtimestamp(mtime_ns / 1e9, tz=tz)
    frames = pages / layout.n_channels
    start = end - timedelta(seconds=frames / layout.frame_rate)
    return start.replace(microsecond=0), (
        f"the modification time of {name} minus {frames:g} frames at {layout.frame_rate:g} Hz")


@dataclass(frozen=True)
class OnsetVerdict:
    """What to do with a scan file's onsets: ``use`` them (the first ``keep``), and the
    problem to report (None: they match)."""

    use: bool
    keep: int
    problem: str | None


def onsets_verdict(name: str, n_onsets: int, kept_frames: int, acquired_frames: int,
                   policy: str) -> OnsetVerdict:
    """One onset per acquired scan frame (those of a dropped incomplete volume included) or per
    kept frame both match; more onsets than frames are dropped only when the policy says so
    (``drop_extra_onsets``); fewer keep the acquired times. Frames are never shifted."""
    if n_onsets in (kept_frames, acquired_frames):
        return OnsetVerdict(True, kept_frames, None)
    mismatch = f"{name}: {n_onsets} frame onsets for {acquired_frames} frames"
    if n_onsets > acquired_frames and policy == "drop_extra_onsets":
        return OnsetVerdict(True, kept_frames, f"{mismatch}; the last {n_onsets - kept_frames} "
                            "onsets were dropped (scan.on_mismatch = drop_extra_onsets)")
    return OnsetVerdict(False, 0, f"{mismatch}; timestamps stay as acquired (see scan.on_mismatch)")


def rate_worth_noting(measured: float, nominal: float) -> bool:
    """The 5 % rule: a measured rate this far from the nominal one is logged."""
    return abs(measured / nominal - 1) > RATE_NOTE_TOLERANCE
