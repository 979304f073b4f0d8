"""``rig2nwb process SESSION_FOLDER``: start (or start again) a finished session's suite2p job.

The job runs where ``suite2p.run.executor`` says (``--executor`` overrides it for this run):
``local`` (a detached, low-priority process on this machine) or ``slurm`` (``sbatch``). When
the daemon runs, it owns the ledger's jobs, so the request goes through the ``requests`` table
and the daemon answers; otherwise the job is submitted here and recorded in the ledger, and the
next daemon follows it.

Without ``--wait`` the command returns once the job is submitted. With ``--wait SECONDS`` it
follows the job to its end and, when it succeeds, until its results are attached (a daemon
attaches them; without one, this command does).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from rig2nwb.commands.attach import attach_in, find_session
from rig2nwb.config.paths import ledger_path
from rig2nwb.config.schema import Config
from rig2nwb.errors import AlreadyRunning, UsageError
from rig2nwb.ledger.quarantine import quarantine_text
from rig2nwb.ledger.rows import JobRow
from rig2nwb.ledger.store import Ledger, open_verified
from rig2nwb.processing.manager import job_line
from rig2nwb.service.oneshot import OneShot, one_shot
from rig2nwb.states import ACTIVE_JOB_STATES, JobState, Problem, Suite2pState

POLL_SECONDS = 0.5
SUBMIT_WAIT_POLLS = 2  # the daemon's job thread submits at its next poll


@dataclass(frozen=True)
class ProcessResult:
    ok: bool
    message: str


def process(cfg: Config, folder: Path, *, executor: str | None = None,
            wait_seconds: float | None = None) -> ProcessResult:
    if not ledger_path(cfg).exists():
        raise UsageError(f"no ledger in {cfg.state.folder}: nothing has been converted yet")
    if executor not in (None, "local", "slurm"):
        raise UsageError(f"--executor {executor}: local or slurm")
    try:
        with one_shot(cfg) as run:
            return _process_here(cfg, run, folder, executor, wait_seconds)
    except AlreadyRunning:
        return _ask_daemon(cfg, folder, executor, wait_seconds)


def _process_here(cfg: Config, run: OneShot, folder: Path, executor: str | None,
                  wait_seconds: float | None) -> ProcessResult:
    engine, ledger = run.engine, run.ledger
    sess = find_session(cfg, ledger, folder)
    answer = engine.jobs.request(sess, executor=executor)
    if answer.job is None:
        return ProcessResult(False, answer.message)
    engine.jobs.step(force=True, automatic=False)  # submits it
    job = ledger.job(answer.job.id)
    if wait_seconds is None:
        return ProcessResult(job.state in ACTIVE_JOB_STATES or job.state == JobState.DONE,
                             job_line(job) if job.state in ACTIVE_JOB_STATES
                             else _ended_text(ledger, job))
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        engine.jobs.step(force=True, automatic=False)
        job = ledger.job(job.id)
        if job.state not in ACTIVE_JOB_STATES:
            break
        time.sleep(POLL_SECONDS)
    else:
        return ProcessResult(False, f"the suite2p job is still {job.state} after {wait_seconds:g} s"
                             f" (it goes on; rig2nwb status follows it); log: {job.log}")
    if job.state != JobState.DONE:
        return ProcessResult(False, _ended_text(ledger, job))
    attached = attach_in(cfg, run, sess, notify=False, by="rig2nwb process")
    if not attached.ok:
        return ProcessResult(False, "the suite2p job ended well, but its results could not be "
                             f"attached: {attached.message}")
    return ProcessResult(True, f"suite2p ran ({job.executor} {job.scheduler_id}) and its "
                         f"results are attached: {attached.message}")


def _ask_daemon(cfg: Config, folder: Path, executor: str | None,
                wait_seconds: float | None) -> ProcessResult:
    ledger = open_verified(ledger_path(cfg))
    try:
        sess = find_session(cfg, ledger, folder)
        if sess.quarantined:
            return ProcessResult(False, quarantine_text(sess))
        before = ledger.latest_jobs().get(sess.id)
        request = ledger.add_request("process", sess.id, json.dumps({"executor": executor}))
        answer_wait = 60.0 if wait_seconds is None else max(wait_seconds, 60.0)
        deadline = time.monotonic() + answer_wait
        while True:
            req = ledger.request(request)
            if req is not None and req.done_at is not None:
                break
            if time.monotonic() > deadline:
                return ProcessResult(False, f"the running daemon did not answer within "
                                     f"{answer_wait:g} s (see rig2nwb status); the request "
                                     "stays queued")
            time.sleep(POLL_SECONDS)
        if not req.ok:
            return ProcessResult(False, req.answer or "refused by the daemon")
        job = ledger.latest_jobs().get(sess.id)
        if job is None or (before is not None and job.id == before.id):
            return ProcessResult(False, req.answer or "no job was started")
        if wait_seconds is None:  # until the daemon's job thread has submitted it
            end = time.monotonic() + SUBMIT_WAIT_POLLS * cfg.suite2p.run.poll_seconds + 60
            while time.monotonic() < end:
                job = ledger.job(job.id)
                if job.scheduler_id or job.detail or job.state not in ACTIVE_JOB_STATES:
                    break
                time.sleep(POLL_SECONDS)
            ok = job.state in ACTIVE_JOB_STATES or job.state == JobState.DONE
            return ProcessResult(ok, job_line(job) if ok else _ended_text(ledger, job))
        end = time.monotonic() + wait_seconds
        while time.monotonic() < end:
            job = ledger.job(job.id)
            s2p = ledger.suite2p(sess.id)
            if job.state not in ACTIVE_JOB_STATES and job.state != JobState.DONE:
                return ProcessResult(False, _ended_text(ledger, job))
            if job.state == JobState.DONE and s2p is not None and s2p.state in (
                    Suite2pState.ATTACHED, Suite2pState.PROBLEM) and (
                    s2p.updated_at or 0) >= (job.ended_at or 0):
                ok = s2p.state == Suite2pState.ATTACHED
                return ProcessResult(ok, ("suite2p ran and its results are attached: " if ok
                                          else "suite2p ran, but its results were refused: ")
                                     + (s2p.detail or ""))
            time.sleep(POLL_SECONDS)
        return ProcessResult(False, f"not done within {wait_seconds:g} s: the job is "
                             f"{job.state} (it goes on; rig2nwb status follows it); log: "
                             f"{job.log}")
    finally:
        ledger.close()


def _ended_text(ledger: Ledger, job: JobRow) -> str:
    problem = next((p.message for p in ledger.problems(job.session_id)
                    if p.code == Problem.SUITE2P_JOB), None)
    return problem or f"the suite2p job {job.state}: {job.detail or ''}; log: {job.log}"
