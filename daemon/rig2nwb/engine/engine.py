"""The engine: a small facade over the parts that turn a rig folder into NWB files.

One step gathers each active session's facts (sync), asks the pure planner what to do, and
carries the actions out through the append job, the finalizer, the check queue and the
suite2p attacher; the writer pool holds the open files and the disk guard pauses sessions on a
full disk. Every action runs inside a session guard: an unexpected error quarantines that
session and the worker goes on with the others (see quarantine.py).

All NWB writing happens here, on one thread (the service's worker, or the ``convert``
command). The ledger is updated only after the NWB file has been flushed and fsynced, so the
ledger never claims a frame the disk does not hold; anything the file holds beyond the ledger
is trimmed when the file is next opened, and re-appended from the TIFFs.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from rig2nwb.config.schema import Config
from rig2nwb.core.planner import Action, Rules, plan_session
from rig2nwb.engine.appending import AppendJob
from rig2nwb.engine.attaching import Attacher
from rig2nwb.engine.checks import CheckQueue
from rig2nwb.engine.context import Context, Inspected
from rig2nwb.engine.diskguard import DiskGuard
from rig2nwb.engine.finalizing import Finalizer
from rig2nwb.engine.quarantine import SessionGuard
from rig2nwb.engine.repair import rebuild
from rig2nwb.engine.reporter import Reporter
from rig2nwb.engine.rigreports import RigReports
from rig2nwb.engine.sync import LedgerSync
from rig2nwb.engine.writers import WriterPool
from rig2nwb.errors import NwbBusy, NwbRebuilt, WriterPoisoned
from rig2nwb.ledger.quarantine import describe, quarantine_session
from rig2nwb.ledger.rows import SessionRow
from rig2nwb.ledger.store import Ledger
from rig2nwb.logs import get_logger
from rig2nwb.nwb.writer import SessionAppender
from rig2nwb.processing.manager import JobManager
from rig2nwb.progress import beat as heartbeat
from rig2nwb.rig.index import Key, Obs, RigIndex
from rig2nwb.rig.safeopen import FileId
from rig2nwb.rig.tiffs import TiffInfo
from rig2nwb.states import FileState, Problem, SessionState
from rig2nwb.suite2p.stage import AttachOutcome, Suite2pStage

# What the session boundary calls each planner action (quarantine messages say "while ...").
PHASES = {"inspect": "inspecting a TIFF", "append": "appending frames",
          "finalize": "finalizing the session", "fail": "recording a bad TIFF",
          "vanished": "recording a vanished TIFF", "out_of_order": "recording a late TIFF"}
# Phases that may take the worker down (a library segfault, the OOM killer): a breadcrumb in
# the ledger says which session the worker was in, so its death can be counted.
RISKY = frozenset({"inspecting a TIFF", "appending frames", "finalizing the session"})


class Engine:
    def __init__(self, cfg: Config, ledger: Ledger, *, convert_scope: Path | None = None,
                 on_frames: Callable[[int], None] | None = None) -> None:
        self.cfg = cfg
        self._ledger = ledger
        self.stop_event = threading.Event()
        log = get_logger("rig2nwb.engine")
        report = Reporter(ledger, log)
        inspected: dict[str, Inspected] = {}
        self.rig_reports = RigReports(cfg, report, inspected)
        self.index = RigIndex(cfg, self.rig_reports, scope=convert_scope,
                              stop=self.stop_event.is_set)
        self.ctx = Context(cfg, ledger, self.index, report,
                           DiskGuard(cfg.output.folder, cfg.output.min_free_mb, report), log,
                           self.stop_event, convert=convert_scope is not None,
                           inspected=inspected)
        self.rules = Rules(
            signals=frozenset(cfg.completion.signals),
            settle_seconds=cfg.completion.settle_seconds,
            session_idle_seconds=cfg.completion.session_idle_seconds,
            require_lab_files=cfg.completion.require_lab_files and bool(
                cfg.rig.scan_file or cfg.rig.trial_file),
            gap_wait_seconds=cfg.completion.gap_wait_seconds,
            convert=convert_scope is not None,
        )
        self.sync = LedgerSync(self.ctx)
        self.writers = WriterPool(self.ctx)
        self.checks = CheckQueue(self.ctx, self.guard)
        self.finalizer = Finalizer(self.ctx, self.writers, self.checks)
        self.appender = AppendJob(self.ctx, self.writers, reopen=self.finalizer.reopen,
                                  on_frames=on_frames)
        self.suite2p = Suite2pStage(cfg, ledger)
        # suite2p jobs (suite2p.run): the service runs them on their own thread (jobs.start).
        self.jobs = JobManager(cfg, ledger, self.suite2p, guard=self._job_guard)
        self.attacher = Attacher(self.ctx, self.suite2p, self.writers, self.checks, self.guard,
                                 handlers={"process": ("starting its suite2p job (asked by "
                                                       "rig2nwb process)", self._process)})
        # Worker deaths counted per (session, phase) not yet followed by a completed phase.
        self.deaths = ledger.crash_counts()

    # --- what hooks and commands see (engine.view.LoopView and a little more) ------------------

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    def open_appenders(self) -> list[tuple[int, SessionAppender]]:
        return self.writers.open_appenders()

    def checking(self) -> int | None:
        return self.checks.checking()

    def checks_pending(self) -> bool:
        return self.checks.pending()

    @property
    def tiffs(self) -> dict[str, Obs]:
        return self.index.tiffs

    @property
    def inspected(self) -> dict[str, Inspected]:
        return self.ctx.inspected

    @property
    def root_ok(self) -> bool:
        return self.index.root_ok

    @property
    def on_frames(self) -> Callable[[int], None] | None:
        return self.appender.on_frames

    @on_frames.setter
    def on_frames(self, callback: Callable[[int], None] | None) -> None:
        self.appender.on_frames = callback

    def inspect_file(self, rel: str, expect: FileId | None) -> TiffInfo:
        return self.appender.inspect_file(rel, expect)

    # --- the session boundary ------------------------------------------------------------------

    def guard(self, session_id: int, phase: str, *, breadcrumb: bool = True) -> SessionGuard:
        """Work on one session in one phase; an unexpected exception quarantines that session
        (see quarantine.py) and the worker goes on with the others."""
        return SessionGuard(self.ledger, session_id, phase, on_error=self._quarantine,
                            breadcrumb=breadcrumb, passthrough=(WriterPoisoned,),
                            deaths=self.deaths)

    def _quarantine(self, session_id: int, phase: str, exc: BaseException) -> None:
        sess = self.ledger.session_by_id(session_id)
        quarantine_session(self.ledger, self.ctx.log, sess, phase, describe(exc), exc=exc)
        paths = {r.path for r in self.ledger.files(session_id)}
        for rel in [k for k in self.ctx.inspected if k in paths]:
            del self.ctx.inspected[rel]
        # Recorded first; closing the handle may still fail (then the worker restarts, and the
        # session stays quarantined).
        self.checks.cancel(session_id)
        self.writers.drop(session_id)

    def _job_guard(self, session_id: int, phase: str) -> SessionGuard:
        return self.guard(session_id, phase, breadcrumb=False)

    def _process(self, sess: SessionRow, args: str) -> tuple[bool, str]:
        executor = json.loads(args or "{}").get("executor")
        answer = self.jobs.request(sess, executor=executor)
        return answer.job is not None, answer.message

    def quarantined(self, key: Key) -> bool:
        sess = self.ledger.session(*key)
        return sess is not None and sess.quarantined

    # --- observing the rig folder ------------------------------------------------------------

    def full_scan(self) -> None:
        """Walk the rig folder and reconcile what is there with what we knew."""
        present = self.index.full_scan()
        if present is not None and not self.ctx.convert:
            self.rig_reports.gone_except(present)
        self._lost_outputs()

    def _lost_outputs(self) -> None:
        """A finished session whose NWB file is gone (deleted, moved away) is rebuilt from its
        TIFFs, and says so; without this it would stay "finished" with no file (found by the
        stateful test). An output folder that is not there (an unmounted share) is an outage,
        not a deletion: nothing is done then."""
        if not self.cfg.output.folder.is_dir():
            return
        scope = {o.key for o in self.index.tiffs.values()} if self.ctx.convert else None
        for sess in self.ledger.sessions():
            key = (sess.subject, sess.session)
            if (sess.state != SessionState.FINISHED or not sess.nwb_created or sess.quarantined
                    or (scope is not None and key not in scope)
                    or os.path.lexists(sess.nwb_path)):
                continue
            with self.guard(sess.id, "recovering", breadcrumb=False):
                self.checks.cancel(sess.id)
                self.writers.drop(sess.id)
                with contextlib.suppress(NwbRebuilt):
                    rebuild(self.ctx, sess, "the NWB file is missing",
                            self.ctx.session_log(sess).bind(stage="recover"))
            self.index.dirty.add(key)

    def observe(self, path: Path, kind: str) -> None:
        """Handle one watcher event (created, closed, deleted; a move arrives as deleted + created)."""
        self.index.observe(path, kind)

    def restat_pending(self) -> None:
        """Refresh what the planner waits on (see RigIndex.restat_pending)."""
        unfinished = {(s.subject, s.session) for s in self.ledger.sessions()
                      if s.state != SessionState.FINISHED}
        self.index.restat_pending(self.ledger.unresolved_paths(), unfinished)

    def retry_transient(self) -> None:
        """Give files that failed for a passing reason (permissions, I/O) another chance."""
        self.sync.retry_transient()

    # --- planning and acting -----------------------------------------------------------------

    def recover(self) -> None:
        """At start-up: open every unfinished session's NWB file and repair it to the ledger."""
        for sess in self.ledger.sessions():
            heartbeat()  # start-up recovery: one NWB file checked per session
            if sess.quarantined:
                continue  # left exactly as it is until `rig2nwb retry`
            with self.guard(sess.id, "recovering"):
                self._recover_one(sess)
            self.index.dirty.add((sess.subject, sess.session))

    def _recover_one(self, sess: SessionRow) -> None:
        log = self.ctx.log
        if sess.state != SessionState.FINISHED and sess.nwb_created:
            try:
                self.writers.get(sess)
            except NwbRebuilt:
                pass  # already logged and reported; the session re-appends from its TIFFs
            except (NwbBusy, OSError) as exc:
                log.warning("could not check NWB file at start-up; will retry",
                            stage="recover", session=sess.session, error=str(exc))
        elif sess.nwb_created:
            try:
                self.suite2p.recover(sess)
            except OSError as exc:
                log.warning("could not finish an interrupted suite2p attach; will retry",
                            stage="suite2p", session=sess.session, error=str(exc))

    def step(self) -> int:
        """Plan and act once for every session that may have something to do.

        Returns how many actions changed something (0 means idle)."""
        changed, self.index.changed = self.index.changed, set()
        for rel in sorted(changed):
            obs = self.index.tiffs.get(rel)
            if obs is None:
                continue
            sid = self.sync.session_of(obs)
            if sid is None:  # a new session: nothing of it exists that could be quarantined
                self.sync.ensure_file(obs)
                continue
            if self.ledger.session_by_id(sid).quarantined:
                continue
            with self.guard(sid, "watching", breadcrumb=False):
                self.sync.ensure_file(obs)
        done = 0
        for key in self.sync.active_keys():
            if self.stop_event.is_set():
                break
            done += self._step_session(key)
        self.writers.close_idle()
        if not self.stop_event.is_set():
            done += self.serve_requests()
        if not self.stop_event.is_set():
            done += self.attach_next()
        self.run_checks()
        return done

    def _step_session(self, key: Key) -> int:
        sess = self.ledger.session(*key)
        if sess is None or sess.quarantined:
            return 0
        if sess.state == SessionState.PAUSED and self.ctx.disk.still_full():
            return 0  # still no room at all; the append resumes the session once its file fits
        actions: list[Action] = []
        with self.guard(sess.id, "planning", breadcrumb=False) as g:
            facts = self.sync.facts(sess)
            actions = plan_session(facts, self.rules)
            self.sync.lab_files_hint(sess, facts, self.rules.require_lab_files)
        if g.failed:
            return 1
        changed = 0
        for action in actions:
            if self.stop_event.is_set():
                break
            phase = PHASES.get(action.kind, "watching")
            with self.guard(sess.id, phase, breadcrumb=phase in RISKY) as g:
                changed += self._act(sess, action)
            if g.failed:
                return changed + 1
            sess = self.ledger.session_by_id(sess.id)
        if changed or any(a.kind == "wait" for a in actions):
            # Something moved, or a file waits on time (settle, gap): plan again next step,
            # also for a finished session that got a new file.
            self.index.dirty.add(key)
        return changed

    def _act(self, sess: SessionRow, action: Action) -> int:
        log = self.ctx.session_log(sess)
        row = self.ledger.file(action.path) if action.path else None
        name = PurePosixPath(action.path).name
        match action.kind:
            case "wait":
                return 0
            case "inspect":
                self.appender.inspect(action.path)
                return 1
            case "fail":
                assert row is not None
                problem = self.ctx.inspected[action.path][2]
                assert not isinstance(problem, TiffInfo)
                self.appender.fail_file(sess, row, problem, log)
                return 1
            case "vanished" | "out_of_order":
                assert row is not None
                state, code = ((FileState.VANISHED, Problem.VANISHED) if action.kind == "vanished"
                               else (FileState.OUT_OF_ORDER, Problem.OUT_OF_ORDER))
                self.ledger.update_file(row.id, state=state, error=action.reason)
                self.ctx.report.problem(sess, code, f"{name}: {action.reason}", row.path, log)
                return 1
            case "append":
                assert row is not None
                return self.appender.append(sess, row, log)
            case "finalize":
                return self.finalizer.finalize(sess, log)
        return 0  # pragma: no cover

    # --- suite2p results and checks --------------------------------------------------------------

    def attach_next(self) -> int:
        return self.attacher.next()

    def serve_requests(self) -> int:
        return self.attacher.serve_requests()

    def attach_suite2p(self, session_id: int, *, on_demand: bool = False) -> AttachOutcome:
        return self.attacher.attach(session_id, on_demand=on_demand)

    def run_checks(self) -> None:
        self.checks.run()

    def close(self) -> None:
        self.writers.close_all()
        self.checks.cancel()  # its session is checked again after the next start
