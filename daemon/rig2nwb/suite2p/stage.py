"""The scheduled suite2p stage: notice suite2p output of finished sessions and attach it.

Two halves, on two threads:

- ``survey`` runs as an APScheduler job (one interval job, rebuilt at every start; all state is
  in the ledger's ``suite2p`` table, so nothing is lost with the scheduler). It only stats files:
  for each finished session it finds the suite2p folder, notes what is missing, and when every
  plane's required files exist and have stopped changing, queues the session for attaching.
- ``attach`` runs on the engine's worker thread, the only thread that writes NWB files. It
  loads the planes (restricted unpickling, memory-mapped traces), checks them against the raw
  series, writes the results into a copy of the file and renames it into place (see
  suite2p_nwb).

States of a session's suite2p row:
  incomplete  the folder exists but files are missing (``detail`` lists them)
  settling    complete, waiting for the files to stop changing
  ready       queued for the worker
  problem     the files load badly or do not fit the session; retried when they change
  attaching   the results are being written into a copy of the file (the original is untouched)
  staged      the copy with the new results is complete; renaming it over the file is pending
  attached    the results in the NWB file are those of the files with fingerprint ``attached``
  stale       (written by versions before 0.2) the session got new frames after attaching
A session that gets new frames after attaching keeps its results (attached, with a warning that
they cover fewer frames); a suite2p rerun on the whole session replaces them.
A change of the files after attaching (re-curation in the suite2p GUI, a rerun) is seen as a new
fingerprint and goes through settling and ready again; the new results replace the old ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import h5py

from rig2nwb.config.schema import Config
from rig2nwb.core.dff import BaselineSettings
from rig2nwb.core.diskspace import has_room
from rig2nwb.core.pagelayout import PageLayout
from rig2nwb.errors import AttachError, Suite2pProblem, UnsafeRigPath
from rig2nwb.fsutil import free_bytes
from rig2nwb.ledger.quarantine import describe, is_session_error, quarantine_session
from rig2nwb.ledger.rows import SessionRow, Suite2pRow
from rig2nwb.ledger.store import Ledger
from rig2nwb.logs import Logger, get_logger
from rig2nwb.nwb.chunks import resolve_threads
from rig2nwb.nwb.writer import compression_args, is_lock_error, standard_args
from rig2nwb.rig.safeopen import is_rig_dir, split_inside
from rig2nwb.states import AttachState, Problem, SessionState, Severity, Suite2pState
from rig2nwb.suite2p.folder import Suite2pPlane, load_plane
from rig2nwb.suite2p.listing import (
    find_planes,
    fingerprint,
    missing_files,
    plane_link_problems,
    suite2p_link_problem,
)
from rig2nwb.suite2p.nwbobjects import (
    AttachSummary,
    PlaneTarget,
    check_fit,
    commit_copy,
    discard_staging,
    discard_work_copy,
    has_staging,
    make_work_copy,
    plane_target,
    swap_in,
    write_staging,
)

DEFAULT_NEUROPIL = 0.7
PROBLEM = Problem.SUITE2P
WARNING = Problem.SUITE2P_WARNING  # a ledger problem of severity "warning"


@dataclass(frozen=True)
class AttachOutcome:
    state: AttachState
    message: str
    summary: AttachSummary | None = None


def digest(fp: tuple[tuple[str, int, int], ...]) -> str:
    return hashlib.sha1(json.dumps(fp).encode()).hexdigest()


def tiff_folder(cfg: Config, ledger: Ledger, sess: SessionRow) -> Path | None:
    """The folder holding the session's TIFFs (that of its first file)."""
    files = ledger.files(sess.id)
    if not files:
        return None
    return cfg.rig.root / PurePosixPath(files[0].path).parent


def suite2p_root(cfg: Config, folder: Path) -> Path:
    """Where links stop being followed for a suite2p folder: the rig folder when it lies in it;
    a folder configured (absolute) elsewhere is the admin's choice and its own root."""
    try:
        split_inside(cfg.rig.root, folder)
    except UnsafeRigPath:
        return folder
    return cfg.rig.root


def _links_refused(folder: Path, root: Path) -> str | None:
    """The suite2p folder, or one of its plane folders, is a link (never read): why."""
    refused = suite2p_link_problem(folder, root)
    if refused is None and is_rig_dir(root, folder):
        refused = "; ".join(plane_link_problems(folder, root)) or None
    return refused


def suite2p_folder(cfg: Config, ledger: Ledger, sess: SessionRow) -> Path | None:
    """Where this session's suite2p output is expected (see Suite2pConfig.folder)."""
    text = cfg.suite2p.folder.format(subject=sess.subject, session=sess.session, site=sess.site)
    path = Path(text)
    if path.is_absolute():
        return path
    base = tiff_folder(cfg, ledger, sess)
    return None if base is None else Path(*(base / path).parts)


class Suite2pStage:
    def __init__(self, cfg: Config, ledger: Ledger) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.queue: queue.SimpleQueue[tuple[int, bool]] = queue.SimpleQueue()
        # Sessions in the queue now. A row left 'ready' by an earlier process is not in it, and
        # the survey queues it again (the queue itself does not survive a restart).
        self.queued: set[int] = set()
        self.log = get_logger("rig2nwb.suite2p")
        self._scheduler: Any = None
        # Sessions whose suite2p job exited 0: its output is complete, no need to wait for the
        # files to settle.
        self.finished_jobs: set[int] = set()

    # --- scheduling ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the APScheduler job that surveys suite2p folders (first run: now)."""
        from apscheduler.schedulers.background import BackgroundScheduler

        sched = BackgroundScheduler(timezone=UTC, daemon=True)
        sched.add_job(self.survey_safely, "interval", seconds=self.cfg.suite2p.interval_seconds,
                      id="suite2p-survey", coalesce=True, misfire_grace_time=None,
                      max_instances=1, next_run_time=datetime.now(UTC))
        sched.start()
        self._scheduler = sched

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None

    def survey_soon(self, session_id: int | None = None) -> None:
        """Look now rather than at the next interval (a suite2p job just ended well)."""
        if session_id is not None:
            self.finished_jobs.add(session_id)
        if self._scheduler is not None:
            self._scheduler.modify_job("suite2p-survey", next_run_time=datetime.now(UTC))
        else:
            self.survey_safely()

    def survey_safely(self) -> None:
        try:
            self.survey()
        except Exception:  # a scheduler job must never die silently: log and try next time
            self.log.exception("suite2p survey failed", stage="suite2p")

    # --- survey (scheduler thread; stats only) -----------------------------------------------

    def survey(self) -> list[int]:
        """Look at every finished session's suite2p folder; queue those ready to attach."""
        rows = self.ledger.suite2p_rows()
        queued = []
        for sess in self.ledger.sessions():
            if sess.state != SessionState.FINISHED or not sess.nwb_created or sess.quarantined:
                continue
            try:
                ready = self._survey_one(sess, rows.get(sess.id))
            except Exception as exc:  # this session's folder, not the survey of the others
                if not is_session_error(exc):
                    raise
                quarantine_session(self.ledger, self.log, sess, "looking at its suite2p folder",
                                   describe(exc), exc=exc)
                continue
            if ready:
                self.queued.add(sess.id)
                self.queue.put((sess.id, False))
                queued.append(sess.id)
        return queued

    def _survey_one(self, sess: SessionRow, row: Suite2pRow | None) -> bool:
        folder = suite2p_folder(self.cfg, self.ledger, sess)
        if folder is None:
            return False
        log = self.log.bind(subject=sess.subject, session=sess.session, stage="suite2p")
        root = suite2p_root(self.cfg, folder)
        refused = _links_refused(folder, root)
        if refused is not None:
            if row is None or row.state != Suite2pState.PROBLEM or row.detail != refused:
                self._fail(sess, folder, "", refused, log)
            return False
        if not is_rig_dir(root, folder):
            return False  # no suite2p output (yet); the status shows none
        missing = self.missing(folder, root)
        if missing:
            self._set(sess, row, folder, "incomplete", missing, log)
            return False
        fp = fingerprint(folder, root)
        fp_digest = digest(fp)
        done = (Suite2pState.ATTACHED, Suite2pState.STAGED)
        if row is not None and row.state in done and row.attached == fp_digest:
            return False
        if row is not None and row.seen == fp_digest and (
                row.state == Suite2pState.PROBLEM
                or (row.state == Suite2pState.READY and sess.id in self.queued)):
            return False  # a problem waits for the files to change; ready is queued already
        now = time.time()
        newest = max((m for _, _, m in fp), default=0) / 1e9
        stable = (row is not None and row.seen == fp_digest) or (
            now - newest >= self.cfg.suite2p.settle_seconds) or sess.id in self.finished_jobs
        if not stable:
            if row is None or row.seen != fp_digest or row.state != Suite2pState.SETTLING:
                self._set(sess, row, folder, "settling", "waiting for the files to stop changing",
                          log, seen=fp_digest, seen_at=now)
            return False
        self._set(sess, row, folder, "ready", "queued for attaching", log, seen=fp_digest,
                  seen_at=row.seen_at if row is not None and row.seen == fp_digest else now)
        return True

    @staticmethod
    def missing(folder: Path, root: Path) -> str:
        """What is missing for the folder to be complete ("" when nothing)."""
        planes = find_planes(folder, root)
        if not planes:
            return f"{folder}: no plane folders (plane0, plane1, ...) yet"
        parts = [f"{d.name}: {', '.join(m)}" for _, d in planes if (m := missing_files(d, root))]
        return ("missing " + "; ".join(parts)) if parts else ""

    def _set(self, sess: SessionRow, row: Suite2pRow | None, folder: Path, state: str,
             detail: str, log: Logger, **fields: Any) -> None:
        changed = row is None or row.state != state or row.detail != detail
        self.ledger.set_suite2p(sess.id, folder=str(folder), state=state, detail=detail, **fields)
        if changed:
            log.info("suite2p " + state, folder=str(folder), detail=detail)

    # --- attach (worker thread) ----------------------------------------------------------------

    def attach(self, sess: SessionRow, *, on_demand: bool = False) -> AttachOutcome:
        """Attach (or replace) the session's suite2p results. The caller guarantees that no
        other handle on the NWB file is open (no appender, no validation child)."""
        log = self.log.bind(subject=sess.subject, session=sess.session, stage="suite2p")
        folder = suite2p_folder(self.cfg, self.ledger, sess)
        row = self.ledger.suite2p(sess.id)
        if folder is None:
            return AttachOutcome(AttachState.WAITING, "the session has no TIFF folder in the ledger")
        root = suite2p_root(self.cfg, folder)
        refused = _links_refused(folder, root)
        if refused is not None:
            return self._fail(sess, folder, "", refused, log)
        if not is_rig_dir(root, folder):
            return AttachOutcome(AttachState.WAITING, f"no suite2p folder at {folder}")
        missing = self.missing(folder, root)
        if missing:
            self._set(sess, row, folder, "incomplete", missing, log)
            return AttachOutcome(AttachState.WAITING, f"{folder}: suite2p output incomplete: {missing}")
        fp_before = digest(fingerprint(folder, root))
        if row is not None and row.state == Suite2pState.ATTACHED and row.attached == fp_before:
            summary = AttachSummary.from_json(row.summary) if row.summary else None
            return AttachOutcome(AttachState.UNCHANGED, "already attached"
                                 + (f": {summary.short()}" if summary else ""), summary)
        nwb = Path(sess.nwb_path)
        try:
            planes, targets = self._load(sess, folder)
        except (Suite2pProblem, AttachError) as exc:
            return self._fail(sess, folder, fp_before, str(exc), log)
        if digest(fingerprint(folder, root)) != fp_before:
            self._set(sess, row, folder, "settling", "files changed while being read", log,
                      seen=digest(fingerprint(folder, root)), seen_at=time.time())
            return AttachOutcome(AttachState.SETTLING, f"{folder}: files changed while being read; "
                                 "attaching once they stop changing")
        short = self._space_problem(nwb, folder, root)
        if short:
            return self._fail(sess, folder, fp_before, short, log)
        self.ledger.set_suite2p(sess.id, folder=str(folder), state=Suite2pState.ATTACHING,
                                detail="writing the results", seen=fp_before)
        # Everything is written into a copy of the file (see suite2p_nwb): a crash before the
        # rename below leaves the original as it was.
        try:
            work = make_work_copy(nwb)
            summary = write_staging(work, planes, targets, compression_args(self.cfg),
                                    self._baseline, str(folder),
                                    resolve_threads(self.cfg.append.compress_threads),
                                    standard_args(self.cfg))
            swap_in(work)
        except OSError as exc:
            self.ledger.set_suite2p(sess.id, folder=str(folder), state=Suite2pState.READY,
                                    detail=f"NWB file busy: {exc}")
            with contextlib.suppress(OSError):
                discard_work_copy(nwb)
            if is_lock_error(exc):
                return AttachOutcome(AttachState.BUSY, f"{nwb.name} is open in another program; will retry")
            raise
        if digest(fingerprint(folder, root)) != fp_before:  # rewritten during the write
            discard_work_copy(nwb)
            self._set(sess, None, folder, "settling", "files changed while being attached", log,
                      seen=None)
            return AttachOutcome(AttachState.SETTLING, "files changed while being attached; will retry")
        # The copy is complete and fsynced: from here a crash finishes the rename at start-up.
        self.ledger.set_suite2p(sess.id, folder=str(folder), state=Suite2pState.STAGED, attached=fp_before,
                                summary=summary.to_json(), detail="swapping in")
        try:
            commit_copy(nwb)
        except OSError as exc:  # Windows: a reader holds the file; the copy is complete, retry
            self.ledger.set_suite2p(sess.id, folder=str(folder), state=Suite2pState.READY, attached=None,
                                    detail=f"NWB file busy: {exc}")
            with contextlib.suppress(OSError):
                discard_work_copy(nwb)
            return AttachOutcome(AttachState.BUSY, f"{nwb.name} could not be replaced ({exc}); will retry")
        self._attached(sess, folder, summary, replaced=row is not None and bool(row.attached),
                       log=log)
        self._warn(sess, folder, [w for plane in planes for w in plane.warnings], log)
        return AttachOutcome(AttachState.ATTACHED, summary.short(), summary)

    def _warn(self, sess: SessionRow, folder: Path, warnings: list[str], log: Logger) -> None:
        """The folder's non-fatal oddities (NaN traces kept as they are, nframes disagreeing
        with ops, ...): a warning in status and the log, so that they are not only in the file.
        Cleared by an attach without them."""
        if not warnings:
            self.ledger.clear_problem(sess.id, WARNING, str(folder))
            return
        text = "; ".join(warnings)
        if self.ledger.report_problem(sess.id, WARNING, text, str(folder), severity=Severity.WARNING):
            log.warning("suite2p folder warnings", file=str(folder), problem=text)

    def _space_problem(self, nwb: Path, folder: Path, root: Path) -> str:
        """The attach needs room for a copy of the file plus the results (about the size of the
        suite2p traces, and as much again for dF/F) on top of output.min_free_mb."""
        try:
            size = nwb.stat().st_size
            traces = sum(n for rel, n, _ in fingerprint(folder, root)
                         if "/" in rel and rel.split("/")[1].startswith(("F", "spks")))
        except OSError:
            return ""  # unknown: the write itself will tell
        free = free_bytes(nwb.parent)
        reserve = self.cfg.output.min_free_mb * 1_000_000
        needed = size + 2 * traces + reserve
        if has_room(free, reserve, size + 2 * traces) or free is None:
            return ""
        return (f"not enough free space to attach safely: the attach writes a complete copy of "
                f"{nwb.name} ({size / 1e9:.1f} GB) and swaps it in, needing about "
                f"{needed / 1e9:.1f} GB with output.min_free_mb, but {free / 1e9:.1f} GB are free "
                f"in {nwb.parent}; retried when the suite2p files change or at the next start")

    def _attached(self, sess: SessionRow, folder: Path, summary: AttachSummary, *,
                  replaced: bool, log: Logger) -> None:
        self.ledger.set_suite2p(sess.id, folder=str(folder), state=Suite2pState.ATTACHED,
                                detail=summary.short())
        self.ledger.clear_problem(sess.id, PROBLEM, str(folder))
        self.ledger.clear_problem(sess.id, "suite2p_partial")  # these cover the whole session
        verb = "replaced" if replaced else "attached"
        self.ledger.add_event(sess.id, "suite2p", f"suite2p {verb}: {summary.short()} in "
                              f"{summary.seconds:g} s from {folder}")
        log.info("suite2p " + verb, rois=summary.rois, cells=summary.cells, red=summary.red,
                 planes=summary.planes, seconds=summary.seconds, folder=str(folder),
                 clamped_baseline_rois=summary.clamped, nwb=sess.nwb_path)

    def _fail(self, sess: SessionRow, folder: Path, fp: str, message: str,
              log: Logger) -> AttachOutcome:
        self.ledger.set_suite2p(sess.id, folder=str(folder), state=Suite2pState.PROBLEM, detail=message,
                                seen=fp)
        if self.ledger.report_problem(sess.id, PROBLEM, message, str(folder)):
            log.error("problem", code=PROBLEM, file=str(folder), problem=message)
            self.ledger.add_event(sess.id, "problem", message)
        return AttachOutcome(AttachState.PROBLEM, message)

    def _load(self, sess: SessionRow, folder: Path) -> tuple[list[Suite2pPlane], list[PlaneTarget]]:
        if not sess.layout:
            raise AttachError(f"{Path(sess.nwb_path).name}: the session has no recorded layout")
        layout = PageLayout.from_json(sess.layout)
        root = suite2p_root(self.cfg, folder)
        found = find_planes(folder, root)
        indices = [i for i, _ in found]
        if indices != list(range(layout.planes)):
            raise AttachError(
                f"{folder}: suite2p planes {', '.join(f'plane{i}' for i in indices)} do not match "
                f"the session's {layout.planes} plane(s) (plane0..plane{layout.planes - 1})")
        budget = self.cfg.append.memory_mb * 2**20
        planes = [load_plane(i, d, root, budget=budget) for i, d in found]
        targets = []
        with h5py.File(sess.nwb_path, "r") as f:
            for plane in planes:
                channel = self._functional_channel(layout, plane, folder)
                spec = next(s for s in layout.series if s.plane == plane.index and s.channel == channel)
                sfx = "" if layout.planes == 1 else f"_plane{plane.index}"
                targets.append(plane_target(f, spec.name, plane.index, sfx))
        problems = [p for plane, t in zip(planes, targets, strict=True) for p in check_fit(plane, t)]
        if problems:
            raise AttachError(f"{folder}: " + "; ".join(problems))
        return planes, targets

    @staticmethod
    def _functional_channel(layout: PageLayout, plane: Suite2pPlane, folder: Path) -> int:
        # suite2p counts channels in page order from 1 (functional_chan); the rig numbers them.
        if plane.nchannels != layout.n_channels:
            raise AttachError(
                f"{folder}/{plane.folder.name}: suite2p ran with {plane.nchannels} channel(s) "
                f"but the session has {layout.n_channels} ({', '.join(map(str, layout.channels))})")
        if not 1 <= plane.functional_chan <= layout.n_channels:
            raise AttachError(f"{folder}/{plane.folder.name}: functional_chan "
                              f"{plane.functional_chan} is not one of the session's channels")
        return layout.channels[plane.functional_chan - 1]

    def _baseline(self, plane: Suite2pPlane, target: PlaneTarget) -> BaselineSettings:
        c = self.cfg.suite2p
        coefficient = c.neuropil_coefficient
        if coefficient is None:
            coefficient = plane.neuropil_coefficient if plane.neuropil_coefficient is not None \
                else DEFAULT_NEUROPIL
        if target.timestamps is not None and len(target.timestamps) > 1:
            span = float(target.timestamps[-1] - target.timestamps[0])
            rate = (len(target.timestamps) - 1) / span if span > 0 else 1.0
        else:
            rate = target.rate or (plane.fs or 1.0)
        return BaselineSettings(neuropil_coefficient=float(coefficient),
                                percentile=c.baseline_percentile,
                                window_seconds=c.baseline_window_seconds,
                                min_baseline=c.min_baseline, rate_hz=rate)

    # --- recovery ------------------------------------------------------------------------------

    def recover(self, sess: SessionRow) -> None:
        """At start-up, before anything else touches the file: finish or undo an interrupted
        attach (see the module docstring of suite2p_nwb)."""
        row = self.ledger.suite2p(sess.id)
        if row is None or row.state not in (Suite2pState.STAGED, Suite2pState.ATTACHING):
            return
        log = self.log.bind(subject=sess.subject, session=sess.session, stage="suite2p")
        nwb = Path(sess.nwb_path)
        if row.state == Suite2pState.STAGED:
            if not commit_copy(nwb) and has_staging(nwb):  # a no-op when the rename had finished
                swap_in(nwb)  # staged in place by an earlier version of rig2nwb
            summary = AttachSummary.from_json(row.summary) if row.summary else AttachSummary()
            log.warning("finished an attach interrupted during the swap", nwb=str(nwb))
            self._attached(sess, Path(row.folder), summary, replaced=False, log=log)
        else:
            discard_work_copy(nwb)
            if has_staging(nwb):  # left by a version that staged inside the live file
                discard_staging(nwb)
            self.ledger.set_suite2p(sess.id, folder=row.folder, state=Suite2pState.READY,
                                    detail="attach interrupted; attaching again")
            log.warning("discarded an attach interrupted while writing; the previous results "
                        "are unchanged", nwb=str(nwb))
            self.queued.add(sess.id)
            self.queue.put((sess.id, False))
