"""core.jobs: command templates, when a job starts, and what SLURM's words mean."""

from __future__ import annotations

import itertools

import pytest

from rig2nwb.core.jobs import (
    PLACEHOLDERS,
    SessionJobFacts,
    command_problems,
    launch_verdict,
    render_command,
    scheduler_backoff,
    slurm_exit_code,
    slurm_state,
    timed_out,
)
from rig2nwb.states import JobState


def test_command_problems_name_each_bad_argument() -> None:
    assert command_problems(["{python}", "-m", "x", "{session_folder}", "--fs={fs}"]) == []
    assert command_problems([]) and "empty" in command_problems([])[0]
    probs = command_problems(["run", "{nope}", "{fs", "a}b", "{{literal}}"])
    assert len(probs) == 3
    assert probs[0].startswith("[1]") and "unknown placeholder {nope}" in probs[0]
    assert probs[1].startswith("[2]") and "'{{'" in probs[1]
    assert probs[2].startswith("[3]")


def test_render_fills_every_placeholder_and_keeps_literal_braces() -> None:
    values = {name: f"<{name}>" for name in PLACEHOLDERS}
    assert render_command(["{python}", "--out={suite2p_folder}", "{{x}}", "{fs}Hz"], values) == [
        "<python>", "--out=<suite2p_folder>", "{x}", "<fs>Hz"]
    # A value with braces is not expanded again (a folder named {session}).
    assert render_command(["{session_folder}"], {**values, "session_folder": "/d/{fs}"}) == [
        "/d/{fs}"]


def facts(**kw: object) -> SessionJobFacts:
    base: dict[str, object] = dict(finished=True, checked=True, quarantined=False,
                                   results_present=False, latest=None, attempts=0,
                                   requested=False)
    base.update(kw)
    return SessionJobFacts(**base)  # type: ignore[arg-type]


def test_first_job_once_finished_and_checked() -> None:
    assert launch_verdict(facts(), retries=1, running=0, max_running=1).attempt == 1  # type: ignore[union-attr]
    for blocker in ({"finished": False}, {"checked": False}, {"quarantined": True},
                    {"results_present": True}, {"before_enabled": True}):
        assert launch_verdict(facts(**blocker), retries=1, running=0, max_running=1) is None
    assert launch_verdict(facts(), retries=1, running=2, max_running=2) is None


def test_never_a_second_job_while_one_is_alive_even_when_asked() -> None:
    for state in (JobState.QUEUED, JobState.RUNNING):
        assert launch_verdict(facts(latest=state, attempts=1, requested=True), retries=5,
                              running=0, max_running=9) is None


def test_retries_after_failure_or_loss_only() -> None:
    table = {JobState.FAILED: True, JobState.LOST: True, JobState.DONE: False,
             JobState.CANCELLED: False}
    for (state, retried), attempts in itertools.product(table.items(), (1, 2, 3)):
        v = launch_verdict(facts(latest=state, attempts=attempts), retries=2, running=0,
                           max_running=1)
        expect = retried and attempts <= 2
        assert (v is not None) == expect, (state, attempts)
        if v is not None:
            assert v.attempt == attempts + 1
    # A timeout would time out again; a session finished before jobs were on still gets its
    # retries once a job was asked for.
    assert launch_verdict(facts(latest=JobState.FAILED, attempts=1, timed_out=True),
                          retries=3, running=0, max_running=1) is None
    assert launch_verdict(facts(latest=JobState.FAILED, attempts=1, before_enabled=True),
                          retries=3, running=0, max_running=1) is not None


def test_asked_by_hand_starts_again_from_attempt_one() -> None:
    v = launch_verdict(facts(latest=JobState.DONE, attempts=3, results_present=True,
                             requested=True), retries=0, running=0, max_running=1)
    assert v is not None and v.attempt == 1


@pytest.mark.parametrize(("word", "state"), [
    ("PENDING", JobState.QUEUED), ("RUNNING", JobState.RUNNING),
    ("COMPLETING", JobState.RUNNING), ("COMPLETED", JobState.DONE),
    ("CANCELLED", JobState.CANCELLED), ("CANCELLED by 0", JobState.CANCELLED),
    ("CANCELLED+", JobState.CANCELLED), ("FAILED", JobState.FAILED),
    ("TIMEOUT", JobState.FAILED), ("OUT_OF_MEMORY", JobState.FAILED),
    ("NODE_FAIL", JobState.FAILED), ("SOMETHING_NEW", JobState.RUNNING), ("", JobState.RUNNING),
])
def test_slurm_states(word: str, state: JobState) -> None:
    assert slurm_state(word) == state


def test_slurm_exit_codes_as_a_shell_reports_them() -> None:
    assert slurm_exit_code("0:0") == 0
    assert slurm_exit_code("3:0") == 3
    assert slurm_exit_code("0:9") == 137  # SIGKILL
    assert slurm_exit_code("junk") is None


def test_timeout_counts_run_time_only_and_backoff_grows_to_a_ceiling() -> None:
    assert not timed_out(None, 1e9, 1)  # still queued
    assert not timed_out(100.0, 159.0, 1) and timed_out(100.0, 161.0, 1)
    waits = [scheduler_backoff(n, 15.0) for n in range(1, 9)]
    assert waits[0] == 30.0 and waits == sorted(waits) and waits[-1] == waits[-2] == 600.0
