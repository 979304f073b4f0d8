"""The pure core: layout patterns, run order and completion/ordering decisions."""

from __future__ import annotations

from dataclasses import replace

from rig2nwb.core.names import is_safe_name
from rig2nwb.core.patterns import Pattern
from rig2nwb.core.planner import FileFacts, Rules, SessionFacts, plan_session
from rig2nwb.core.runorder import run_position

RULES = Rules(signals=frozenset({"next_file", "marker", "close_write", "stable"}),
              settle_seconds=5, session_idle_seconds=300, require_lab_files=True,
              gap_wait_seconds=60)


def ff(name: str, *, state: str = "waiting", quiet: float = 0.0, parsed: str = "unknown",
       closed: bool = False, present: bool = True, folder: str = "m/tif/s/x") -> FileFacts:
    path = f"{folder}/{name}"
    return FileFacts(path=path, position=run_position(path), present=present, quiet_for=quiet,
                     closed=closed, parsed=parsed, state=state)  # type: ignore[arg-type]


def sf(*files: FileFacts, marker: bool = False, lab: bool = False, idle: float = 0.0,
       finished: bool = False) -> SessionFacts:
    return SessionFacts(files=files, marker=marker, lab_files_present=lab, idle_for=idle,
                        finished=finished)


def kinds(actions: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(a.kind, a.path.rsplit("/", 1)[-1]) for a in actions]


def test_seed_layout_pattern() -> None:
    p = Pattern.compile("{subject}/tif/{site}/{session}/*.tif")
    assert p.match("m1/tif/V1/2023_01/file_00001.tif") == {
        "subject": "m1", "site": "V1", "session": "2023_01"}
    assert p.match("m1/tif/V1/2023_01/notes.txt") is None
    assert p.match("m1/txt/2023_01_scan.txt") is None
    values = p.match("../tif/V1/x/a.tif")  # matches, but '..' is never used as a name:
    assert values is not None and not is_safe_name(values["subject"])


def test_unsafe_names() -> None:
    assert not is_safe_name("..")
    assert not is_safe_name("a\\b")
    assert not is_safe_name(" padded")
    assert is_safe_name("mouse 01 (ü)")


def test_run_order_compares_numbers_as_numbers() -> None:
    names = ["a_00002_00001.tif", "a_00001_00010.tif", "a_00001_00002.tif", "a_00001_00001.tif",
             "b_9.tif", "b_10.tif"]
    ordered = sorted(names, key=lambda n: run_position(n).sort_key)
    assert ordered == ["a_00001_00001.tif", "a_00001_00002.tif", "a_00001_00010.tif",
                       "a_00002_00001.tif", "b_9.tif", "b_10.tif"]


def test_file_being_written_waits_and_blocks_only_its_own_successors() -> None:
    facts = sf(ff("f_00001.tif", quiet=1.0))
    assert kinds(plan_session(facts, RULES)) == [("wait", "f_00001.tif")]


def test_each_signal_makes_a_file_complete() -> None:
    base = ff("f_00001.tif", quiet=1.0)
    assert plan_session(sf(base, ff("f_00002.tif")), RULES)[0].kind == "inspect"  # next_file
    assert plan_session(sf(base, marker=True), RULES)[0].kind == "inspect"  # marker
    assert plan_session(sf(replace(base, closed=True)), RULES)[0].kind == "inspect"  # close_write
    assert plan_session(sf(replace(base, quiet_for=5.0)), RULES)[0].kind == "inspect"  # stable
    only_stable = replace(RULES, signals=frozenset({"stable"}))
    assert plan_session(sf(base, ff("f_00002.tif")), only_stable)[0].kind == "wait"
    assert plan_session(sf(replace(base, closed=True)), only_stable)[0].kind == "wait"


def test_inspection_result_decides_append_or_fail() -> None:
    ok = ff("f_00001.tif", quiet=9, parsed="ok")
    bad = ff("f_00001.tif", quiet=9, parsed="bad")
    assert kinds(plan_session(sf(ok), RULES)) == [("append", "f_00001.tif")]
    assert kinds(plan_session(sf(bad), RULES)) == [("fail", "f_00001.tif")]


def test_files_are_appended_in_run_order_even_if_later_ones_are_ready_first() -> None:
    facts = sf(ff("f_00003.tif", quiet=9, parsed="ok"), ff("f_00002.tif", quiet=1),
               ff("f_00001.tif", state="committed"))
    # f_00003 exists, so f_00002 is complete by next_file: inspect f_00002, never f_00003 first.
    assert kinds(plan_session(facts, RULES)) == [("inspect", "f_00002.tif")]


def test_gap_in_run_waits_for_the_missing_file_then_gives_up() -> None:
    early = sf(ff("f_00001.tif", state="committed"), ff("f_00003.tif", quiet=6, parsed="ok"))
    acts = plan_session(early, RULES)
    assert acts[0].kind == "wait" and "file index 2" in acts[0].reason
    late = sf(ff("f_00001.tif", state="committed"), ff("f_00003.tif", quiet=61, parsed="ok"))
    assert kinds(plan_session(late, RULES)) == [("append", "f_00003.tif")]


def test_run_seen_from_its_second_file_waits_for_the_first() -> None:
    acts = plan_session(sf(ff("f_00002.tif", quiet=9, parsed="ok")), RULES)
    assert acts[0].kind == "wait" and "file index 1" in acts[0].reason
    assert kinds(plan_session(sf(ff("f_00001.tif", quiet=9, parsed="ok")), RULES)) == [
        ("append", "f_00001.tif")]
    assert kinds(plan_session(sf(ff("f_00000.tif", quiet=9, parsed="ok")), RULES)) == [
        ("append", "f_00000.tif")]
    no_wait = replace(RULES, gap_wait_seconds=0)
    assert kinds(plan_session(sf(ff("f_00002.tif", quiet=9, parsed="ok")), no_wait)) == [
        ("append", "f_00002.tif")]


def test_file_arriving_after_later_files_were_committed_is_reported() -> None:
    facts = sf(ff("f_00001.tif", state="committed"), ff("f_00003.tif", state="committed"),
               ff("f_00002.tif", quiet=9, parsed="ok"))
    acts = plan_session(facts, RULES)
    assert ("out_of_order", "f_00002.tif") in kinds(acts)
    assert not any(a.kind == "append" for a in acts)


def test_deleted_before_append_is_reported_and_does_not_block() -> None:
    facts = sf(ff("f_00001.tif", present=False), ff("f_00002.tif", quiet=9, parsed="ok"))
    assert kinds(plan_session(facts, RULES)) == [("vanished", "f_00001.tif"),
                                                  ("append", "f_00002.tif")]


def test_partly_appended_file_deleted_before_restart_is_reported() -> None:
    facts = sf(ff("f_00001.tif", state="appending", present=False), ff("f_00002.tif", quiet=9,
                                                                      parsed="ok"))
    acts = plan_session(facts, RULES)
    assert acts[0].kind == "vanished" and "completely" in acts[0].reason


def test_failed_file_does_not_block_later_files() -> None:
    facts = sf(ff("f_00001.tif", state="failed"), ff("f_00002.tif", quiet=9, parsed="ok"))
    assert kinds(plan_session(facts, RULES)) == [("append", "f_00002.tif")]


def test_session_completion_rules() -> None:
    done = ff("f_00001.tif", state="committed")
    assert plan_session(sf(done, idle=400), RULES) == []  # no lab files yet
    assert kinds(plan_session(sf(done, idle=400, lab=True), RULES)) == [("finalize", "")]
    assert plan_session(sf(done, idle=100, lab=True), RULES) == []  # not idle long enough
    assert kinds(plan_session(sf(done, marker=True), RULES)) == [("finalize", "")]
    assert plan_session(sf(done, marker=True, finished=True), RULES) == []
    no_lab = replace(RULES, require_lab_files=False)
    assert kinds(plan_session(sf(done, idle=400), no_lab)) == [("finalize", "")]


def test_session_end_completes_the_last_file_without_other_signals() -> None:
    rules = replace(RULES, signals=frozenset({"next_file"}))
    last = ff("f_00002.tif", quiet=1)
    facts = sf(ff("f_00001.tif", state="committed"), last, lab=True, idle=400)
    assert kinds(plan_session(facts, rules)) == [("inspect", "f_00002.tif")]


def test_partly_appended_file_resumes_first() -> None:
    facts = sf(ff("f_00001.tif", state="appending", quiet=0), ff("f_00002.tif", quiet=0))
    assert plan_session(facts, RULES)[0].kind == "inspect"


def test_a_file_that_failed_for_a_passing_reason_holds_finalizing() -> None:
    """Found by test_unreadable_tiff_is_reported_then_appended_once_readable: the lab fixed a
    permission and copied the lab files in the same second, and the session finished without
    the file. Now a file that failed for a passing reason and is still there holds finalizing
    back until it reads (or goes)."""
    good = ff("f_00001.tif", state="committed")
    unreadable = replace(ff("f_00002.tif", state="failed"), retrying=True)
    held = plan_session(sf(good, unreadable, lab=True, idle=400), RULES)
    assert kinds(held) == [("wait", "f_00002.tif")]
    bad_for_good = ff("f_00002.tif", state="failed")  # a damaged file: nothing will change it
    assert kinds(plan_session(sf(good, bad_for_good, lab=True, idle=400), RULES)) == [
        ("finalize", "")]
    gone = replace(unreadable, present=False)  # removed: nothing to wait for
    assert kinds(plan_session(sf(good, gone, lab=True, idle=400), RULES)) == [("finalize", "")]
