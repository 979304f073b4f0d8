"""The job manager: starts each finished session's suite2p job, follows it to its end, and
hands a success over to the attach stage.

The ledger owns every job (``jobs``: one row per attempt). A job's folder is written first, then
its row is committed, then it is submitted, then its id is recorded; a daemon killed anywhere in
between finds the row without an id at its next start and asks the executor for the job by its
token (SLURM: the job name ``rig2nwb-<token>``; local: the process running its folder) before it
would ever submit again. So a session never has two jobs, whatever was interrupted.

The daemon runs the manager on its own thread (``start``): a SLURM client call takes 9 to 18 s
to fail while the controller is down (measured with SLURM 22.05), which must never hold up the
worker that appends frames. Polls come every ``suite2p.run.poll_seconds``; each costs a
``scontrol`` call per running SLURM job. The thread only touches the ledger and the job folders,
never an NWB file: the worker attaches the results once the survey finds them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from rig2nwb.config.schema import Config
from rig2nwb.core.jobs import (
    Launch,
    SessionJobFacts,
    launch_verdict,
    render_command,
    scheduler_backoff,
    timed_out,
)
from rig2nwb.core.pagelayout import PageLayout
from rig2nwb.errors import (
    JobError,
    MetadataProblem,
    SchedulerUnavailable,
    Suite2pProblem,
    UnsafeRigPath,
)
from rig2nwb.ledger.quarantine import describe, is_session_error, quarantine_session
from rig2nwb.ledger.rows import JobRow, SessionRow
from rig2nwb.ledger.store import Ledger
from rig2nwb.logs import Logger, get_logger
from rig2nwb.processing.executors import Executor, JobStatus, ended_by_folder
from rig2nwb.processing.jobfolder import JobFolder
from rig2nwb.processing.local import LocalExecutor
from rig2nwb.processing.settingsfile import settings_file
from rig2nwb.processing.slurm import SlurmExecutor
from rig2nwb.rig.safeopen import is_rig_dir
from rig2nwb.states import ACTIVE_JOB_STATES, JobState, Problem, SessionState, Severity
from rig2nwb.suite2p.stage import Suite2pStage, suite2p_folder, suite2p_root, tiff_folder

LOG_TAIL_IN_PROBLEM = 5
STOP_WAIT_SECONDS = 5.0
TIMEOUT_NOTE = "ran past suite2p.run.timeout_minutes"
# Ledger meta: when jobs were first turned on (sessions finished before then are not run
# automatically; `rig2nwb process` runs them).
ENABLED_SINCE = "suite2p_jobs_since"

Guard = Callable[[int, str], AbstractContextManager[Any]]


def _unguarded(session_id: int, phase: str) -> AbstractContextManager[Any]:
    return contextlib.nullcontext()


class LedgerGuard:
    """The job thread's session boundary: an unexpected error while following or starting one
    session's job quarantines that session (in the ledger: the worker sees it at its next
    step) and the thread goes on with the others."""

    def __init__(self, ledger: Ledger, log: Logger, session_id: int, phase: str) -> None:
        self.ledger, self.log, self.session_id, self.phase = ledger, log, session_id, phase
        self.failed = False

    def __enter__(self) -> LedgerGuard:
        return self

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc is None or not is_session_error(exc):
            return False
        self.failed = True
        quarantine_session(self.ledger, self.log, self.ledger.session_by_id(self.session_id),
                           self.phase, describe(exc), exc=exc)
        return True


@dataclass(frozen=True)
class Requested:
    """The answer to `rig2nwb process`: a job was started (its row), or why not."""

    job: JobRow | None
    message: str


class JobManager:
    def __init__(self, cfg: Config, ledger: Ledger, stage: Suite2pStage, *,
                 executors: dict[str, Executor] | None = None,
                 clock: Callable[[], float] = time.time, guard: Guard = _unguarded) -> None:
        self.cfg = cfg
        self.run = cfg.suite2p.run
        self.ledger = ledger
        self.stage = stage
        self._executors: dict[str, Executor] = dict(executors or {})
        self._clock = clock
        self.guard = guard  # the engine's session boundary: an error quarantines one session
        self.next_poll = 0.0
        self.log = get_logger("rig2nwb.processing")
        self.since: float | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # A request (worker thread) and the automatic start (job thread) decide one at a time:
        # never two jobs for one session.
        self._launching = threading.Lock()
        if self.enabled:
            since = ledger.get_meta(ENABLED_SINCE)
            if since is None:
                since = f"{clock():.3f}"
                ledger.set_meta(ENABLED_SINCE, since)
            self.since = float(since)

    # --- the daemon's job thread ------------------------------------------------------------

    def start(self) -> None:
        """Follow and start jobs on a thread of their own until ``stop``."""
        self.guard = lambda sid, phase: LedgerGuard(self.ledger, self.log, sid, phase)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="suite2p-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            # Not for a scheduler call that hangs: a submit cut short is found by its name
            # at the next start (see the module's docstring).
            self._thread.join(timeout=STOP_WAIT_SECONDS)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # the ledger failing, say: logged, tried again at the next poll
                self.log.exception("following suite2p jobs failed", stage="suite2p-job")
            self._stop.wait(max(0.05, self.next_poll - self._clock()))

    @property
    def enabled(self) -> bool:
        return self.run.executor != "none"

    def executor(self, name: str) -> Executor:
        if name not in self._executors:
            if name == "slurm":
                self._executors[name] = SlurmExecutor(self.run.slurm_options)
            elif name == "local":
                self._executors[name] = LocalExecutor(launcher=self.run.local_launcher)
            else:
                raise JobError(f"unknown executor {name!r} (local or slurm)")
        return self._executors[name]

    def folder(self, job: JobRow) -> JobFolder:
        return JobFolder(self.cfg.state.folder, job.token)

    # --- the worker's step ------------------------------------------------------------------

    def step(self, *, force: bool = False, automatic: bool = True) -> int:
        """Follow the jobs and start those due (``automatic``; a one-shot command only
        follows), at most every poll_seconds. Returns how many jobs changed or started."""
        now = self._clock()
        if not force and now < self.next_poll:
            return 0
        self.next_poll = now + self.run.poll_seconds
        changed = 0
        if self.enabled and automatic:
            with self._launching:
                changed += self._launch_due(now)
        for job in self.ledger.active_jobs():  # the new ones are submitted here
            with self.guard(job.session_id, "following its suite2p job"):
                changed += self._follow(job, now)
        for ex in self._executors.values():
            ex.reap()
        return changed

    def _follow(self, job: JobRow, now: float) -> int:
        ex = self.executor(job.executor)
        folder = self.folder(job)
        if job.next_try_at is not None and now < job.next_try_at:
            return 0  # the scheduler was down: asked again after the backoff
        if job.scheduler_id is None:
            try:
                found = ex.find(folder)
            except SchedulerUnavailable as exc:
                self._scheduler_down(job, exc, now)
                return 0
            except JobError as exc:  # e.g. the SLURM tools are not installed here
                return self._ended(job, JobStatus(JobState.FAILED, None, now, None,
                                                  f"could not be submitted: {exc}"), now)
            if found is None:
                seen = folder.status()
                if seen.exit_code is not None or seen.started_at is not None:
                    # It ran (and the scheduler forgot it, or its process is gone): its folder
                    # tells how it ended. Never submitted again.
                    return self._ended(job, ended_by_folder(
                        folder, "it started, but neither a scheduler nor a process knows it "
                        "now, and it left no exit status"), now)
                return self._submit(job, ex, folder, now)
            self.ledger.update_job(job.id, scheduler_id=found, submitted_at=job.submitted_at or now)
            self.log.info("suite2p job adopted (submitted before the last stop)",
                          stage="suite2p-job", job=found, token=job.token)
            return 1
        try:
            status = ex.status(job.scheduler_id, folder)
        except (SchedulerUnavailable, JobError) as exc:  # asked again after a backoff
            self._scheduler_down(job, exc, now, submitting=False)
            return 0
        self._scheduler_back(job)
        if status.state in ACTIVE_JOB_STATES:
            started = status.started_at or (job.started_at if status.state == JobState.RUNNING
                                             else None)
            if status.state == JobState.RUNNING and timed_out(started, now,
                                                              self.run.timeout_minutes):
                try:
                    ex.cancel(job.scheduler_id, folder)
                except (SchedulerUnavailable, JobError) as exc:  # cancelled at the next poll
                    self._scheduler_down(job, exc, now, submitting=False)
                    return 0
                return self._ended(job, JobStatus(
                    JobState.FAILED, started, now, None,
                    f"{TIMEOUT_NOTE} ({self.run.timeout_minutes:g} min); cancelled"), now)
            if (status.state, started, status.detail or None) != (job.state, job.started_at,
                                                                   job.detail):
                self.ledger.update_job(job.id, state=status.state, started_at=started,
                                       detail=status.detail or None)
                return 1
            return 0
        return self._ended(job, status, now)

    def _ended(self, job: JobRow, status: JobStatus, now: float) -> int:
        folder = self.folder(job)
        self.ledger.update_job(job.id, state=status.state, started_at=status.started_at
                               or job.started_at, ended_at=status.ended_at or now,
                               exit_code=status.exit_code, detail=status.detail or None)
        sess = self.ledger.session_by_id(job.session_id)
        log = self._log(sess, job)
        if status.state == JobState.DONE:
            self.ledger.clear_problem(sess.id, Problem.SUITE2P_JOB)
            self.ledger.add_event(sess.id, "suite2p-job", f"suite2p job {job.scheduler_id} "
                                  f"({job.executor}) done; its results are attached next")
            log.info("suite2p job done")
            self.stage.survey_soon(sess.id)
            return 1
        what = {JobState.FAILED: "failed", JobState.CANCELLED: "was cancelled",
                JobState.LOST: "was lost"}.get(JobState(status.state), str(status.state))
        if status.exit_code is not None and status.state == JobState.FAILED:
            what += f" (exit status {status.exit_code})"
        if status.detail:
            what += f": {status.detail}"
        tail = folder.log_tail(LOG_TAIL_IN_PROBLEM)
        retry = "" if status.state == JobState.CANCELLED or TIMEOUT_NOTE in (status.detail or "") \
            else (f"; tried again ({job.attempt} of {1 + self.run.retries} attempts)"
                  if job.attempt <= self.run.retries else "; no retries left")
        message = (f"suite2p job {job.scheduler_id or job.token} ({job.executor}, attempt "
                   f"{job.attempt}) {what}{retry}. Log {folder.log}"
                   + (": ..." + " | ".join(tail) if tail else " is empty"))
        if self.ledger.report_problem(sess.id, Problem.SUITE2P_JOB, message):
            self.ledger.add_event(sess.id, "problem", message)
        log.warning("suite2p job ended without results", state=status.state,
                    exit_code=status.exit_code, log_tail=tail)
        return 1

    def _submit(self, job: JobRow, ex: Executor, folder: JobFolder, now: float) -> int:
        try:
            job_id = ex.submit(folder)
        except SchedulerUnavailable as exc:
            self._scheduler_down(job, exc, now)
            return 0
        except JobError as exc:
            return self._ended(job, JobStatus(JobState.FAILED, None, now, None,
                                              f"could not be submitted: {exc}"), now)
        self.ledger.update_job(job.id, scheduler_id=job_id, submitted_at=now, submit_failures=0,
                               next_try_at=None, detail=None)
        self._scheduler_back(job)
        sess = self.ledger.session_by_id(job.session_id)
        self.ledger.add_event(sess.id, "suite2p-job", f"suite2p job {job_id or job.token} "
                              f"submitted ({job.executor}, attempt {job.attempt})")
        self._log(sess, job).info("suite2p job submitted", job=job_id)
        return 1

    def _scheduler_down(self, job: JobRow, exc: Exception, now: float, *,
                        submitting: bool = True) -> None:
        failures = job.submit_failures + 1
        wait = scheduler_backoff(failures, self.run.poll_seconds)
        message = (f"the {job.executor} scheduler cannot be reached ({exc}); "
                   + (f"the suite2p job is submitted when it answers (next try in {wait:g} s)"
                      if submitting else "its jobs are followed again when it answers"))
        self.ledger.update_job(job.id, submit_failures=failures, next_try_at=now + wait,
                               detail=message)
        if self.ledger.report_problem(job.session_id, Problem.SCHEDULER, message,
                                      severity=Severity.WARNING):
            self.log.warning("scheduler not reachable", stage="suite2p-job", error=str(exc),
                             retry_in=wait)

    def _scheduler_back(self, job: JobRow) -> None:
        if job.submit_failures:
            self.ledger.update_job(job.id, submit_failures=0, next_try_at=None,
                                   detail=None if job.scheduler_id is None else job.detail)
        if self.ledger.clear_problem(job.session_id, Problem.SCHEDULER):
            self.log.info("scheduler reachable again", stage="suite2p-job")

    # --- starting jobs -----------------------------------------------------------------------

    def _launch_due(self, now: float) -> int:
        running = len(self.ledger.active_jobs())
        latest = self.ledger.latest_jobs()
        started = 0
        for sess in self.ledger.sessions():
            if running >= self.run.max_running:
                break
            verdict = self.verdict(sess, latest.get(sess.id), running=running)
            if verdict is None:
                continue
            with self.guard(sess.id, "starting its suite2p job"):
                if self.record(sess, verdict.attempt, executor=self.run.executor) is not None:
                    running += 1
                    started += 1
        return started

    def verdict(self, sess: SessionRow, latest: JobRow | None, *, running: int,
                requested: bool = False) -> Launch | None:
        checks = self.cfg.output.check_files or self.cfg.status.summary_picture
        facts = SessionJobFacts(
            finished=sess.state == SessionState.FINISHED and bool(sess.nwb_created),
            checked=sess.validation is not None or not checks,
            quarantined=sess.quarantined,
            results_present=False,
            latest=None if latest is None else JobState(latest.state),
            attempts=0 if latest is None else latest.attempt,
            requested=requested,
            timed_out=latest is not None and TIMEOUT_NOTE in (latest.detail or ""),
            before_enabled=self.since is not None and sess.finished_at is not None
            and sess.finished_at < self.since)
        verdict = launch_verdict(facts, retries=self.run.retries, running=running,
                                 max_running=self.run.max_running)
        if verdict is None or requested:
            return verdict
        # Existing results only ever hold a job back: looked for (on the share) only now, not
        # for every archived session at every poll.
        facts = dataclasses.replace(facts, results_present=self.results_present(sess))
        return launch_verdict(facts, retries=self.run.retries, running=running,
                              max_running=self.run.max_running)

    def results_present(self, sess: SessionRow) -> bool:
        """Complete suite2p output where the attach stage looks (made by a job, or elsewhere)."""
        s2p = self.ledger.suite2p(sess.id)
        if s2p is not None and s2p.state in ("attached", "staged", "ready", "settling"):
            return True
        folder = suite2p_folder(self.cfg, self.ledger, sess)
        if folder is None:
            return False
        root = suite2p_root(self.cfg, folder)
        try:
            return is_rig_dir(root, folder) and Suite2pStage.missing(folder, root) == ""
        except (OSError, UnsafeRigPath, Suite2pProblem):
            return False

    def record(self, sess: SessionRow, attempt: int, *, executor: str,
               requested: bool = False) -> JobRow | None:
        """Write the job's folder and record it; the next ``step`` submits it (the order that
        makes a crash safe). None when the session's job cannot be described (reported as
        its problem)."""
        try:
            values = self.placeholders(sess)
        except (JobError, MetadataProblem) as exc:
            message = f"its suite2p job cannot start: {exc}"
            if self.ledger.report_problem(sess.id, Problem.SUITE2P_JOB, message):
                self.ledger.add_event(sess.id, "problem", message)
                self.log.warning("suite2p job cannot start", stage="suite2p-job",
                                 subject=sess.subject, session=sess.session, error=str(exc))
            return None
        token = uuid.uuid4().hex[:16]
        folder = JobFolder(self.cfg.state.folder, token)
        argv = render_command(self.run.command, values)
        folder.write(argv, title=f"session {sess.subject}/{sess.session}, attempt {attempt}")
        self.executor(executor)  # an unknown name fails here, before anything is recorded
        job = self.ledger.add_job(sess.id, token=token, executor=executor, attempt=attempt,
                                  log=str(folder.log), requested=requested)
        self.ledger.clear_problem(sess.id, Problem.SUITE2P_JOB)
        self.ledger.add_event(sess.id, "suite2p-job", f"suite2p job {token} recorded "
                              f"({executor}, attempt {attempt}); submitted next")
        return job

    def placeholders(self, sess: SessionRow) -> dict[str, str]:
        layout = PageLayout.from_json(sess.layout) if sess.layout else PageLayout(
            frame_rate=self.cfg.imaging.frame_rate)
        tiffs = tiff_folder(self.cfg, self.ledger, sess)
        s2p = suite2p_folder(self.cfg, self.ledger, sess)
        if tiffs is None or s2p is None:
            raise JobError("the ledger holds none of its TIFFs, so there is nothing to run on")
        return {
            "session_folder": str(tiffs or ""), "suite2p_folder": str(s2p or ""),
            "nwb": sess.nwb_path, "subject": sess.subject, "session": sess.session,
            "fs": f"{layout.series_rate:.6g}", "nplanes": str(layout.planes),
            "nchannels": str(layout.n_channels),
            "settings": str(settings_file(self.cfg, tiffs) or ""),
            "python": sys.executable,
        }

    def request(self, sess: SessionRow, *, executor: str | None = None) -> Requested:
        """`rig2nwb process`: record one session's job (started again when it ran before); the
        next ``step`` submits it."""
        with self._launching:
            return self._request(sess, executor)

    def _request(self, sess: SessionRow, executor: str | None) -> Requested:
        latest = self.ledger.latest_jobs().get(sess.id)
        if latest is not None and latest.state in ACTIVE_JOB_STATES:
            return Requested(None, f"session {sess.subject}/{sess.session} already has a "
                             f"suite2p job {latest.state} ({latest.executor} "
                             f"{latest.scheduler_id or latest.token})")
        name = executor or self.run.executor
        if name == "none":
            return Requested(None, "no executor: set suite2p.run.executor (local or slurm) or "
                             "give --executor")
        if sess.quarantined:
            return Requested(None, f"session {sess.subject}/{sess.session} is quarantined")
        if sess.state != SessionState.FINISHED or not sess.nwb_created:
            return Requested(None, f"session {sess.subject}/{sess.session} is not finished "
                             f"yet (state: {sess.state}); suite2p runs on finished sessions")
        job = self.record(sess, 1, executor=name, requested=True)
        if job is None:
            problem = next((p.message for p in self.ledger.problems(sess.id)
                            if p.code == Problem.SUITE2P_JOB and p.active), "see its status")
            return Requested(None, f"session {sess.subject}/{sess.session}: {problem}")
        return Requested(job, f"suite2p job {job.token} of {sess.subject}/{sess.session} "
                         f"recorded ({job.executor}); log: {job.log}")


    def _log(self, sess: SessionRow, job: JobRow) -> Logger:
        return self.log.bind(stage="suite2p-job", subject=sess.subject, session=sess.session,
                             executor=job.executor, job=job.scheduler_id, attempt=job.attempt)


def job_line(job: JobRow) -> str:
    """One line on where a job stands (what `rig2nwb process` prints)."""
    where = f"{job.executor} job {job.scheduler_id or job.token}"
    state = "submitted" if job.state == JobState.QUEUED and job.scheduler_id else job.state
    return (f"suite2p {where}: {state}" + (f" ({job.detail})" if job.detail else "")
            + f"; log: {job.log}")


def log_path(cfg: Config, token: str) -> Path:
    return JobFolder(cfg.state.folder, token).log
