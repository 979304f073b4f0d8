"""The engine: gathers facts, asks the planner, and carries out its actions.

All NWB writing happens here, on one thread (the service's worker, or the ``convert`` command).
The ledger is updated only after the NWB file has been flushed and fsynced, so the ledger never
claims a frame the disk does not hold; anything the file holds beyond the ledger is trimmed when
the file is next opened, and re-appended from the TIFFs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

import numpy as np

from rig2nwb.config.paths import preview_png, summary_png
from rig2nwb.config.schema import Config
from rig2nwb.core.pagelayout import PageLayout
from rig2nwb.core.patterns import Pattern, RunPosition, is_safe_name, printable, run_position
from rig2nwb.core.planner import Action, FileFacts, Parsed, Rules, SessionFacts, plan_session
from rig2nwb.engine.quarantine import (
    SessionGuard,
    clear_inflight,
    describe,
    quarantine_session,
    quarantine_text,
)
from rig2nwb.errors import (
    LabFileProblem,
    MetadataProblem,
    NwbBusy,
    NwbDamaged,
    NwbExists,
    NwbRebuilt,
    Stopped,
    TiffProblem,
    UnsafeRigPath,
    WriterPoisoned,
)
from rig2nwb.ledger.store import FileRow, Ledger, SessionRow
from rig2nwb.logs import get_logger
from rig2nwb.nwb.check import CheckRun, CheckSummary
from rig2nwb.nwb.chunks import resolve_threads
from rig2nwb.nwb.writer import (
    NewFile,
    SessionAppender,
    create_nwb,
    existing_identifier,
    is_lock_error,
    new_identifier,
    standard_args,
    write_trials,
)
from rig2nwb.rig.acquisition import FileAcquisition, read_acquisition
from rig2nwb.rig.labfiles import read_scan_file, read_trial_file
from rig2nwb.rig.safeopen import FileId, FolderFilter, link_text, list_rig_dir, lstat_rig, walk_rig
from rig2nwb.rig.sidecars import load_metadata
from rig2nwb.rig.tiffs import TiffInfo, batch_frames, inspect_tiff, read_batches
from rig2nwb.service.sdnotify import heartbeat
from rig2nwb.suite2p.stage import AttachOutcome, Suite2pStage

Key = tuple[str, str]  # (subject, session)
TAIL_CHECK_FRAMES = 8
# A session waiting for its lab files is said to wait once it has been idle this much longer
# than completion.session_idle_seconds (the lab's stimulus PC may copy them a little later).
LAB_FILES_GRACE_SECONDS = 300.0
TRANSIENT_CODES = frozenset({"unreadable", "io_error", "vanished"})
WRITER_IDLE_CLOSE_SECONDS = 15.0


@dataclass
class Obs:
    """What the watcher knows about one TIFF in the rig folder."""

    rel: str
    key: Key
    site: str
    position: RunPosition
    size: int
    mtime_ns: int
    changed_at: float  # monotonic time of the last observed size/mtime change
    closed: bool = False
    dev: int = 0
    ino: int = 0

    @property
    def file_id(self) -> FileId:
        """The version of the file that was classified: what is read must be this file."""
        return FileId(self.dev, self.ino, self.size, self.mtime_ns)


@dataclass
class LabFiles:
    """Rig-relative paths of a session's lab files ("" while absent)."""

    scan: str = ""
    trial: str = ""
    marker: str = ""


@dataclass
class _Writer:
    appender: SessionAppender
    last_used: float = field(default_factory=time.monotonic)


class Engine:
    def __init__(self, cfg: Config, ledger: Ledger, *, convert_scope: Path | None = None,
                 on_frames: Callable[[int], None] | None = None) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.root = cfg.rig.root
        self.frames_pat = cfg.frames_pattern
        self.lab_pats: list[tuple[str, Pattern]] = [
            (kind, cfg.pattern(text))
            for kind, text in (("scan", cfg.rig.scan_file), ("trial", cfg.rig.trial_file),
                               ("marker", cfg.rig.end_marker))
            if text
        ]
        self.convert_scope = convert_scope
        self.folders = FolderFilter([cfg.rig.frames, *(text for text in (
            cfg.rig.scan_file, cfg.rig.trial_file, cfg.rig.end_marker) if text)])
        self.rules = Rules(
            signals=frozenset(cfg.completion.signals),
            settle_seconds=cfg.completion.settle_seconds,
            session_idle_seconds=cfg.completion.session_idle_seconds,
            require_lab_files=cfg.completion.require_lab_files and bool(
                cfg.rig.scan_file or cfg.rig.trial_file),
            gap_wait_seconds=cfg.completion.gap_wait_seconds,
            convert=convert_scope is not None,
        )
        self.on_frames = on_frames
        self.tiffs: dict[str, Obs] = {}
        self.lab: dict[Key, LabFiles] = {}
        self.inspected: dict[str, tuple[int, int, TiffInfo | TiffProblem]] = {}
        self.acquired: dict[str, tuple[int, int, FileAcquisition]] = {}
        self.writers: dict[int, _Writer] = {}
        self.check: tuple[int, CheckRun] | None = None  # the one validation child running
        self.dirty: set[Key] = set()
        self.changed: set[str] = set()  # TIFFs new or changed since the last step
        self.root_ok = True
        self.root_was_mount = False  # rig.root was a mount point when last reachable
        self.stop_event = threading.Event()
        self.log = get_logger("rig2nwb.engine.engine")
        self.suite2p = Suite2pStage(cfg, ledger)
        # Worker deaths counted per (session, phase) not yet followed by a completed phase.
        self.deaths = ledger.crash_counts()
        # Rig names reported as links or FIFOs -> their session (None: rig-wide), until regular.
        self.not_regular: dict[str, int | None] = {
            p.file: p.session_id for p in ledger.problems() if p.code == "not_regular"}

    # --- the session boundary ------------------------------------------------------------------

    def guard(self, session_id: int, phase: str, *, breadcrumb: bool = True) -> SessionGuard:
        """Work on one session in one phase; an unexpected exception quarantines that session
        (see quarantine.py) and the worker goes on with the others."""
        return SessionGuard(self.ledger, session_id, phase, on_error=self._quarantine,
                            breadcrumb=breadcrumb, passthrough=(WriterPoisoned,),
                            deaths=self.deaths)

    def _quarantine(self, session_id: int, phase: str, exc: BaseException) -> None:
        sess = self.ledger.session_by_id(session_id)
        quarantine_session(self.ledger, self.log, sess, phase, describe(exc), exc=exc)
        self.inspected = {k: v for k, v in self.inspected.items()
                          if k not in {r.path for r in self.ledger.files(session_id)}}
        # Recorded first; closing the handle may still fail (then the worker restarts, and the
        # session stays quarantined).
        self._cancel_check(session_id)
        self._drop_writer(session_id)

    def quarantined(self, key: Key) -> bool:
        sess = self.ledger.session(*key)
        return sess is not None and sess.quarantined

    def _session_of(self, rel: str, key: Key) -> int | None:
        row = self.ledger.file(rel)
        if row is not None:
            return row.session_id
        sess = self.ledger.session(*key)
        return None if sess is None else sess.id

    # --- observing the rig folder ------------------------------------------------------------

    def full_scan(self) -> None:
        """Walk the rig folder and reconcile what is there with what we knew."""
        if not self._root_reachable():
            if self.root_ok:
                self.log.warning("rig folder not reachable; waiting for it to return",
                                 stage="watch", path=str(self.root))
                if self.ledger.report_problem(None, "rig_unreachable",
                                              f"rig folder not reachable: {self.root}"):
                    self.ledger.add_event(None, "problem", f"rig folder not reachable: {self.root}")
            self.root_ok = False
            return  # never take an unmounted share for deleted files
        if not self.root_ok:
            self.log.info("rig folder reachable again", stage="watch", path=str(self.root))
            self.ledger.clear_problem(None, "rig_unreachable")
            self.root_ok = True
        start = self.convert_scope or self.root
        seen: set[str] = set()
        present: set[str] = set()
        lab: dict[Key, LabFiles] = {}
        # Iterative, bounded by what the patterns can reach, never through links (rigfs): a
        # planted tree 1,200 folders deep or a link to elsewhere costs nothing.
        for parts, entries in walk_rig(self.root, start, self.folders, stop=self.stop_event.is_set,
                                       on_folder=heartbeat):
            base = "/".join(parts)
            for entry in entries:
                if entry.is_dir:
                    continue
                rel = f"{base}/{entry.name}" if base else entry.name
                present.add(rel)
                obs = self.tiffs.get(rel)
                if obs is not None and entry.is_file and (
                        entry.st.st_size, entry.st.st_mtime_ns, entry.st.st_ino) == (
                        obs.size, obs.mtime_ns, obs.ino):
                    # A known TIFF that did not change needs nothing more (a rig folder of
                    # 10,000 old files is rescanned every 30 s).
                    seen.add(rel)
                    continue
                if self._classify(rel, entry.st, lab) == "tiff":
                    seen.add(rel)
        if self.stop_event.is_set():
            return  # a partial walk must not make files look deleted
        for rel in [r for r in self.tiffs if r not in seen]:
            self._forget(rel)
        if self.convert_scope is None:
            for rel in [r for r in self.not_regular if r not in present]:
                self.ledger.clear_problem(self.not_regular.pop(rel), "not_regular", rel)
        if self.convert_scope is not None:
            self._find_lab_files(lab)
        for key in set(lab) | set(self.lab):
            if lab.get(key, LabFiles()) != self.lab.get(key, LabFiles()):
                self.dirty.add(key)
        self.lab = lab

    def _root_reachable(self) -> bool:
        """Whether rig.root is there. A share unmounted from rig.root itself leaves an empty
        folder behind (found by test_rig_folder_vanishes_and_returns[mountpoint]: every file
        looked deleted), so once rig.root was seen as a mount point it must be one again."""
        try:
            if not self.root.is_dir():
                return False
            mounted = os.path.ismount(self.root)
        except OSError:
            return False
        self.root_was_mount = self.root_was_mount or mounted
        return mounted or not self.root_was_mount

    def _find_lab_files(self, lab: dict[Key, LabFiles]) -> None:
        """For convert: look up the lab files of the sessions in scope by their patterns (a
        wildcard in a lab-file pattern is listed in its own folder only)."""
        for obs in {o.key: o for o in self.tiffs.values()}.values():
            values = {"subject": obs.key[0], "session": obs.key[1], "site": obs.site}
            if not all(is_safe_name(v) for v in values.values() if v):
                continue  # never build a path from an unsafe name (reported elsewhere)
            for _, pat in self.lab_pats:
                rendered = PurePosixPath(pat.render(**values))
                folder = rendered.parent.as_posix()
                if any(c in folder for c in "*?["):
                    continue
                try:
                    entries = list_rig_dir(self.root, folder if folder != "." else self.root)
                except (OSError, UnsafeRigPath):
                    continue
                for entry in entries:
                    rel = entry.name if folder == "." else f"{folder}/{entry.name}"
                    if not entry.is_dir:
                        self._classify(rel, entry.st, lab)

    def observe(self, path: Path, kind: str) -> None:
        """Handle one watcher event (created, closed, deleted; a move arrives as deleted + created)."""
        try:
            rel = path.relative_to(self.root).as_posix()
        except ValueError:
            return
        if kind == "deleted":
            if rel in self.tiffs:
                self._forget(rel)
            return
        try:
            st = lstat_rig(self.root, rel)
        except (OSError, UnsafeRigPath):
            if rel in self.tiffs:
                self._forget(rel)
            return
        lab = dict(self.lab)
        if self._classify(rel, st, lab, closed=(kind == "closed")) == "lab":
            for key in set(lab) - set(self.lab):
                self.dirty.add(key)
            for key, v in lab.items():
                if self.lab.get(key) != v:
                    self.dirty.add(key)
            self.lab = lab

    def _classify(self, rel: str, st: os.stat_result, lab: dict[Key, LabFiles], *,
                  closed: bool = False) -> str | None:
        """``st`` is the file's lstat: links and other non-regular files are never taken."""
        values = self.frames_pat.match(rel)
        if values is not None:
            if not stat.S_ISREG(st.st_mode):
                self._not_regular(rel, st)
                return None
            self._regular_again(rel)
            self._update_tiff(rel, st, values, closed)
            return "tiff"
        for kind, pat in self.lab_pats:
            v = pat.match(rel)
            if v is not None:
                if not stat.S_ISREG(st.st_mode):
                    self._not_regular(rel, st)
                    return None
                self._regular_again(rel)
                key = (v.get("subject") or self.cfg.rig.subject, v["session"])
                entry = lab.setdefault(key, LabFiles())
                lab[key] = LabFiles(**{**entry.__dict__, kind: rel})
                return "lab"
        return None

    def _not_regular(self, rel: str, st: os.stat_result) -> None:
        """A name the patterns take that is a link, a FIFO, a device...: reported (on its
        session when that exists, else rig-wide), never read."""
        if stat.S_ISLNK(st.st_mode):
            what = link_text(self.root, self.root / rel)
        else:
            kind = "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
            what = f"is {kind}; rig2nwb reads only regular files in the rig folder"
        if rel in self.tiffs:
            self._forget(rel)
        message = f"{printable(rel)}: {what}"
        values = self.frames_pat.match(rel) or next(
            (v for _, pat in self.lab_pats if (v := pat.match(rel)) is not None), None)
        sess = None if values is None else self.ledger.session(
            values.get("subject") or self.cfg.rig.subject, values.get("session", ""))
        if sess is not None:
            self._problem(sess, "not_regular", message, rel, self.log.bind(session=sess.session))
        else:
            self._rig_problem("not_regular", rel, message)
        self.not_regular[rel] = sess.id if sess is not None else None

    def _regular_again(self, rel: str) -> None:
        """A name reported as a link or FIFO is a regular file now: the problem is over."""
        if rel in self.not_regular:
            self.ledger.clear_problem(self.not_regular.pop(rel), "not_regular", rel)

    def _update_tiff(self, rel: str, st: os.stat_result, values: dict[str, str],
                     closed: bool) -> None:
        key = (values.get("subject") or self.cfg.rig.subject, values["session"])
        old = self.tiffs.get(rel)
        now = time.monotonic()
        if old is None:
            self.tiffs[rel] = Obs(rel, key, values.get("site", ""), run_position(rel), st.st_size,
                                  st.st_mtime_ns, now, closed, st.st_dev, st.st_ino)
            self.dirty.add(key)
            self.changed.add(rel)
        elif (old.size, old.mtime_ns, old.dev, old.ino) != (
                st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino):
            old.size, old.mtime_ns, old.changed_at, old.closed = (
                st.st_size, st.st_mtime_ns, now, closed)
            old.dev, old.ino = st.st_dev, st.st_ino
            self.inspected.pop(rel, None)
            self.dirty.add(key)
            self.changed.add(rel)
        elif closed and not old.closed:
            old.closed = True
            self.dirty.add(key)

    def _forget(self, rel: str) -> None:
        obs = self.tiffs.pop(rel, None)
        self.inspected.pop(rel, None)
        if obs is not None:
            self.dirty.add(obs.key)

    def restat_pending(self) -> None:
        """Refresh what the planner waits on, every tick, without relying on events: the files
        not yet appended (completion by 'stable' needs fresh sizes) and the folders of sessions
        still acquiring (a network share raises no event when another host adds a file).
        Nothing while the rig folder is unreachable: its files are not deleted (full_scan
        reports the outage)."""
        if not self.root_ok or not self._root_reachable():
            return
        for rel in self.ledger.unresolved_paths():
            values = self.frames_pat.match(rel)
            if rel in self.tiffs and values is not None:
                try:
                    st = lstat_rig(self.root, rel)
                except (OSError, UnsafeRigPath):
                    continue  # gone: the next full scan (or its event) says so
                if stat.S_ISREG(st.st_mode):
                    self._update_tiff(rel, st, values, closed=False)
                else:
                    self._not_regular(rel, st)
        unfinished = {(s.subject, s.session) for s in self.ledger.sessions() if s.state != "finished"}
        folders = {PurePosixPath(o.rel).parent.as_posix() for o in self.tiffs.values()
                   if o.key in unfinished} if unfinished else set()  # idle: no walk over all files
        for folder in folders:
            def unknown(name: str, folder: str = folder) -> bool:
                return f"{folder}/{name}" not in self.tiffs

            try:  # only names not known yet cost an lstat (this runs every tick)
                entries = list_rig_dir(self.root, folder, only=unknown)
            except (OSError, UnsafeRigPath):
                continue  # gone or unreachable: the next full scan sorts it out
            for entry in entries:
                rel = f"{folder}/{entry.name}"
                if rel not in self.tiffs and not entry.is_dir:
                    values = self.frames_pat.match(rel)
                    if values is not None:
                        self._classify(rel, entry.st, {})

    # --- planning and acting -----------------------------------------------------------------

    def recover(self) -> None:
        """At start-up: open every unfinished session's NWB file and repair it to the ledger."""
        for sess in self.ledger.sessions():
            heartbeat()  # start-up recovery: one NWB file checked per session
            if sess.quarantined:
                continue  # left exactly as it is until `rig2nwb retry`
            with self.guard(sess.id, "recovering"):
                self._recover_one(sess)
            self.dirty.add((sess.subject, sess.session))

    def _recover_one(self, sess: SessionRow) -> None:
        if sess.state != "finished" and sess.nwb_created:
            try:
                self._writer(sess)
            except NwbRebuilt:
                pass  # already logged and reported; the session re-appends from its TIFFs
            except (NwbBusy, OSError) as exc:
                self.log.warning("could not check NWB file at start-up; will retry",
                                 stage="recover", session=sess.session, error=str(exc))
        elif sess.nwb_created:
            try:
                self.suite2p.recover(sess)
            except OSError as exc:
                self.log.warning("could not finish an interrupted suite2p attach; will retry",
                                 stage="suite2p", session=sess.session, error=str(exc))

    def step(self) -> int:
        """Plan and act once for every session that may have something to do.

        Returns how many actions changed something (0 means idle)."""
        changed, self.changed = self.changed, set()
        for rel in sorted(changed):
            obs = self.tiffs.get(rel)
            if obs is None:
                continue
            sid = self._session_of(rel, obs.key)
            if sid is None:  # a new session: nothing of it exists that could be quarantined
                self._ensure_ledger_file(obs)
                continue
            if self.ledger.session_by_id(sid).quarantined:
                continue
            with self.guard(sid, "watching", breadcrumb=False):
                self._ensure_ledger_file(obs)
        done = 0
        for key in self._active_keys():
            if self.stop_event.is_set():
                break
            done += self._step_session(key)
        self._close_idle_writers()
        if not self.stop_event.is_set():
            done += self.serve_requests()
        if not self.stop_event.is_set():
            done += self.attach_next()
        self.run_checks()
        return done

    # --- suite2p results -----------------------------------------------------------------------

    def attach_next(self) -> int:
        """Attach one session's suite2p results if the survey asked for it. One per step, so
        frames of sessions still acquiring keep flowing in between."""
        try:
            sid, on_demand = self.suite2p.queue.get_nowait()
        except queue.Empty:
            return 0
        self.suite2p.queued.discard(sid)
        if self.ledger.session_by_id(sid).quarantined:
            return 0
        with self.guard(sid, "attaching suite2p results"):
            self.attach_suite2p(sid, on_demand=on_demand)
        return 1

    def serve_requests(self) -> int:
        """Answer the one-shot commands' requests (``rig2nwb attach`` with the daemon running).
        A request is answered at once when there is nothing to do; a busy NWB file leaves it
        open for the next step."""
        served = 0
        for req in self.ledger.open_requests():
            if self.stop_event.is_set():
                break
            try:
                sess = self.ledger.session_by_id(req.session_id)
            except KeyError:
                self.ledger.answer_request(req.id, False, f"no session {req.session_id}")
                continue
            if sess.quarantined:
                self.ledger.answer_request(req.id, False, quarantine_text(sess))
                continue
            if req.kind != "attach":
                self.ledger.answer_request(req.id, False, f"unknown request {req.kind!r}")
                continue
            if req.taken_at is None:
                self.ledger.take_request(req.id)
            served += 1
            outcome: AttachOutcome | None = None
            with self.guard(sess.id, "attaching suite2p results (asked by rig2nwb attach)") as g:
                outcome = self.attach_suite2p(sess.id, on_demand=True)
            if g.failed:
                self.ledger.answer_request(req.id, False, quarantine_text(
                    self.ledger.session_by_id(sess.id)))
            elif outcome is not None and outcome.state != "busy":
                self.ledger.answer_request(req.id, outcome.state in ("attached", "unchanged"),
                                           outcome.message)
            break  # one attach per step, as for the survey's queue
        return served

    def attach_suite2p(self, session_id: int, *, on_demand: bool = False) -> AttachOutcome:
        sess = self.ledger.session_by_id(session_id)
        if sess.state != "finished" or not sess.nwb_created:
            return AttachOutcome("waiting", f"session {sess.session} is not finished yet "
                                 "(suite2p results are attached to finished sessions)")
        self._cancel_check(session_id)  # the validation child holds the file open
        self._drop_writer(session_id)
        try:
            outcome = self.suite2p.attach(sess, on_demand=on_demand)
        except OSError as exc:
            log = self.log.bind(subject=sess.subject, session=sess.session, stage="suite2p")
            self._problem(sess, "output_error", f"{Path(sess.nwb_path).name}: suite2p results "
                          f"could not be written ({exc}); will retry", "", log)
            self.suite2p.queue.put((session_id, on_demand))
            return AttachOutcome("busy", str(exc))
        if outcome.state == "attached":
            self.ledger.clear_problem(session_id, "output_error")
            self.ledger.update_session(session_id, validation=None)  # check the file again
        elif outcome.state == "busy" and not on_demand:  # on demand: the request stays open
            self.suite2p.queue.put((session_id, on_demand))
        return outcome

    # --- validation of finished files --------------------------------------------------------

    def run_checks(self) -> None:
        """Validate finished files one at a time in a child process (pynwb's validator and
        nwbinspector read the file; a slow or crashing check never stalls the writer). The same
        child draws the summary picture, also when checks are off (``--no-check``)."""
        if self.check is not None:
            sid, run = self.check
            summary = run.poll()
            if summary is None:
                return
            self.check = None
            with self.guard(sid, "checking the file", breadcrumb=False):
                self._record_check(sid, summary)
        checks, pictures = self.cfg.output.check_files, self.cfg.status.summary_picture
        if not (checks or pictures) or self.stop_event.is_set():
            return
        for sess in self.ledger.sessions():
            if self._check_due(sess):
                with self.guard(sess.id, "checking the file", breadcrumb=False) as g:
                    self._start_check(sess, checks, pictures)
                if not g.failed:
                    return

    @staticmethod
    def _check_due(sess: SessionRow) -> bool:
        return (sess.state == "finished" and sess.validation is None and bool(sess.nwb_created)
                and not sess.quarantined)

    def _start_check(self, sess: SessionRow, checks: bool, pictures: bool) -> None:
        png = summary_png(self.cfg, sess.subject, sess.session) if pictures else None
        try:
            self.check = (sess.id, CheckRun.start(Path(sess.nwb_path), picture=png, check=checks))
        except OSError as exc:
            self._record_check(sess.id, CheckSummary.failure(f"cannot start: {exc}") if checks
                               else CheckSummary.not_checked(picture_error=f"cannot start: {exc}"))

    def checks_pending(self) -> bool:
        """Is a finished file still waiting for (or in) its validation or summary picture?"""
        return (self.cfg.output.check_files or self.cfg.status.summary_picture) and (
            self.check is not None or any(self._check_due(s) for s in self.ledger.sessions()))

    def _record_check(self, session_id: int, summary: CheckSummary) -> None:
        sess = self.ledger.session_by_id(session_id)
        if sess.state != "finished":
            return  # reopened meanwhile: it is checked again when it finishes again
        log = self.log.bind(subject=sess.subject, session=sess.session, stage="validate")
        self.ledger.update_session(session_id, validation=summary.to_json())
        self.ledger.add_event(session_id, "validate", summary.short())
        if summary.picture is not None:
            log.info("summary picture written", picture=summary.picture, nwb=sess.nwb_path)
            # The summary replaces the live preview: a stale preview would only mislead.
            with contextlib.suppress(OSError):
                preview_png(self.cfg, sess.subject, sess.session).unlink(missing_ok=True)
        elif summary.picture_error is not None:
            log.warning("summary picture failed", error=summary.picture_error, nwb=sess.nwb_path)
            self.ledger.add_event(session_id, "picture", f"no summary picture: {summary.picture_error}")
        if not summary.checked:  # picture only: no verdict, and an older one no longer applies
            self.ledger.clear_problem(session_id, "validation")
            return
        c = summary.counts
        log.info("nwb checked", result=summary.short(), ok=summary.ok,
                 validation_errors=summary.validation_errors, critical=c.get("CRITICAL", 0),
                 violations=c.get("BEST_PRACTICE_VIOLATION", 0),
                 suggestions=c.get("BEST_PRACTICE_SUGGESTION", 0), seconds=summary.seconds,
                 nwb=sess.nwb_path)
        if summary.ok:
            self.ledger.clear_problem(session_id, "validation")
            return
        first = next((m for m in summary.messages if m.startswith(("VALIDATION", "CRITICAL"))),
                     summary.failed or "")
        self._problem(sess, "validation", f"{Path(sess.nwb_path).name}: {summary.short()}"
                      + (f"; first: {first}" if first else ""), "", log)

    def _cancel_check(self, session_id: int) -> None:
        if self.check is not None and self.check[0] == session_id:
            self.check[1].cancel()
            self.check = None

    def _active_keys(self) -> list[Key]:
        keys = set(self.dirty)
        self.dirty.clear()
        for sess in self.ledger.sessions():
            if sess.state != "finished":
                keys.add((sess.subject, sess.session))
        quarantined = {(s.subject, s.session) for s in self.ledger.sessions() if s.quarantined}
        keys -= quarantined
        if self.convert_scope is not None:
            keys = {k for k in keys if any(o.key == k for o in self.tiffs.values())}
        return sorted(keys)

    def _ensure_ledger_file(self, obs: Obs) -> None:
        row = self.ledger.file(obs.rel)
        if row is not None:
            if row.state == "failed" and (row.size, row.mtime_ns) != (obs.size, obs.mtime_ns):
                # The file changed since it failed (e.g. it was still being written): retry.
                self.ledger.update_file(row.id, state="waiting", error=None)
                self._clear_file_problems(row.session_id, obs.rel)
            elif row.state == "vanished":
                self.ledger.update_file(row.id, state="waiting", error=None)
                self.ledger.clear_problem(row.session_id, "vanished", obs.rel)
            elif row.state == "committed" and (row.size, row.mtime_ns) != (obs.size, obs.mtime_ns):
                self._committed_file_changed(row, obs)
            return
        sess = self._session_row(obs.key, obs.site, obs.rel)
        if sess is None:
            return
        self.ledger.add_file(sess.id, obs.rel, obs.size, obs.mtime_ns)

    def _committed_file_changed(self, row: FileRow, obs: Obs) -> None:
        """A TIFF changed after it was appended: a writer that paused longer than the settle
        period, or reopened its file. Its new pages are appended if it is still the last file of
        the series; otherwise the change is reported, since a series cannot grow in the middle."""
        sess = self.ledger.session_by_id(row.session_id)
        name = PurePosixPath(row.path).name
        log = self.log.bind(subject=sess.subject, session=sess.session, stage="watch", file=row.path)
        self.inspected.pop(row.path, None)
        end = (row.first_frame or 0) + (row.frames or 0)
        if row.first_frame is not None and end == self.ledger.frames_committed(sess.id):
            # Back to waiting with its committed frames kept: once complete again, only the new
            # pages are appended (see _stream).
            self.ledger.update_file(row.id, state="waiting")
            log.warning("tiff changed after it was appended; its new pages will be appended",
                        frames_appended=row.frames)
            self.ledger.add_event(sess.id, "watch", f"{name} grew after it was appended")
            return
        self._problem(sess, "changed_after_commit",
                      f"{name}: changed after it was appended ({row.size} -> {obs.size} bytes) and "
                      "later files are already in the NWB file; the change is not in it", row.path, log)

    def _session_row(self, key: Key, site: str, rel: str) -> SessionRow | None:
        sess = self.ledger.session(*key)
        if sess is not None:
            return sess
        subject, session = key
        folder = str(PurePosixPath(rel).parent)
        if not all(is_safe_name(v) for v in (subject, session, site or "x")):
            self._rig_problem("unsafe_name", folder, f"{printable(folder)}: subject {subject!r}, "
                              f"site {site!r} or session {session!r} is not a safe name ('..', "
                              "separators, leading or trailing spaces, control characters such "
                              "as newlines or ESC); files ignored")
            return None
        nwb_path = self.cfg.output.folder / self.cfg.output.nwb_name.format(
            subject=subject, session=session, site=site)
        if nwb_path.resolve().parent != self.cfg.output.folder.resolve():
            self._rig_problem("unsafe_name", folder,
                              f"{folder}: its NWB file {nwb_path.name} would leave the output "
                              "folder; files ignored")
            return None
        owner = self._output_owner(subject, session, nwb_path)
        if owner is not None:
            self._rig_problem("output_taken", folder, f"{folder}: {owner}; its files are "
                              "ignored (nothing is overwritten). Change output.nwb_name (or the "
                              "folder names) so that sessions cannot share a file")
            return None
        self.ledger.clear_problem(None, "output_taken", folder)
        sess = self.ledger.ensure_session(subject, session, site, str(nwb_path))
        self.ledger.add_event(sess.id, "watch", "session seen")
        self.log.info("new session", stage="watch", subject=subject, session=session)
        return sess

    def _output_owner(self, subject: str, session: str, nwb_path: Path) -> str | None:
        """The other session that already owns one of this session's output files (NWB file,
        summary picture, preview), as a sentence; None when they are all free. Compared without
        case: on Windows and macOS shares, names that differ in case are one file."""
        mine = {str(nwb_path).casefold(): "NWB file",
                str(summary_png(self.cfg, subject, session)).casefold(): "summary picture",
                str(preview_png(self.cfg, subject, session)).casefold(): "preview"}
        for other in self.ledger.sessions():
            theirs = (other.nwb_path, summary_png(self.cfg, other.subject, other.session),
                      preview_png(self.cfg, other.subject, other.session))
            for path in theirs:
                what = mine.get(str(path).casefold())
                if what is not None:
                    return (f"its {what} {Path(path).name} is already that of session "
                            f"{printable(other.subject)}/{printable(other.session)}")
        return None

    def _facts(self, sess: SessionRow) -> SessionFacts:
        key = (sess.subject, sess.session)
        rows = {r.path: r for r in self.ledger.files(sess.id)}
        now_m, now_w = time.monotonic(), time.time()
        facts: list[FileFacts] = []
        newest = 0
        for rel, row in rows.items():
            obs = self.tiffs.get(rel)
            if self.convert_scope is not None and obs is None and row.state not in (
                    "committed", "appending"):
                continue  # convert looks only at its folder
            present = obs is not None
            parsed: Parsed = "unknown"
            if obs is not None:
                newest = max(newest, obs.mtime_ns)
                cached = self.inspected.get(rel)
                if cached is not None and cached[:2] == (obs.size, obs.mtime_ns):
                    parsed = "bad" if isinstance(cached[2], TiffProblem) else "ok"
            facts.append(FileFacts(
                path=rel,
                position=obs.position if obs else run_position(rel),
                present=present,
                quiet_for=(now_m - obs.changed_at) if obs else 0.0,
                closed=obs.closed if obs else False,
                parsed=parsed,
                state=row.state,
                holds_frames=row.first_frame is not None and row.frames_committed > 0,
            ))
        lab = self.lab.get(key, LabFiles())
        need = [k for k, pat in (("scan", self.cfg.rig.scan_file),
                                  ("trial", self.cfg.rig.trial_file)) if pat]
        return SessionFacts(
            files=facts,
            marker=bool(lab.marker),
            lab_files_present=all(getattr(lab, k) for k in need),
            idle_for=(now_w - newest / 1e9) if newest else 0.0,
            finished=sess.state == "finished",
        )

    def _missing_lab_files(self, sess: SessionRow) -> list[str]:
        """The configured lab files (scan, trial) this session does not have: their patterns."""
        lab = self.lab.get((sess.subject, sess.session), LabFiles())
        return [pat for kind, pat in (("scan", self.cfg.rig.scan_file),
                                      ("trial", self.cfg.rig.trial_file))
                if pat and not getattr(lab, kind)]

    def _lab_files_hint(self, sess: SessionRow, facts: SessionFacts) -> None:
        """A session whose TIFFs stopped coming waits for its lab files (require_lab_files):
        say so, or it would look like it hangs in 'acquiring'."""
        waiting = (self.rules.require_lab_files and not facts.lab_files_present
                   and not facts.finished and not facts.marker and not self.rules.convert
                   and self.root_ok  # an unreachable share hides them: unknown, not missing
                   and facts.idle_for >= self.rules.session_idle_seconds + LAB_FILES_GRACE_SECONDS)
        if waiting:
            missing = " and ".join(self._missing_lab_files(sess))
            self._warning(sess, "waiting_for_lab_files", f"no new TIFF for {facts.idle_for:.0f} s, "
                          f"but the lab files ({missing}) are missing; the session finishes once "
                          "they arrive (completion.require_lab_files = true)", "",
                          self.log.bind(session=sess.session))
        elif facts.finished or facts.lab_files_present:
            self.ledger.clear_problem(sess.id, "waiting_for_lab_files")

    def _step_session(self, key: Key) -> int:
        sess = self.ledger.session(*key)
        if sess is None or sess.quarantined:
            return 0
        if sess.state == "paused" and self._free_bytes() < self._reserve():
            return 0  # still no room at all; _append resumes the session once its file fits
        actions: list[Action] = []
        with self.guard(sess.id, "planning", breadcrumb=False) as g:
            facts = self._facts(sess)
            actions = plan_session(facts, self.rules)
            self._lab_files_hint(sess, facts)
        if g.failed:
            return 1
        changed = 0
        for action in actions:
            if self.stop_event.is_set():
                break
            phase = _PHASES.get(action.kind, "watching")
            with self.guard(sess.id, phase, breadcrumb=phase in _RISKY) as g:
                changed += self._act(sess, action)
            if g.failed:
                return changed + 1
            sess = self.ledger.session_by_id(sess.id)
        if changed or any(a.kind == "wait" for a in actions):
            # Something moved, or a file waits on time (settle, gap): plan again next step,
            # also for a finished session that got a new file.
            self.dirty.add(key)
        return changed

    def _act(self, sess: SessionRow, action: Action) -> int:
        log = self.log.bind(subject=sess.subject, session=sess.session)
        row = self.ledger.file(action.path) if action.path else None
        match action.kind:
            case "wait":
                return 0
            case "inspect":
                obs = self.tiffs[action.path]
                result: TiffInfo | TiffProblem
                try:
                    info = self.inspect_file(action.path, obs.file_id)
                    self._acquisition(action.path, info)
                    result = info
                except TiffProblem as exc:
                    result = exc
                self.inspected[action.path] = (obs.size, obs.mtime_ns, result)
                return 1
            case "fail":
                assert row is not None
                problem = self.inspected[action.path][2]
                assert isinstance(problem, TiffProblem)
                self._fail_file(sess, row, problem, log)
                return 1
            case "vanished":
                assert row is not None
                self.ledger.update_file(row.id, state="vanished", error=action.reason)
                self._problem(sess, "vanished", f"{PurePosixPath(row.path).name}: {action.reason}",
                              row.path, log)
                return 1
            case "out_of_order":
                assert row is not None
                self.ledger.update_file(row.id, state="out_of_order", error=action.reason)
                self._problem(sess, "out_of_order",
                              f"{PurePosixPath(row.path).name}: {action.reason}", row.path, log)
                return 1
            case "append":
                assert row is not None
                return self._append(sess, row, log)
            case "finalize":
                return self._finalize(sess, log)
        return 0  # pragma: no cover

    # --- appending ---------------------------------------------------------------------------

    def _append(self, sess: SessionRow, row: FileRow, log: Any) -> int:
        info = self.inspected.get(row.path, (0, 0, None))[2]
        if row.state == "appending" and not isinstance(info, TiffInfo):
            # Resuming a partly appended file after a restart: inspect it first.
            obs = self.tiffs.get(row.path)
            try:
                info = self.inspect_file(row.path, obs.file_id if obs else None)
            except TiffProblem as exc:
                self._fail_file(sess, row, exc, log)
                return 1
        assert isinstance(info, TiffInfo)
        name = PurePosixPath(row.path).name
        log = log.bind(stage="append", file=row.path)
        if sess.site and self.tiffs[row.path].site != sess.site:
            self._fail_file(sess, row, TiffProblem(
                "wrong_site", f"{name}: in site {self.tiffs[row.path].site!r} but session "
                f"{sess.session!r} was started in site {sess.site!r}"), log)
            return 1
        if sess.frame_shape is not None and (
                sess.frame_shape != _shape_text(info.shape) or sess.dtype != info.dtype):
            self._fail_file(sess, row, TiffProblem(
                "shape_mismatch", f"{name}: frames are {info.shape[0]}x{info.shape[1]} "
                f"{info.dtype}, the session's series is {sess.frame_shape} {sess.dtype}"), log)
            return 1
        try:
            acq = self._acquisition(row.path, info)
        except TiffProblem as exc:
            self._fail_file(sess, row, exc, log)
            return 1
        if sess.layout is not None and not PageLayout.from_json(sess.layout).same_acquisition(
                acq.layout):
            self._fail_file(sess, row, TiffProblem(
                "layout_mismatch", f"{name}: holds {acq.layout.describe()} but the session's "
                f"series were made for {PageLayout.from_json(sess.layout).describe()}"), log)
            return 1
        for text in acq.warnings:
            # once per session, named after the first file that says so (a run of 100 files
            # repeats its header 100 times)
            code = "header_mismatch:" + hashlib.sha1(text.encode()).hexdigest()[:10]
            if not any(p.code == code for p in self.ledger.problems(sess.id)):
                self._warning(sess, code, f"{name}: {text}", "", log)
        if sess.state == "finished":
            return self._reopen(sess, log)
        done = row.frames_committed if row.first_frame is not None else 0
        if done > info.pages:
            self.ledger.update_file(row.id, state="committed")
            self._problem(sess, "changed_after_commit", f"{name}: now has {info.pages} pages but "
                          f"{done} were appended already; the NWB file keeps those", row.path, log)
            return 1
        frame_bytes = info.shape[0] * info.shape[1] * np.dtype(info.dtype).itemsize
        if not self._space_ok(sess, frame_bytes * (info.pages - done), log):
            return 0
        committed_before = self.ledger.frames_committed(sess.id)
        try:
            if not sess.nwb_created:
                created = self._create(sess, row, info, acq, log)
                if created is None:
                    return 0  # metadata problem, reported: the file waits until it is fixed
                sess = created
            writer = self._writer(sess)
        except NwbBusy as exc:
            self._problem(sess, "nwb_locked", str(exc), "", log)
            return 0
        except NwbRebuilt:
            return 1  # the ledger was reset: plan the session again from its first file
        except OSError as exc:
            return self._output_error(sess, exc, log)
        self.ledger.clear_problem(sess.id, "nwb_locked")
        self.ledger.clear_problem(sess.id, "output_error")
        if self.ledger.frames_committed(sess.id) != committed_before:
            return 1  # opening the file repaired it (rolled back): plan again from the ledger
        try:
            self._stream(sess, row, info, acq, writer, log)
        except TiffProblem as exc:
            self._drop_writer(sess.id)
            self._fail_file(sess, row, exc, log)
            return 1
        except Stopped:
            return 1
        except (OSError, RuntimeError) as exc:
            # h5py reports failed writes and flushes as OSError or RuntimeError (e.g. ENOSPC
            # inside H5Fflush). The ledger still says what is committed; the handle is broken.
            self._write_failed(sess.id, exc)
        return 1

    def inspect_file(self, rel: str, expect: FileId | None) -> TiffInfo:
        """Inspect the version of the file that was classified (rigfs: no links, no FIFOs)."""
        return inspect_tiff(self.root / rel, root=self.root, expect=expect,
                            max_frame_bytes=self.budget // 4)

    @property
    def budget(self) -> int:
        """append.memory_mb in bytes: what one file's append may hold in memory."""
        return self.cfg.append.memory_mb * 2**20

    def _acquisition(self, rel: str, info: TiffInfo) -> FileAcquisition:
        """The file's layout, per-page times and header warnings (cached per size and mtime)."""
        cached = self.acquired.get(rel)
        if cached is not None and cached[:2] == (info.size, info.mtime_ns):
            return cached[2]
        acq = read_acquisition(self.root / rel, self.cfg, root=self.root, expect=info.file_id)
        self.acquired[rel] = (info.size, info.mtime_ns, acq)
        return acq

    def _stream(self, sess: SessionRow, row: FileRow, info: TiffInfo, acq: FileAcquisition,
                writer: SessionAppender, log: Any) -> None:
        committed = self.ledger.frames_committed(sess.id)
        name = PurePosixPath(row.path).name
        # Frames of this file already committed (a restart mid-file, or a file that grew after
        # it was appended); only the last file of a series can be continued.
        done = row.frames_committed if row.first_frame is not None else 0
        first = row.first_frame if row.first_frame is not None else committed
        if done and first + done != committed:
            raise TiffProblem("changed_after_commit", f"{name}: {done} of its pages are in the "
                              "NWB file but later frames follow them; the rest cannot be added")
        if done and row.state != "appending" and not self._same_prefix(writer, row.path, info,
                                                                        committed, done):
            raise TiffProblem("changed_after_commit", f"{name}: its first {done} pages differ "
                              "from the frames appended before; not appended")
        t0 = time.monotonic()
        try:
            self._copy_pages(sess, row, info, acq, writer, first, done, log)
        except TiffProblem:
            self._undo_pass(sess, row, writer, committed)  # nothing of a half-read file stays
            raise
        # The file must not have changed while we read it: a writer that paused longer than
        # the settle period would otherwise be appended half-written.
        try:
            st = lstat_rig(self.root, row.path)
            unchanged = (stat.S_ISREG(st.st_mode) and info.file_id is not None
                         and FileId.of(st) == info.file_id)
        except (OSError, UnsafeRigPath):
            unchanged = False  # deleted, moved away or replaced while we read it
        if not unchanged:
            self._undo_pass(sess, row, writer, committed)
            self.inspected.pop(row.path, None)
            obs = self.tiffs.get(row.path)
            if obs is not None:
                obs.changed_at = time.monotonic()
            log.warning("file changed while it was being appended; rolled back, will retry "
                        "when it is complete (consider a longer completion.settle_seconds)")
            return
        writer.sync()
        self.ledger.commit_frames(
            sess.id, row.id, file_frames_committed=info.pages, file_state="committed",
            series_frames=first + info.pages, size=info.size, mtime_ns=info.mtime_ns,
            frames=info.pages, first_frame=first)
        self._clear_file_problems(sess.id, row.path)
        dt = time.monotonic() - t0
        mb = (info.pages - done) * info.shape[0] * info.shape[1] * np.dtype(info.dtype).itemsize / 1e6
        if sess.state != "acquiring":
            self.ledger.update_session(sess.id, state="acquiring")
        log.info("tiff appended", frames=info.pages - done, first_frame=first,
                 series_frames=first + info.pages, seconds=round(dt, 3),
                 mb_per_s=round(mb / dt, 1) if dt > 0 else None)
        self.ledger.add_event(sess.id, "append", f"{row.path}: {info.pages - done} frames "
                              f"appended at frame {first}")

    def _copy_pages(self, sess: SessionRow, row: FileRow, info: TiffInfo, acq: FileAcquisition,
                    writer: SessionAppender, first: int, done: int, log: Any) -> None:
        """Stream pages ``done``.. of the file into the series at stream page ``first + done``,
        flushing every batch and committing every ``commit_every_frames`` (and when asked to
        stop). Page times: the file's own per-frame timestamps (ScanImage), else nominal."""
        layout = writer.layout
        # Batches sized in bytes: a small compressed file can declare huge frames.
        batch = batch_frames(info.frame_bytes, self.budget, self.cfg.append.batch_frames)
        every = self.cfg.append.commit_every_frames
        since_commit = 0
        pos = done
        for frames in read_batches(self.root / row.path, done, info.pages, batch, root=self.root,
                                   expect=info.file_id):
            n = frames.shape[0]
            pages = np.arange(first + pos, first + pos + n, dtype=np.int64)
            times = layout.scan_frame(pages) / layout.frame_rate
            if acq.page_times is not None:
                measured = acq.page_times[pos:pos + n]
                times = np.where(np.isfinite(measured), measured, times)
            writer.write(first + pos, frames, times)
            writer.flush()
            pos += n
            since_commit += n
            heartbeat()  # a 4 GB TIFF is one long step of the loop; each batch is progress
            if self.on_frames:
                self.on_frames(n)
            del frames  # before read_batches reads the next batch (one batch in memory)
            stopping = self.stop_event.is_set()
            if (since_commit >= every or stopping) and pos < info.pages:
                writer.sync()
                self.ledger.commit_frames(
                    sess.id, row.id, file_frames_committed=pos, file_state="appending",
                    series_frames=first + pos, size=info.size, mtime_ns=info.mtime_ns,
                    frames=info.pages, first_frame=first)
                since_commit = 0
                if stopping:
                    log.info("stopping: partial file committed", frames_committed=pos,
                             frames_in_file=info.pages)
                    raise Stopped()

    def _undo_pass(self, sess: SessionRow, row: FileRow, writer: SessionAppender,
                   committed: int) -> None:
        """Forget everything this pass over a file added, commit points included, and let the
        file wait for its completion signals again."""
        self.ledger.roll_back(sess.id, committed)
        self.ledger.update_file(row.id, state="waiting")
        writer.trim(committed)
        writer.sync()

    def _same_prefix(self, writer: SessionAppender, rel: str, info: TiffInfo, committed: int,
                     done: int) -> bool:
        """Does the TIFF still hold, as its last appended data page, the frame we stored?"""
        for back in range(1, min(done, writer.layout.pages_per_cycle) + 1):
            stored = writer.read_page(committed - back)
            if stored is not None:  # not a flyback page
                page = next(read_batches(self.root / rel, done - back, done - back + 1, 1,
                                         root=self.root, expect=info.file_id))
                return bool(np.array_equal(page[0], stored))
        return True

    def _create(self, sess: SessionRow, row: FileRow, info: TiffInfo, acq: FileAcquisition,
                log: Any) -> SessionRow | None:
        """Create the session's NWB file from its first file: metadata from config.toml and the
        sidecars, overridden by what the ScanImage header says. None when the metadata cannot be
        read (reported; the files wait until it is fixed)."""
        folder = (self.root / row.path).parent
        try:
            meta = load_metadata(self.cfg, folder)
        except MetadataProblem as exc:
            self._problem(sess, "metadata", f"{exc.message}; the NWB file is created once it is "
                          "fixed (the TIFFs wait, nothing is lost)", exc.file, log)
            return None
        for p in self.ledger.problems(sess.id):
            if p.code == "metadata":
                self.ledger.clear_problem(sess.id, "metadata", p.file)
        start, source = self._start_time(row, info, acq)
        # The identifier is recorded before the file is made: a file found under the name later
        # is this session's own (a crash between the rename and the ledger's commit) only when
        # it carries this identifier. Any other file there is never replaced.
        ident = sess.identifier or new_identifier()
        if sess.identifier is None:
            self.ledger.update_session(sess.id, identifier=ident)
        path = Path(sess.nwb_path)
        theirs = existing_identifier(path)
        if theirs is not None and theirs != ident:
            self._problem(sess, "output_exists", f"{path.name} already exists in "
                          f"{path.parent} and was not written for this session (identifier "
                          f"{theirs}); rig2nwb never replaces a file it does not own: move it "
                          "away (or change output.nwb_name) and the session is converted (the "
                          "TIFFs wait, nothing is lost)", "", log)
            return None
        self.ledger.clear_problem(sess.id, "output_exists")
        si = acq.scanimage
        spec = NewFile(path, ident, sess.subject, sess.session, start, source,
                       info.shape, info.dtype, acq.layout, meta, si,
                       PurePosixPath(row.path).name)
        try:
            create_nwb(self.cfg, spec, replace_own=theirs == ident)
        except NwbExists as exc:
            self._problem(sess, "output_exists", f"{exc}; the TIFFs wait, nothing is lost", "",
                          log)
            return None
        self.ledger.update_session(
            sess.id, nwb_created=1, identifier=ident, start_time=start.isoformat(),
            start_source=source, frame_shape=_shape_text(info.shape), dtype=info.dtype,
            state="acquiring", site=self.tiffs[row.path].site, layout=acq.layout.to_json())
        used = f"; metadata from config.toml + {', '.join(meta.sources)}" if meta.sources else ""
        self.ledger.add_event(sess.id, "create", f"NWB file created: {sess.nwb_path} "
                              f"({len(acq.layout.series)} series: {acq.layout.describe()}){used}")
        log.info("nwb created", stage="create", nwb=sess.nwb_path, start_time=start.isoformat(),
                 start_source=source, series=[s.name for s in acq.layout.series],
                 layout=acq.layout.describe(), sidecars=list(meta.sources))
        return self.ledger.session_by_id(sess.id)

    def _start_time(self, row: FileRow, info: TiffInfo,
                    acq: FileAcquisition) -> tuple[datetime, str]:
        """Session start from the data, never 'now': ScanImage's acquisition start (epoch, or
        SI3 triggerTimeString), else the TIFF's DateTime tag, else its mtime minus the duration
        of its frames at the nominal rate. Rig clocks are local time: config's timezone."""
        tz = self.cfg.tz
        name = PurePosixPath(row.path).name
        si = acq.scanimage
        if si is not None and si.acquisition_start is not None:
            key = "triggerTimeString" if si.version.startswith("3") else "epoch"
            return si.acquisition_start.replace(tzinfo=tz), f"the ScanImage {key} of {name}"
        if info.datetime_tag is not None:
            return info.datetime_tag.replace(tzinfo=tz), f"the DateTime tag of {name}"
        end = datetime.fromtimestamp(info.mtime_ns / 1e9, tz=tz)
        frames = info.pages / acq.layout.n_channels
        start = end - timedelta(seconds=frames / acq.layout.frame_rate)
        return start.replace(microsecond=0), (
            f"the modification time of {name} minus {frames:g} frames at "
            f"{acq.layout.frame_rate:g} Hz")

    def _writer(self, sess: SessionRow) -> SessionAppender:
        """The open appender of a session, opening and repairing the file on first use."""
        w = self.writers.get(sess.id)
        if w is not None:
            w.last_used = time.monotonic()
            return w.appender
        path = Path(sess.nwb_path)
        log = self.log.bind(subject=sess.subject, session=sess.session, stage="recover")
        if sess.layout is None:  # a ledger from before layouts: one plain series
            self.ledger.update_session(sess.id, layout=PageLayout(
                frame_rate=self.cfg.imaging.frame_rate).to_json())
            sess = self.ledger.session_by_id(sess.id)
        assert sess.layout is not None
        damaged = [p for p in self.ledger.problems(sess.id) if p.code == DAMAGED_CODE]
        if damaged and path.exists():
            # An earlier worker could not read its own committed data back (a damaged chunk):
            # repairing from the ledger would fail the same way, so rebuild from the TIFFs.
            self.ledger.clear_problem(sess.id, DAMAGED_CODE)
            return self._rebuild(sess, damaged[0].message, log)
        try:
            appender = SessionAppender(path, PageLayout.from_json(sess.layout),
                                       resolve_threads(self.cfg.append.compress_threads),
                                       standard_args(self.cfg))
        except FileNotFoundError:
            return self._rebuild(sess, "the NWB file is missing", log)
        except NwbDamaged as exc:
            return self._rebuild(sess, str(exc), log)
        except OSError as exc:
            if is_lock_error(exc):
                raise NwbBusy(f"{path.name}: locked by another program; will retry") from exc
            raise  # permissions and the like: reported as an output problem, retried
        try:
            self._repair(sess, appender, log)
        except NwbDamaged as exc:  # a read failed: the handle is sound, only the data is not
            appender.close()
            return self._rebuild(sess, str(exc), log)
        except (OSError, RuntimeError) as exc:
            self.writers[sess.id] = _Writer(appender)
            self._write_failed(sess.id, exc)
        self.writers[sess.id] = _Writer(appender)
        return appender

    def _repair(self, sess: SessionRow, appender: SessionAppender, log: Any) -> None:
        """Make the file agree with the ledger: trim what was never committed, check the tail.

        The ledger counts pages of the session's stream; each series must hold exactly its
        frames among them (a finished session: among the whole cycles only)."""
        committed = self.ledger.frames_committed(sess.id)
        if sess.state == "finished":
            committed = appender.layout.complete(committed)
        else:
            # Killed in the middle of finalizing: series already in starting_time + rate form
            # get their timestamps back, so appending (and finalizing again) can go on.
            appender.restore_timestamps()
        for series in range(len(appender.layout.series)):
            try:  # 8 bytes a frame: every stored timestamp chunk must decompress
                appender.timestamps(series)
            except (OSError, RuntimeError) as exc:
                if not _is_damaged_read(exc):
                    raise
                raise NwbDamaged(f"{Path(sess.nwb_path).name}: stored timestamps cannot be read "
                                 f"back ({_first_line(exc)})") from exc
        held = appender.pages_held()
        if held < committed:
            # The disk lost frames the ledger counted (should not happen with fsync): take the
            # file's word, roll the ledger back and append those pages again.
            log.warning("NWB file shorter than the ledger; re-appending from the TIFFs",
                        ledger_pages=committed, pages_in_file=held)
            committed = held
            self.ledger.roll_back(sess.id, committed)
        lengths = appender.lengths()
        expected = appender.expected(committed)
        if any(n != (e, e) for n, e in zip(lengths, expected, strict=True)):
            appender.trim(committed)
            appender.sync()
            log.info("trimmed uncommitted tail", ledger_pages=committed,
                     series_frames=[n[0] for n in lengths], kept=expected)
            self.ledger.add_event(sess.id, "recover", f"trimmed NWB series from {lengths} "
                                  f"(frames, timestamps) to the {expected} frames of the "
                                  f"{committed} committed pages")
        self._check_tail(sess, appender, committed, log)

    def _check_tail(self, sess: SessionRow, appender: SessionAppender, committed: int,
                    log: Any) -> int:
        """Compare the last committed pages with their source TIFF; roll back on mismatch."""
        if committed == 0:
            return 0
        rows = [r for r in self.ledger.files(sess.id)
                if r.first_frame is not None and r.frames_committed > 0]
        if not rows:
            return committed
        last = max(rows, key=lambda r: r.first_frame or 0)
        assert last.first_frame is not None
        try:
            st: os.stat_result | None = lstat_rig(self.root, last.path)
        except (OSError, UnsafeRigPath):
            st = None
        if st is None or not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (
                last.size, last.mtime_ns):
            # The TIFF is gone or no longer what was appended: it cannot vouch for the frames,
            # and the NWB file keeps them (the change itself is reported by the watcher).
            log.info("tail not checked: its TIFF changed or is gone since it was appended",
                     file=last.path)
            return committed
        end_in_file = min(last.frames_committed, committed - last.first_frame)
        k = min(TAIL_CHECK_FRAMES, end_in_file)
        if k <= 0:
            return committed
        start_in_file = end_in_file - k
        same, why = True, "differs from its TIFF"
        try:  # one page at a time: memory stays at one frame whatever the frame size
            pages = read_batches(self.root / last.path, start_in_file, end_in_file, 1,
                                 root=self.root, expect=FileId.of(st))
            for i, src in enumerate(pages):
                try:
                    stored = appender.read_page(last.first_frame + start_in_file + i)
                except (OSError, RuntimeError) as exc:
                    # A torn or zeroed compressed chunk (power loss before the OS wrote it
                    # out): a read failure, not a write failure; the TIFF still has the frames.
                    same, why = False, f"cannot be read ({_first_line(exc)})"
                    break
                if stored is not None and not np.array_equal(stored, src[0]):
                    same = False
                    break
        except TiffProblem as exc:
            log.warning("cannot check the NWB tail against its TIFF", file=last.path,
                        error=str(exc))
            return committed
        if same:
            return committed
        log.warning(f"NWB tail {why}; re-appending that file", file=last.path)
        self.ledger.roll_back(sess.id, last.first_frame)
        appender.trim(last.first_frame)
        appender.sync()
        return last.first_frame

    def _rebuild(self, sess: SessionRow, why: str, log: Any) -> SessionAppender:
        path = Path(sess.nwb_path)
        if path.exists():
            aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
            os.replace(path, aside)
            why += f" (kept as {aside.name})"
        log.error("NWB file unusable; rebuilding it from the TIFFs", reason=why)
        self._problem(sess, "nwb_rebuilt", f"{path.name}: {why}; rebuilt from the TIFFs", "", log)
        self.ledger.reset_session(sess.id)  # every file with frames goes back to waiting
        raise NwbRebuilt(why)

    def _drop_writer(self, session_id: int) -> None:
        w = self.writers.pop(session_id, None)
        if w is None:
            return
        try:
            w.appender.sync()
            w.appender.close()
        except (OSError, RuntimeError) as exc:
            self.writers[session_id] = w
            self._write_failed(session_id, exc)

    def _write_failed(self, session_id: int, exc: OSError | RuntimeError) -> NoReturn:
        """HDF5 failed a write: record why, then end this process without touching the file.

        After such a failure HDF5's state of the file is broken (a retried flush corrupts the
        chunk index; closing it segfaults), so the handle is parked where nothing closes or
        collects it and WriterPoisoned ends the worker; the supervisor starts a new one, which
        repairs the file from the ledger like after a crash."""
        w = self.writers.pop(session_id, None)
        if w is not None:
            _POISONED.append(w.appender)
        sess = self.ledger.session_by_id(session_id)
        log = self.log.bind(subject=sess.subject, session=sess.session, stage="append")
        if _is_disk_full(exc):
            # A full disk is not this session's fault: the restart is no death of the session
            # (it pauses until space returns).
            clear_inflight(self.ledger)
        if _is_damaged_read(exc):  # not the disk: the file's own data cannot be read back
            self.ledger.report_problem(sess.id, DAMAGED_CODE, f"{Path(sess.nwb_path).name}: "
                                       f"stored data cannot be read back ({_first_line(exc)})")
        else:
            self._output_error(sess, exc, log)
        log.error("writing the NWB file failed; restarting the worker to recover it safely",
                  error=_first_line(exc))
        raise WriterPoisoned(_first_line(exc)) from exc

    def _close_idle_writers(self) -> None:
        now = time.monotonic()
        for sid, w in list(self.writers.items()):
            if now - w.last_used > WRITER_IDLE_CLOSE_SECONDS:
                self._drop_writer(sid)

    def close(self) -> None:
        for sid in list(self.writers):
            self._drop_writer(sid)
        if self.check is not None:
            self.check[1].cancel()  # its session is checked again after the next start
            self.check = None

    # --- session end, problems ---------------------------------------------------------------

    def _finalize(self, sess: SessionRow, log: Any) -> int:
        """Acquisition is complete: drop a final incomplete volume, write the final timestamps
        (measured onsets, or rate + starting_time where regular) and the trials, mark the session
        finished, and queue the file for validation.

        Every step is repeatable, so a crash anywhere in here just means finalizing again."""
        log = log.bind(stage="finalize")
        try:
            writer = self._writer(sess)
        except NwbRebuilt:
            return 1  # re-planned from scratch; finalize comes again
        except (NwbBusy, OSError) as exc:  # locked by a reader, permissions: try again later
            self._problem(sess, "nwb_locked" if isinstance(exc, NwbBusy) else "output_error",
                          f"{Path(sess.nwb_path).name}: cannot be opened to finalize it ({exc}); "
                          "will retry", "", log)
            return 0
        self.ledger.clear_problem(sess.id, "nwb_locked")
        self.ledger.clear_problem(sess.id, "output_error")
        layout = writer.layout
        pages = self.ledger.frames_committed(sess.id)
        kept = layout.complete(pages)
        try:
            writer.restore_timestamps()
            if kept < pages:
                writer.trim(kept)
                self._warning(sess, "incomplete_cycle", f"the acquisition ends mid volume: the "
                              f"last {pages - kept} page(s) of an incomplete cycle "
                              f"({layout.pages_per_cycle} pages per volume) were dropped", "", log)
            sources = self._final_timestamps(sess, writer, kept, log)
            writer.drop_group("intervals/trials")  # from an earlier finalize: written anew
            writer.sync()
        except (OSError, RuntimeError) as exc:
            self._write_failed(sess.id, exc)
        self._drop_writer(sess.id)
        trials = self._write_trials(sess, writer_stamps=sources[1], log=log)
        if trials is None:
            return 0  # the file could not be written now: finalize again later
        frames = [layout.count(s, kept) for s in range(len(layout.series))]
        files = self.ledger.files(sess.id)
        missing = self._missing_lab_files(sess)
        if missing and self.cfg.completion.require_lab_files:
            self._warning(sess, "lab_files_missing", f"finished without its lab file(s) "
                          f"{' and '.join(missing)} (completion.require_lab_files asks for them): "
                          "timestamps come from the TIFFs alone and no trials were written", "",
                          log)
        else:
            self.ledger.clear_problem(sess.id, "lab_files_missing")
        self.ledger.clear_problem(sess.id, "waiting_for_lab_files")
        self.ledger.update_session(sess.id, state="finished", finished_at=time.time(),
                                   timestamps_source=sources[0], validation=None, trials=trials,
                                   duration_s=round(sources[1][1] - sources[1][0], 6))
        per_series = ", ".join(f"{s.name} {n}" for s, n in zip(layout.series, frames, strict=True))
        self.ledger.add_event(sess.id, "finalize", f"session finished: {kept} pages -> "
                              f"{per_series} frames; {trials} trials; timestamps: {sources[0]}")
        log.info("session finished", frames=sum(frames), series=len(frames),
                 frames_per_series=frames, trials=trials,
                 files=sum(r.state == "committed" for r in files),
                 failed_files=sum(r.state != "committed" for r in files),
                 timestamps=sources[0], nwb=sess.nwb_path)
        return 1

    def _final_timestamps(self, sess: SessionRow, writer: SessionAppender, kept: int,
                          log: Any) -> tuple[str, tuple[float, float]]:
        """Apply the scan file's onsets when usable, then store each series' times as rate +
        starting_time where they are regular. Returns (where the times come from, (first, last
        frame time)) for status and the trial checks."""
        layout = writer.layout
        acquired = self.ledger.frames_committed(sess.id) // layout.n_channels
        onsets = self._scan_onsets(sess, kept // layout.n_channels, acquired, log)
        if onsets is not None:
            times = onsets[0]
            for s in range(len(layout.series)):
                n = layout.count(s, kept)
                pages = np.array([layout.page_of(s, k) for k in range(n)], dtype=np.int64)
                writer.set_timestamps(s, times[layout.scan_frame(pages)],
                                      f"timestamps: {onsets[1]}")
            source = onsets[1]
        else:
            si = sess.layout is not None and "ScanImage" in PageLayout.from_json(sess.layout).source
            source = ("ScanImage per-frame timestamps (frameTimestamps_sec) where present, else "
                      f"nominal {layout.frame_rate:.6g} Hz scan frames" if si else
                      f"nominal {layout.frame_rate:.6g} Hz (no measured frame times)")
        first, last = np.inf, -np.inf
        for s in range(len(layout.series)):
            t = writer.timestamps(s)
            if len(t):
                first, last = min(first, float(t[0])), max(last, float(t[-1]))
            regular = _regular_rate(t)
            if len(t) >= 2 and t[-1] > t[0]:
                # The plane's imaging_rate is the series' own rate: the stored one when regular,
                # else the mean of the frame times (a slow stack's header rate ignores the
                # moves; a measured clock differs from the nominal one in the 4th digit).
                measured = regular if regular is not None else (len(t) - 1) / float(t[-1] - t[0])
                writer.set_imaging_rate(s, measured)
                if abs(measured / layout.series_rate - 1) > 0.05:
                    log.info("imaging rate from frame times", series=layout.series[s].name,
                             nominal=round(layout.series_rate, 6), measured=round(measured, 6))
            if regular is not None:
                writer.use_rate(s, float(t[0]), regular, f"timestamps: {source}; regular, so "
                                f"stored as starting_time + rate ({regular:.9g} Hz)")
        if not np.isfinite(first):
            first = last = 0.0
        return source, (first, last + 1.0 / layout.series_rate)

    def _scan_onsets(self, sess: SessionRow, scan_frames: int, acquired: int,
                     log: Any) -> tuple[np.ndarray, str] | None:
        """The lab scan file's onsets (s) for the ``scan_frames`` kept frames, or None when
        there is no usable file (missing, malformed, or a count mismatch the policy refuses;
        each reported). One onset per acquired frame (``acquired``, incl. those of a dropped
        incomplete volume) or per kept frame both match. Frames are never shifted."""
        rel = self.lab.get((sess.subject, sess.session), LabFiles()).scan
        if not rel:
            return None
        name = PurePosixPath(rel).name
        try:
            onsets = read_scan_file(self.root / rel, self.cfg.scan, root=self.root).seconds
        except LabFileProblem as exc:
            self._problem(sess, "scan_file", f"{exc}; timestamps stay as acquired", rel, log)
            return None
        self.ledger.clear_problem(sess.id, "scan_file", rel)
        if len(onsets) == acquired:
            onsets = onsets[:scan_frames]  # the dropped incomplete volume's onsets go with it
        if len(onsets) != scan_frames:
            mismatch = f"{name}: {len(onsets)} frame onsets for {acquired} frames"
            if len(onsets) > acquired and self.cfg.scan.on_mismatch == "drop_extra_onsets":
                self._problem(sess, "scan_mismatch", f"{mismatch}; the last "
                              f"{len(onsets) - scan_frames} onsets were dropped "
                              "(scan.on_mismatch = drop_extra_onsets)", rel, log)
                onsets = onsets[:scan_frames]
            else:
                self._problem(sess, "scan_mismatch", f"{mismatch}; timestamps stay as acquired "
                              "(see scan.on_mismatch)", rel, log)
                return None
        else:
            self.ledger.clear_problem(sess.id, "scan_mismatch", rel)
        log.info("timestamps from scan file", file=rel, frames=scan_frames,
                 first=round(float(onsets[0]), 6), last=round(float(onsets[-1]), 6))
        return onsets, f"measured frame onsets from {name}"

    def _write_trials(self, sess: SessionRow, writer_stamps: tuple[float, float],
                      log: Any) -> int | None:
        """Write the trials table from the lab's trial file; returns the number of trials (0
        when there is no usable file: reported), None when the NWB file could not be written."""
        rel = self.lab.get((sess.subject, sess.session), LabFiles()).trial
        if not rel:
            return 0
        try:
            table = read_trial_file(self.root / rel, self.cfg.trials, recording=writer_stamps,
                                    root=self.root)
        except LabFileProblem as exc:
            self._problem(sess, "trial_file", f"{exc}; no trials written (the frames are "
                          "untouched)", rel, log)
            return 0
        self.ledger.clear_problem(sess.id, "trial_file", rel)
        try:
            write_trials(Path(sess.nwb_path), table, self.cfg.trials, PurePosixPath(rel).name)
        except OSError as exc:
            self._problem(sess, "nwb_locked" if is_lock_error(exc) else "output_error",
                          f"{Path(sess.nwb_path).name}: cannot write the trials ({exc}); "
                          "will retry", "", log)
            return None
        log.info("trials written", file=rel, trials=len(table))
        return len(table)

    def _reopen(self, sess: SessionRow, log: Any) -> int:
        """A finished session got another file: undo what finalizing did that appending cannot
        live with (rate-form timestamps, the dropped incomplete cycle); finalize runs again.

        Attached suite2p results stay in the file as they are: they describe the frames they
        were computed from (their own timestamps say which), and nothing attached is ever lost
        to a late TIFF. A warning says they cover fewer frames than the session now has; results
        of a suite2p rerun replace them through the usual attach."""
        self._cancel_check(sess.id)  # the child holds the file open for reading
        try:
            writer = self._writer(sess)
        except NwbRebuilt:
            return 1
        except (NwbBusy, OSError) as exc:
            self._problem(sess, "nwb_locked" if isinstance(exc, NwbBusy) else "output_error",
                          f"{Path(sess.nwb_path).name}: cannot be reopened for a new file "
                          f"({exc}); will retry", "", log)
            self.dirty.add((sess.subject, sess.session))  # finished sessions are not polled
            return 0
        pages = self.ledger.frames_committed(sess.id)
        kept = writer.layout.complete(pages)
        try:
            writer.restore_timestamps()
            writer.sync()
        except (OSError, RuntimeError) as exc:
            self._write_failed(sess.id, exc)
        s2p = self.ledger.suite2p(sess.id)
        if s2p is not None and s2p.state in ("attached", "staged"):
            frames = [writer.layout.count(i, kept) for i in range(len(writer.layout.series))]
            self._warning(sess, "suite2p_partial", f"the attached suite2p results cover the "
                          f"first {max(frames)} frames; the session got new frames after they "
                          "were attached. They stay in the file; rerun suite2p on the whole "
                          "session to include the new frames (its results replace these)", "",
                          log)
        if kept < pages:
            self.ledger.roll_back(sess.id, kept)  # those pages are appended again, in order
        self.ledger.update_session(sess.id, state="acquiring", validation=None)
        self.ledger.clear_problem(sess.id, "incomplete_cycle")
        self.ledger.add_event(sess.id, "append", "new file after the session was finished: "
                              "reopened for appending")
        log.warning("finished session got a new file; reopened", stage="append")
        return 1

    def _fail_file(self, sess: SessionRow, row: FileRow, problem: TiffProblem, log: Any) -> None:
        obs = self.tiffs.get(row.path)
        self.ledger.update_file(row.id, state="failed", error=problem.message,
                                size=obs.size if obs else row.size,
                                mtime_ns=obs.mtime_ns if obs else row.mtime_ns)
        self._problem(sess, problem.code, problem.message, row.path, log)

    def _problem(self, sess: SessionRow, code: str, message: str, file: str, log: Any) -> None:
        if self.ledger.report_problem(sess.id, code, message, file):
            log.error("problem", stage="check", code=code, file=file, problem=message)
            self.ledger.add_event(sess.id, "problem", message)

    def _warning(self, sess: SessionRow, code: str, message: str, file: str, log: Any) -> None:
        """Something the data says that a person should know; nothing is held back."""
        if self.ledger.report_problem(sess.id, code, message, file, severity="warning"):
            log.warning("warning", stage="check", code=code, file=file, problem=message)
            self.ledger.add_event(sess.id, "warning", message)

    def _rig_problem(self, code: str, file: str, message: str) -> None:
        """A problem that belongs to no session: reported once, listed by `rig2nwb status`."""
        if self.ledger.report_problem(None, code, message, file):
            self.log.error("problem", stage="watch", code=code, file=file, problem=message)
            self.ledger.add_event(None, "problem", message)

    def _clear_file_problems(self, session_id: int, rel: str) -> None:
        for p in self.ledger.problems(session_id):
            if p.file == rel and p.severity != "warning":  # warnings stay: facts about the data
                self.ledger.clear_problem(session_id, p.code, rel)

    def retry_transient(self) -> None:
        """Give files that failed for a passing reason (permissions, I/O) another chance."""
        for p in self.ledger.problems():
            if p.code not in TRANSIENT_CODES or p.file not in self.tiffs:
                continue
            r = self.ledger.file(p.file)
            if r is not None and r.state == "failed":
                self.ledger.update_file(r.id, state="waiting")
                self.inspected.pop(r.path, None)
                self.dirty.add(self.tiffs[p.file].key)

    def _free_bytes(self) -> int:
        try:
            return shutil.disk_usage(self.cfg.output.folder).free
        except OSError:
            return 1 << 62  # unknown: let the write itself tell

    def _reserve(self) -> int:
        return self.cfg.output.min_free_mb * 1_000_000

    def _space_ok(self, sess: SessionRow, needed: int, log: Any = None) -> bool:
        """Is there room for ``needed`` more bytes? Pauses or resumes the session accordingly."""
        free = self._free_bytes()
        reserve = self._reserve()
        if free >= reserve + needed:
            if sess.state == "paused":
                self.ledger.update_session(sess.id, state="acquiring")
                self.ledger.clear_problem(sess.id, "disk_full")
                self.log.info("disk space available again; resuming", stage="append",
                              session=sess.session, free_mb=free // 1_000_000)
            return True
        self._pause_disk_full(sess, free, log, why=f", {needed // 1_000_000} MB needed for the next "
                              f"file + output.min_free_mb {self.cfg.output.min_free_mb}")
        return False

    def _pause_disk_full(self, sess: SessionRow, free: int, log: Any, why: str = "") -> None:
        # The problem first: whoever sees the session paused (status, page) also sees why.
        self._problem(sess, "disk_full",
                      f"output disk full ({free // 1_000_000} MB free in {self.cfg.output.folder}"
                      f"{why}); paused until space returns, nothing is lost", "",
                      log or self.log.bind(session=sess.session))
        if sess.state != "paused":
            self.ledger.update_session(sess.id, state="paused")

    def _output_error(self, sess: SessionRow, exc: OSError | RuntimeError, log: Any) -> int:
        if _is_disk_full(exc):
            try:
                free = shutil.disk_usage(self.cfg.output.folder).free
            except OSError:
                free = 0
            self._pause_disk_full(sess, free, log, why="; writing failed: No space left on device")
            return 0
        reason = getattr(exc, "strerror", None) or _first_line(exc)
        self._problem(sess, "output_error",
                      f"cannot write {Path(sess.nwb_path).name}: {reason}; will retry",
                      "", log)
        return 0


# HDF5 handles whose writes failed. They must never be closed or garbage-collected in this
# process (see _write_failed); the worker exits soon after one lands here.
_POISONED: list[SessionAppender] = []


def _is_disk_full(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "no space left" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


REGULAR_TOLERANCE_S = 1e-6

# What the session boundary calls each planner action (quarantine messages say "while ...").
_PHASES = {"inspect": "inspecting a TIFF", "append": "appending frames",
           "finalize": "finalizing the session", "fail": "recording a bad TIFF",
           "vanished": "recording a vanished TIFF", "out_of_order": "recording a late TIFF"}
# Phases that may take the worker down (a library segfault, the OOM killer): a breadcrumb in
# the ledger says which session the worker was in, so its death can be counted.
_RISKY = frozenset({"inspecting a TIFF", "appending frames", "finalizing the session"})


DAMAGED_CODE = "nwb_damaged"  # the next worker sets the file aside and rebuilds it


def _is_damaged_read(exc: BaseException) -> bool:
    """HDF5 failed to decompress a stored chunk (torn or zeroed by a power cut): a write that
    needed to read it (a partly filled chunk) fails the same way in every new worker."""
    return "filter returned failure during read" in str(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _regular_rate(t: np.ndarray) -> float | None:
    """The rate of evenly spaced times, else None: the times must come back within 1 us from
    what NWB stores for them, ``starting_time + i / rate`` with the rate as float32 (the schema's
    type: a 29.97 Hz session of 36,000 frames would be up to 27.5 us off if only the float64
    line were checked). Measured onsets jitter by far more, so they stay timestamps."""
    if len(t) < 2:
        return None
    step = (float(t[-1]) - float(t[0])) / (len(t) - 1)
    if step <= 0:
        return None
    rate = float(np.float32(1.0 / step))
    stored = float(t[0]) + np.arange(len(t)) / rate
    return rate if float(np.max(np.abs(t - stored))) <= REGULAR_TOLERANCE_S else None


def _shape_text(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"
