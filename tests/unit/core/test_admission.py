"""The admission rules (core.admission), pure: facts in, verdicts out. Every expectation is
written from the rule's statement, with values this test chose."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from rig2nwb.core.admission import (
    admit,
    admit_layout,
    grown_file_continues,
    onsets_verdict,
    rate_worth_noting,
    retry_failed,
    start_time,
)
from rig2nwb.core.pagelayout import PageLayout
from rig2nwb.states import Problem

BERLIN = ZoneInfo("Europe/Berlin")


def _admit(**kw: object) -> object:
    args: dict[str, object] = dict(file_site="site1", session_site="site1", session_name="s1",
                                   shape=(32, 48), dtype="int16", session_shape="32x48",
                                   session_dtype="int16")
    args.update(kw)
    return admit("r_00002.tif", **args)  # type: ignore[arg-type]


def test_a_file_like_the_session_is_admitted() -> None:
    assert _admit() is None
    assert _admit(session_shape=None, session_dtype=None) is None  # the first file sets them
    assert _admit(session_site="") is None  # a layout without sites


def test_another_site_is_refused_by_name() -> None:
    refusal = _admit(file_site="site2")
    assert refusal is not None and refusal.code == Problem.WRONG_SITE
    assert "r_00002.tif" in refusal.message and "'site2'" in refusal.message
    assert "'site1'" in refusal.message


@pytest.mark.parametrize("change", [{"shape": (48, 32)}, {"dtype": "uint16"}])
def test_another_frame_shape_or_type_is_refused(change: dict[str, object]) -> None:
    refusal = _admit(**change)
    assert refusal is not None and refusal.code == Problem.SHAPE_MISMATCH
    assert "32x48 int16" in refusal.message  # what the series is


def test_a_later_file_must_hold_the_same_acquisition() -> None:
    two_planes = PageLayout(planes=2, frame_rate=30.0)
    assert admit_layout("r.tif", two_planes, None) is None
    assert admit_layout("r.tif", two_planes, PageLayout(planes=2, frame_rate=30.0)) is None
    refusal = admit_layout("r.tif", PageLayout(frame_rate=30.0), two_planes)
    assert refusal is not None and refusal.code == Problem.LAYOUT_MISMATCH


def test_a_grown_file_continues_only_as_the_last_file_of_the_series() -> None:
    assert grown_file_continues(first_frame=100, frames=50, committed=150)  # it ends the series
    assert not grown_file_continues(first_frame=100, frames=50, committed=180)  # others follow
    assert not grown_file_continues(first_frame=None, frames=None, committed=0)  # never appended


def test_a_failed_file_is_retried_once_it_changed() -> None:
    assert retry_failed("failed", (100, 5), (120, 6))
    assert not retry_failed("failed", (100, 5), (100, 5))
    assert not retry_failed("committed", (100, 5), (120, 6))  # not this rule's business


def test_start_time_prefers_scanimage_then_the_datetime_tag_then_the_mtime() -> None:
    layout = PageLayout(frame_rate=10.0)
    si = datetime(2026, 11, 3, 9, 0, 0)
    tag = datetime(2026, 11, 3, 9, 0, 5)
    mtime_ns = int(datetime(2026, 11, 3, 9, 1, 0, tzinfo=BERLIN).timestamp() * 1e9)
    start, source = start_time("a.tif", scanimage_start=si, scanimage_version="2021",
                               datetime_tag=tag, mtime_ns=mtime_ns, pages=600, layout=layout,
                               tz=BERLIN)
    assert start == si.replace(tzinfo=BERLIN) and source == "the ScanImage epoch of a.tif"
    start, source = start_time("a.tif", scanimage_start=si, scanimage_version="3.8",
                               datetime_tag=None, mtime_ns=mtime_ns, pages=600, layout=layout,
                               tz=BERLIN)
    assert "triggerTimeString" in source  # ScanImage 3 calls it so
    start, source = start_time("a.tif", scanimage_start=None, scanimage_version="",
                               datetime_tag=tag, mtime_ns=mtime_ns, pages=600, layout=layout,
                               tz=BERLIN)
    assert start == tag.replace(tzinfo=BERLIN) and "DateTime tag" in source
    start, source = start_time("a.tif", scanimage_start=None, scanimage_version="",
                               datetime_tag=None, mtime_ns=mtime_ns, pages=600, layout=layout,
                               tz=BERLIN)
    # 600 frames at 10 Hz end at the mtime: they began 60 s before it
    assert start == datetime(2026, 11, 3, 9, 1, 0, tzinfo=BERLIN) - timedelta(seconds=60)
    assert "600 frames at 10 Hz" in source


def test_onsets_match_per_kept_or_per_acquired_frame() -> None:
    assert onsets_verdict("s_scan.txt", 90, 90, 95, "keep_timestamps").use
    verdict = onsets_verdict("s_scan.txt", 95, 90, 95, "keep_timestamps")
    assert verdict.use and verdict.keep == 90 and verdict.problem is None  # incomplete cycle


def test_extra_onsets_are_dropped_only_when_the_policy_says_so() -> None:
    refused = onsets_verdict("s_scan.txt", 100, 90, 95, "keep_timestamps")
    assert not refused.use and "100 frame onsets for 95 frames" in (refused.problem or "")
    dropped = onsets_verdict("s_scan.txt", 100, 90, 95, "drop_extra_onsets")
    assert dropped.use and dropped.keep == 90 and "last 10 onsets were dropped" in (
        dropped.problem or "")
    fewer = onsets_verdict("s_scan.txt", 80, 90, 95, "drop_extra_onsets")
    assert not fewer.use  # frames are never shifted onto too few onsets


def test_the_five_percent_rate_rule() -> None:
    assert not rate_worth_noting(30.0 * 1.049, 30.0)
    assert rate_worth_noting(30.0 * 1.051, 30.0)
    assert rate_worth_noting(30.0 * 0.94, 30.0)
