"""`rig2nwb status` (table, JSON, history) and the static status page with its hook.

The ledger is filled through the real Ledger API (real SQLite) with sessions in every state the
engine uses and values this test chose; every expectation below comes from those inputs, never
from running the status code twice.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import struct
import subprocess
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from rig2nwb.config.paths import ledger_path, preview_png, status_html, status_json, summary_png
from rig2nwb.core.pagelayout import PageLayout
from rig2nwb.ledger.store import Ledger
from rig2nwb.nwb.checksummary import CheckSummary
from rig2nwb.outputs.page import StatusPageHook, write_page
from rig2nwb.outputs.status import collect, history, render_table, sort_rows
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.status_pages import XHTML, parse_page, session_rows, text_of

EVIL = '<script>alert(1)</script> & "x"'
RIG_WIDE = "rig folder /data/rig1 is unreachable (share unmounted?)"


@dataclass
class Expect:
    """What the test put into the ledger for one session."""

    subject: str
    session: str
    state: str
    frames: int = 0
    files: str = "0/0"
    size: str = "0 B"
    rate: str = "-"
    suite2p: str = "-"
    check: str = "-"
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def png(path: Path, rgb: tuple[int, int, int], size: int = 16) -> None:
    """A real, minimal PNG (a shaded square) written by hand: no imaging library in the loop."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + b"".join(bytes(c * (x + y + size) // (3 * size) for c in rgb)
                                       for x in range(size)) for y in range(size))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2,
                                                                        0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def check_json(errors: int = 0, critical: int = 0, violations: int = 0, suggestions: int = 0,
               failed: str | None = None, seconds: float = 0.0) -> str:
    return CheckSummary(validation_errors=errors, counts={
        "CRITICAL": critical, "BEST_PRACTICE_VIOLATION": violations,
        "BEST_PRACTICE_SUGGESTION": suggestions, "ERROR": 0}, messages=[], seconds=seconds,
        failed=failed).to_json()


def set_times(ledger: Ledger, session_id: int, **cols: float) -> None:
    """Pin timestamps the API sets to 'now' (updated_at, finished_at) to values the test chose."""
    with ledger.transaction() as db:
        for col, value in cols.items():
            db.execute(f"UPDATE sessions SET {col}=? WHERE id=?", (value, session_id))


class Filler:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.cfg = lab.config()
        self.ledger = Ledger(ledger_path(self.cfg))
        self.expect: dict[str, Expect] = {}

    def session(self, subject: str, session: str, *, state: str, layout: PageLayout | None = None,
                files: list[tuple[str, int, int]] = (),  # type: ignore[assignment]
                nwb_bytes: int = 0, **fields: Any) -> int:
        """Files: (state, pages, size). Pages of committed/appending files count as committed."""
        nwb = self.lab.nwb(session, subject)
        row = self.ledger.ensure_session(subject, session, "site1", str(nwb))
        if nwb_bytes:
            nwb.write_bytes(b"\0" * nwb_bytes)
        committed = 0
        for i, (fstate, pages, size) in enumerate(files):
            f = self.ledger.add_file(row.id, f"{subject}/tif/site1/{session}/x_{i + 1:05d}.tif", size,
                                     0)
            if fstate in ("committed", "appending"):
                self.ledger.commit_frames(row.id, f.id, file_frames_committed=pages,
                                          file_state=fstate, series_frames=committed + pages,
                                          size=size, mtime_ns=0, frames=pages,
                                          first_frame=committed)
                committed += pages
            else:
                self.ledger.update_file(f.id, state=fstate, error="bad" if fstate == "failed" else None)
        self.ledger.update_session(row.id, state=state, layout=layout.to_json() if layout else None,
                                   nwb_created=1 if layout else 0, **fields)
        return row.id


@pytest.fixture
def filled(lab: Lab) -> Filler:
    """A ledger with a session in every state and every kind of problem and suite2p stage."""
    f = Filler(lab)
    led = f.ledger
    t0 = datetime(2026, 9, 21, 12, 0, tzinfo=UTC).timestamp()  # pinned, far from now
    one = PageLayout(frame_rate=30.0)

    sid = f.session("m1", "waiting1", state="waiting")
    set_times(led, sid, updated_at=t0 + 50)
    f.expect["waiting1"] = Expect("m1", "waiting1", "waiting")

    sid = f.session("m1", "acq1", state="acquiring", layout=one, nwb_bytes=2_500_000,
                    files=[("committed", 100, 1_000_000), ("committed", 150, 1_500_000),
                           ("waiting", 0, 10)])
    led.report_problem(sid, "si_header", "x_00002.tif: ScanImage header says 2 channels", "x2",
                       severity="warning")
    set_times(led, sid, updated_at=t0 + 100)
    f.expect["acq1"] = Expect("m1", "acq1", "acquiring", 250, "2/3", "2.5 MB", "30 Hz",
                              warnings=("x_00002.tif: ScanImage header says 2 channels",))

    # 2 planes x 2 channels, 1 flyback frame at 60 Hz: each series at 60 / 3 = 20 Hz
    vol = PageLayout(channels=(1, 2), planes=2, flyback_frames=1, frame_rate=60.0)
    sid = f.session("m2", "paused1", state="paused", layout=vol, nwb_bytes=1_234_567,
                    files=[("committed", 60, 3_000_000), ("failed", 0, 5)])
    led.report_problem(sid, "disk_full", "disk full: 0.3 GB free in /nwb, need 1.3 GB")
    set_times(led, sid, updated_at=t0 + 75)
    f.expect["paused1"] = Expect("m2", "paused1", "paused", 60, "1/2 (1 bad)", "1.2 MB", "20 Hz",
                                 errors=("disk full: 0.3 GB free in /nwb, need 1.3 GB",))

    sid = f.session("m2", "ok1", state="finished", layout=one, nwb_bytes=9_000_000,
                    files=[("committed", 300, 9_000_000)],
                    validation=check_json(violations=1, suggestions=3, seconds=1.25))
    led.set_suite2p(sid, folder="/s2p/ok1", state="attached", detail="34 ROIs (29 cells)",
                    summary=json.dumps({"planes": 1, "rois": 34, "cells": 29, "seconds": 3.5}))
    set_times(led, sid, updated_at=t0 + 20, finished_at=t0 + 20)
    f.expect["ok1"] = Expect("m2", "ok1", "finished", 300, "1/1", "9.0 MB", "30 Hz",
                             suite2p="29/34 cells", check="ok (0C/1V/3S)")

    sid = f.session("m2", "bad1", state="finished", layout=one, nwb_bytes=500,
                    files=[("committed", 10, 500)],
                    validation=check_json(critical=2, seconds=0.5))
    led.report_problem(sid, "validation", f"CRITICAL: {EVIL} in x_00001.tif")
    led.set_suite2p(sid, folder="/s2p/bad1", state="problem", detail="F.npy has 9 frames")
    set_times(led, sid, updated_at=t0 + 30, finished_at=t0 + 30)
    f.expect["bad1"] = Expect("m2", "bad1", "finished", 10, "1/1", "500 B", "30 Hz",
                              suite2p="problem", check="FAILED (2C/0V/0S)",
                              errors=(f"CRITICAL: {EVIL} in x_00001.tif",))

    sid = f.session("m3", "pend1", state="finished", layout=one, files=[("committed", 5, 50)])
    led.set_suite2p(sid, folder="/s2p/pend1", state="incomplete", detail="plane0/F.npy missing")
    set_times(led, sid, updated_at=t0 + 10, finished_at=t0 + 10)
    f.expect["pend1"] = Expect("m3", "pend1", "finished", 5, "1/1", "0 B", "30 Hz",
                               suite2p="incomplete", check="pending")

    # the other suite2p stages, one finished session each, finished one after the other
    for i, st in enumerate(("settling", "ready", "attaching", "staged", "stale")):
        sid = f.session("m4", f"s2p_{st}", state="finished", layout=one,
                        files=[("committed", 7, 70)], validation=check_json())
        led.set_suite2p(sid, folder=f"/s2p/{st}", state=st, detail="")
        set_times(led, sid, updated_at=t0 - 100 + i, finished_at=t0 - 100 + i)
        f.expect[f"s2p_{st}"] = Expect("m4", f"s2p_{st}", "finished", 7, "1/1", "0 B", "30 Hz",
                                       suite2p=st, check="ok (0C/0V/0S)")
    led.report_problem(None, "rig_unreachable", RIG_WIDE)
    return f


def by_session(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["session"]: r for r in rows}


# --- status --json / table / history -----------------------------------------------------------

def test_json_holds_what_the_ledger_was_given(filled: Filler) -> None:
    rows = by_session(collect(filled.cfg))
    assert set(rows) == set(filled.expect)
    for name, e in filled.expect.items():
        r = rows[name]
        assert (r["subject"], r["state"], r["frames"]) == (e.subject, e.state, e.frames), name
        assert f"{r['files_committed']}/{r['files']}" == e.files.split(" ")[0]
        assert [p for p in r["problems"] if p != RIG_WIDE] == list(e.errors)
        assert RIG_WIDE in r["problems"]  # the contract: rig-wide problems in every session
        assert r["warnings"] == list(e.warnings)
    assert rows["waiting1"]["rate_hz"] is None and rows["waiting1"]["series"] == {}
    assert rows["acq1"]["rate_hz"] == pytest.approx(30.0)
    assert rows["paused1"]["rate_hz"] == pytest.approx(20.0)
    assert rows["paused1"]["scan_rate_hz"] == pytest.approx(60.0)
    # 60 pages of (2 planes + 1 flyback frame) x 2 channels: 6 pages a volume, 10 volumes
    assert rows["paused1"]["series"] == {f"TwoPhotonSeries_plane{p}_ch{c}": 10
                                         for p in (0, 1) for c in (1, 2)}
    assert rows["paused1"]["files_failed"] == 1
    assert rows["acq1"]["source_bytes"] == 2_500_000 and rows["acq1"]["nwb_bytes"] == 2_500_000
    assert rows["ok1"]["validation_ok"] is True and rows["bad1"]["validation_ok"] is False
    assert rows["pend1"]["validation"] == "pending" and rows["acq1"]["validation"] is None
    assert rows["ok1"]["validation_counts"]["BEST_PRACTICE_SUGGESTION"] == 3
    assert rows["ok1"]["suite2p"]["cells"] == 29 and rows["ok1"]["suite2p"]["rois"] == 34
    assert {r["suite2p"]["state"] for r in rows.values() if r["suite2p"]} == {
        "attached", "problem", "incomplete", "settling", "ready", "attaching", "staged", "stale"}
    assert rows["ok1"]["finished_at"] == "2026-09-21T12:00:20+00:00"  # t0 + 20


def test_table_shows_each_value_in_its_column(filled: Filler) -> None:
    rows = collect(filled.cfg)
    text = render_table(rows, [RIG_WIDE])
    lines = text.splitlines()
    header = lines[0]
    names = ["SUBJECT", "SESSION", "STAGE", "FRAMES", "FILES", "NWB SIZE", "RATE", "UPDATED",
             "SUITE2P", "CHECK", "LAST PROBLEM"]
    starts = [header.index(n) for n in names]
    assert starts == sorted(starts)

    def cell(line: str, col: str) -> str:
        i = names.index(col)
        end = starts[i + 1] if i + 1 < len(names) else None
        return line[starts[i]:end].strip()

    body = {cell(line, "SESSION"): line for line in lines[1:len(filled.expect) + 1]}
    assert set(body) == set(filled.expect)
    for name, e in filled.expect.items():
        line = body[name]
        assert cell(line, "SUBJECT") == e.subject
        assert cell(line, "STAGE") == e.state
        frames = f"{e.frames:,}" + (" (4 series)" if name == "paused1" else "")
        assert cell(line, "FRAMES") == frames
        assert cell(line, "FILES") == e.files
        assert cell(line, "NWB SIZE") == e.size
        assert cell(line, "RATE") == e.rate, name
        assert cell(line, "SUITE2P") == e.suite2p, name
        assert cell(line, "CHECK") == e.check, name
        shown = e.errors or tuple(f"warning: {w}" for w in e.warnings)
        assert cell(line, "LAST PROBLEM") == (shown[-1][:87] + "..." if shown and len(shown[-1]) > 90
                                              else (shown[-1] if shown else "")), name
    # UTC unless a zone is given, always with its offset: acq1 was last updated at t0 + 100
    assert cell(body["acq1"], "UPDATED") == "2026-09-21 12:01:40+00:00"
    berlin = render_table(rows, [RIG_WIDE], filled.cfg.tz)
    assert "2026-09-21 14:01:40+02:00" in berlin  # CEST is UTC+2
    # active sessions first, newest update first; then finished, newest first
    order = [cell(line, "SESSION") for line in lines[1:len(filled.expect) + 1]]
    assert order == ["acq1", "paused1", "waiting1", "bad1", "ok1", "pend1", "s2p_stale",
                     "s2p_staged", "s2p_attaching", "s2p_ready", "s2p_settling"]
    assert f"rig-wide problem: {RIG_WIDE}" in text
    assert "11 session(s): 1 acquiring, 1 paused, 1 waiting, 8 finished" in text
    assert "2 with problems; 1 with warnings only" in text


def test_sort_rows_keeps_every_row() -> None:
    rows = [{"state": s, "last_update": u, "finished_at": f}
            for s, u, f in [("finished", "2026-01-02", "2026-01-02"), ("acquiring", "2026-01-01", None),
                            ("finished", "2026-01-03", "2026-01-03"), ("waiting", "2026-01-04", None)]]
    assert [(r["state"], r["last_update"]) for r in sort_rows(rows)] == [
        ("waiting", "2026-01-04"), ("acquiring", "2026-01-01"), ("finished", "2026-01-03"),
        ("finished", "2026-01-02")]


def test_history_has_timings_from_the_ledger(lab: Lab) -> None:
    f = Filler(lab)
    led = f.ledger
    before_seen = time.time()
    sid = f.session("m1", "s1", state="acquiring", layout=PageLayout(frame_rate=12.5),
                    files=[("committed", 40, 400), ("committed", 20, 200)])
    after_commit = time.time()
    led.add_event(sid, "create", "NWB file created")
    after_create = time.time()
    led.update_session(sid, state="finished", finished_at=after_create + 5,
                       validation=check_json(seconds=1.75))
    led.add_event(sid, "validate", "valid")
    led.set_suite2p(sid, folder="/s2p", state="attached", detail="",
                    summary=json.dumps({"planes": 1, "rois": 3, "cells": 2, "seconds": 4.25}))
    led.add_event(sid, "suite2p", "suite2p attached")
    led.report_problem(sid, "x", "a resolved problem")
    led.clear_problem(sid, "x")
    rec = history(f.cfg, "m1/s1")
    assert rec is not None and history(f.cfg, "s1") == rec
    t = rec["timings"]

    def epoch(key: str) -> float:
        return datetime.fromisoformat(t[key]).timestamp()

    # ISO seconds: each time lies in the window the test observed, to the second
    assert int(before_seen) <= epoch("first_file_seen") <= after_commit
    assert epoch("first_file_seen") <= epoch("last_frame_committed") <= after_commit
    assert int(after_commit) <= epoch("nwb_created") <= after_create
    assert epoch("finished") == int(after_create + 5)
    assert t["check_seconds"] == 1.75 and t["suite2p_seconds"] == 4.25
    assert t["checked"] is not None and t["suite2p_attached"] is not None
    assert rec["rate_hz"] == pytest.approx(12.5)
    assert [p["message"] for p in rec["problems"]] == ["a resolved problem"]
    assert rec["problems"][0]["active"] is False

    proc = lab.run_cli("status", "s1", timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "timings:" in out and "check took" in out and "1.75 s" in out
    assert "suite2p attach took" in out and "4.25 s" in out
    shown = datetime.fromisoformat(t["finished"]).astimezone(ZoneInfo("Europe/Berlin"))
    assert f"finished              {shown.isoformat(sep=' ')}" in out  # the lab's zone
    assert "x_00001.tif" in out and "x_00002.tif" in out
    js = json.loads(lab.run_cli("status", "s1", "--json", timeout=120).stdout)
    assert js[0]["timings"]["check_seconds"] == 1.75


def test_cli_table_and_json(filled: Filler) -> None:
    proc = filled.lab.run_cli("status", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "STAGE" in proc.stdout and "RATE" in proc.stdout and "20 Hz" in proc.stdout
    assert f"rig-wide problem: {RIG_WIDE}" in proc.stdout
    js = json.loads(filled.lab.run_cli("status", "--json", timeout=120).stdout)
    assert {r["session"] for r in js} == set(filled.expect)
    old_keys = {"subject", "session", "state", "frames", "series", "nwb_path", "problems",
                "warnings", "validation", "validation_ok", "validation_counts", "site", "files",
                "files_committed", "files_failed", "source_bytes", "nwb_bytes", "start_time",
                "timestamps", "last_update", "finished_at", "suite2p"}
    assert all(old_keys <= set(r) for r in js)  # backward compatible: keys only added


# --- the status page --------------------------------------------------------------------------

def add_pictures(filled: Filler) -> dict[str, Path]:
    cfg = filled.cfg
    made = {
        "ok1": summary_png(cfg, "m2", "ok1"),  # finished: its summary
        "bad1": summary_png(cfg, "m2", "bad1"),
        "acq1": preview_png(cfg, "m1", "acq1"),  # acquiring: the live preview
    }
    for p in made.values():  # grey-green: no red that could pass for a problem marker
        png(p, (160, 220, 170))
    png(summary_png(cfg, "m1", "acq1"), (120, 200, 255))  # a summary beats the preview
    made["pend1"] = preview_png(cfg, "m3", "pend1")  # finished, no summary: its last preview
    png(made["pend1"], (30, 30, 200))
    made["acq1"] = summary_png(cfg, "m1", "acq1")
    return made


def test_page_is_valid_html_with_every_session_escaped_and_linked(filled: Filler) -> None:
    cfg = filled.cfg
    made = add_pictures(filled)
    odd = "run #2 50% ü"  # a name that must be quoted in a link
    filled.session("m5", odd, state="finished", layout=PageLayout(), files=[("committed", 3, 30)])
    filled.expect[odd] = Expect("m5", odd, "finished", 3, "1/1")
    made[odd] = summary_png(cfg, "m5", odd)
    png(made[odd], (150, 150, 150))
    done = write_page(cfg)
    assert done.html == cfg.output.folder / "rig2nwb-status.html" == status_html(cfg)
    doc = parse_page(done.html)
    raw = done.html.read_text(encoding="utf-8")
    # self-contained: no script, no external resources; refreshes itself
    assert doc.find(f".//{XHTML}script") is None and "<script>" not in raw
    assert doc.find(f".//{XHTML}link") is None
    meta = [m.get("content") for m in doc.iter(f"{XHTML}meta") if m.get("http-equiv") == "refresh"]
    assert meta and int(meta[0] or "0") >= 1
    assert doc.find(f".//{XHTML}style") is not None
    rows = session_rows(doc)
    assert set(rows) == set(filled.expect)
    for name, e in filled.expect.items():
        t = text_of(rows[name])
        assert f"{e.subject} / {name}" in t
        assert str(filled.lab.nwb(name, e.subject)) in t
        assert e.state in t and f"{e.frames:,}" in t and e.size in t
        for msg in (*e.errors, *e.warnings):
            assert msg in t  # the parsed text is the message itself, escaped in the source
        assert (e.rate in t) if e.rate != "-" else True
    # the hostile message arrives as text, escaped in the source
    assert html.escape(EVIL, quote=True) in raw and EVIL not in raw
    assert rows["bad1"].get("class") == "err" and rows["paused1"].get("class") == "err"
    assert rows["acq1"].get("class") == "warn"
    assert rows["ok1"].get("class") == ""
    banner = doc.find(f".//{XHTML}div[@class='banner err']")
    assert banner is not None and RIG_WIDE in text_of(banner)
    assert "29/34 cells" in text_of(rows["ok1"]) and "ok" in text_of(rows["ok1"])
    assert "FAILED" in text_of(rows["bad1"]) and "pending" in text_of(rows["pend1"])
    # every relative link and image exists on disk, relative to the page's folder
    targets: dict[str, set[Path]] = {}
    for el in doc.iter():
        ref = el.get("href") or el.get("src")
        if ref is None:
            continue
        url = urlsplit(ref)
        assert not url.scheme and not url.netloc, ref  # relative: works from any machine
        target = (done.html.parent / unquote(url.path)).resolve()
        assert target.is_file(), ref
        tr = next((n for n, r in rows.items() if el in r.iter()), "")
        targets.setdefault(tr, set()).add(target)
    for name, picture in made.items():
        assert targets[name] == {picture.resolve()}, name
    assert "waiting1" not in targets and "paused1" not in targets
    assert "last preview" in text_of(rows["pend1"]) and "summary" in text_of(rows["acq1"])
    assert targets[""] == {status_json(cfg).resolve()}  # the footer's link to the twin


def test_json_twin_matches_the_sessions(filled: Filler) -> None:
    cfg = filled.cfg
    made = add_pictures(filled)
    write_page(cfg)
    data = json.loads(status_json(cfg).read_text(encoding="utf-8"))
    assert set(data) >= {"generated_at", "rig", "version", "rig_problems", "sessions"}
    assert data["rig"] == cfg.rig.name and data["rig_problems"] == [RIG_WIDE]
    assert data["daemon"] == "running"
    assert abs(datetime.fromisoformat(data["generated_at"]).timestamp() - time.time()) < 3600
    sessions = by_session(data["sessions"])
    assert set(sessions) == set(filled.expect)
    for name, e in filled.expect.items():
        s = sessions[name]
        assert (s["subject"], s["state"], s["frames"]) == (e.subject, e.state, e.frames)
        picture = made.get(name)
        assert s["picture"] == (picture.relative_to(cfg.output.folder).as_posix() if picture
                                else None), name
    assert sessions["pend1"]["preview_picture"] == "rig2nwb-status/m3_pend1.preview.png"
    assert sessions["acq1"]["preview_picture"] == "rig2nwb-status/m1_acq1.preview.png"
    # the same order as the page: not finished first
    assert [s["state"] != "finished" for s in data["sessions"]][:3] == [True] * 3


def test_rewrite_replaces_the_file_never_truncates_it(filled: Filler) -> None:
    cfg = filled.cfg
    write_page(cfg)
    page = status_html(cfg)
    old = page.read_bytes()
    with page.open("rb") as reader:  # a browser in the middle of reading the old page
        ino = os.fstat(reader.fileno()).st_ino
        filled.ledger.report_problem(None, "other", "a second rig-wide problem")
        write_page(cfg)
        assert os.fstat(reader.fileno()).st_nlink == 0  # the old file was unlinked, not rewritten
        assert reader.read() == old  # ... and is whole
    assert page.stat().st_ino != ino
    assert "a second rig-wide problem" in page.read_text(encoding="utf-8")
    leftovers = [p.name for p in cfg.output.folder.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_empty_ledger_page(lab: Lab) -> None:
    cfg = lab.config()
    write_page(cfg, running=False)
    doc = parse_page(status_html(cfg))
    assert "No sessions yet" in text_of(doc) and "stopped" in text_of(doc)
    assert json.loads(status_json(cfg).read_text())["sessions"] == []


# --- the hook ---------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_hook_writes_on_change_at_most_every_interval(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab(status={"page_interval_seconds": 2.0})
    f = Filler(lab)
    cfg = f.cfg
    clock = Clock()
    hook = StatusPageHook(cfg, clock=clock)
    engine = SimpleNamespace(ledger=f.ledger)
    assert hook.name == "status-page"
    hook.started(engine)  # type: ignore[arg-type]
    assert hook.writes == 1 and status_html(cfg).exists()

    def tick(dt: float) -> int:
        before = hook.writes
        clock.now += dt
        hook.tick(engine)  # type: ignore[arg-type]
        return hook.writes - before

    assert tick(5) == 0  # nothing changed
    f.session("m1", "new1", state="waiting")  # a commit on the worker's own connection
    assert tick(0.5) == 1  # 5.5 s since the last write: at once
    assert "new1" in status_html(cfg).read_text()
    f.ledger.add_event(None, "watch", "something")
    assert tick(0.5) == 0  # changed again, but the last write was 0.5 s ago
    assert tick(1.6) == 1  # 2.1 s
    assert tick(2) == 0
    # another process commits (`rig2nwb attach`, a second connection): data_version moves
    other = Ledger(ledger_path(cfg))
    other.report_problem(None, "rig_unreachable", "from another process")
    other.close()
    assert tick(0.5) == 1
    assert "from another process" in status_html(cfg).read_text()
    # a new picture (written by rename, as status_files does) is a change too
    assert tick(2) == 0
    png(preview_png(cfg, "m1", "new1"), (1, 2, 3))
    assert tick(0.5) == 1
    assert "m1_new1.preview.png" in status_html(cfg).read_text()  # no summary: the preview
    # the heartbeat: rewritten after a minute even when nothing changed
    assert tick(30) == 0
    assert tick(31) == 1
    hook.stopping(engine)  # type: ignore[arg-type]
    assert json.loads(status_json(cfg).read_text())["daemon"] == "stopped"
    assert "rig2nwb is stopped" in status_html(cfg).read_text()
    f.ledger.close()


def test_hook_logs_one_error_when_the_folder_is_gone_and_recovers(make_lab) -> None:  # type: ignore[no-untyped-def]
    from rig2nwb.config.logsetup import setup_from_config

    lab = make_lab(status={"page_interval_seconds": 0.0})
    f = Filler(lab)
    cfg = f.cfg
    setup_from_config(cfg)
    clock = Clock()
    hook = StatusPageHook(cfg, clock=clock)
    engine = SimpleNamespace(ledger=f.ledger)
    away = lab.out.with_name("nwb-unmounted")
    lab.out.rename(away)  # the share went away
    hook.started(engine)  # type: ignore[arg-type]
    for i in range(20):
        f.ledger.add_event(None, "watch", f"change {i}")
        clock.now += 1
        hook.tick(engine)  # type: ignore[arg-type]
    assert not lab.out.exists()  # never created a stand-in folder
    away.rename(lab.out)
    clock.now += 1
    hook.tick(engine)  # type: ignore[arg-type]
    assert status_html(cfg).exists() and hook.writes == 1
    log = (lab.state / "rig2nwb.log").read_text().splitlines()
    errors = [json.loads(line) for line in log if '"status page not written"' in line]
    assert len(errors) == 1, errors
    assert errors[0]["level"] == "error" and "the output folder does not exist" in errors[0]["error"]
    assert str(status_html(cfg)) == errors[0]["file"]
    assert sum('"status page written again"' in line for line in log) == 1
    f.ledger.close()


def test_rewrite_time_with_200_sessions(lab: Lab) -> None:
    """Measures one rewrite of a 200-session page (printed; run with -s to see it)."""
    f = Filler(lab)
    layout = PageLayout(frame_rate=30.0)
    for i in range(200):
        sid = f.session(f"m{i % 7}", f"s{i:03d}", state="finished" if i > 3 else "acquiring",
                        layout=layout, files=[("committed", 100, 1000)] * 20,
                        validation=check_json(violations=1) if i > 3 else None)
        if i % 10 == 0:
            f.ledger.report_problem(sid, "p", f"x_{i}.tif: truncated <{i}>")
    times = []
    for _ in range(5):
        times.append(write_page(f.cfg).seconds)
    doc = parse_page(status_html(f.cfg))
    assert len(session_rows(doc)) == 200
    print(f"\nstatus page rewrite, 200 sessions x 20 files: median {np.median(times) * 1000:.1f} ms, "
          f"min {min(times) * 1000:.1f} ms, {status_html(f.cfg).stat().st_size / 1000:.0f} KB")
    f.ledger.close()


# --- a real browser ---------------------------------------------------------------------------

def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no headless Chromium/Chrome on this machine (chromium, chromium-browser, "
                "google-chrome, chrome)")


def png_pixels(path: Path) -> np.ndarray:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes) with zlib alone."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, b"", b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, 1 + w * bpp)
    out = np.zeros((h, w * bpp), dtype=np.int32)
    prev = np.zeros(w * bpp, dtype=np.int32)
    for y in range(h):
        ftype, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        cur = np.zeros_like(line)
        if ftype == 0:
            cur = line
        elif ftype == 2:
            cur = (line + prev) & 0xFF
        else:  # 1 sub, 3 average, 4 paeth: need the left neighbour, byte by byte
            for x in range(len(line)):
                a = cur[x - bpp] if x >= bpp else 0
                b = prev[x]
                c = prev[x - bpp] if x >= bpp else 0
                if ftype == 1:
                    pred = a
                elif ftype == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (line[x] + pred) & 0xFF
        out[y] = cur
        prev = cur
    return out.reshape(h, w, bpp)[:, :, :3].astype(np.uint8)


def test_page_in_headless_chromium(filled: Filler, tmp_path: Path) -> None:
    exe = browser()
    add_pictures(filled)
    write_page(filled.cfg)
    shot = tmp_path / "status_page.png"
    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={shot}", "--window-size=1400,900",
         f"--user-data-dir={tmp_path / 'chrome-profile'}",
         status_html(filled.cfg).as_uri()],
        capture_output=True, text=True, timeout=120)
    assert shot.exists(), proc.stderr[-2000:]
    shutil.copyfile(shot, "/tmp/status_page.png")  # for people to look at
    px = png_pixels(shot)
    assert px.shape[:2] == (900, 1400)
    colours = {tuple(int(v) for v in c) for c in px[::7, ::7].reshape(-1, 3)}
    assert len(colours) > 20  # text, badges, banner: not a blank page
    r, g, b = (px[..., i].astype(int) for i in range(3))
    red = (r > 150) & (g < 90) & (b < 90)  # the problem markers and the rig-wide banner border
    assert red.sum() > 200
