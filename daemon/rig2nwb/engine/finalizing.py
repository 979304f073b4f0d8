"""Finishing a session, and reopening one that gets another file.

Finalizing drops a final incomplete volume, writes the final timestamps (the lab's measured
onsets, or rate + starting_time where regular) and the trials, and marks the session finished;
the check queue then looks at the file. Every step is repeatable, so a crash anywhere in here
just means finalizing again."""

from __future__ import annotations

import time
from pathlib import Path, PurePosixPath

import numpy as np

from rig2nwb.core.admission import onsets_verdict, rate_worth_noting
from rig2nwb.core.pagelayout import PageLayout
from rig2nwb.core.timing import regular_rate, series_rate
from rig2nwb.engine.checks import CheckQueue
from rig2nwb.engine.context import Context
from rig2nwb.engine.writers import WriterPool
from rig2nwb.errors import LabFileProblem, NwbBusy, NwbRebuilt
from rig2nwb.ledger.rows import SessionRow
from rig2nwb.logs import Logger
from rig2nwb.nwb.writer import SessionAppender, is_lock_error, write_trials
from rig2nwb.rig.labfiles import read_scan_file, read_trial_file
from rig2nwb.states import FileState, Problem, SessionState, Suite2pState

Times = tuple[float, float]  # first frame time, end of the last frame (s)


class Finalizer:
    def __init__(self, ctx: Context, writers: WriterPool, checks: CheckQueue) -> None:
        self.ctx = ctx
        self.writers = writers
        self.checks = checks

    def _open(self, sess: SessionRow, what: str, log: Logger) -> SessionAppender | int:
        """The session's writer; else what the action returns: 1 when the file was rebuilt (the
        session is planned again from scratch), 0 when it cannot be opened now (reported)."""
        try:
            return self.writers.get(sess)
        except NwbRebuilt:
            return 1
        except (NwbBusy, OSError) as exc:  # locked by a reader, permissions: try again later
            self.ctx.report.problem(
                sess, Problem.NWB_LOCKED if isinstance(exc, NwbBusy) else Problem.OUTPUT_ERROR,
                f"{Path(sess.nwb_path).name}: cannot be {what} ({exc}); will retry", "", log)
            return 0

    def finalize(self, sess: SessionRow, log: Logger) -> int:
        """Acquisition is complete: make the file final and mark the session finished."""
        ctx = self.ctx
        log = log.bind(stage="finalize")
        writer = self._open(sess, "opened to finalize it", log)
        if isinstance(writer, int):
            return writer
        ctx.ledger.clear_problem(sess.id, Problem.NWB_LOCKED)
        ctx.ledger.clear_problem(sess.id, Problem.OUTPUT_ERROR)
        layout = writer.layout
        pages = ctx.ledger.frames_committed(sess.id)
        kept = layout.complete(pages)
        try:
            writer.restore_timestamps()
            if kept < pages:
                writer.trim(kept)
                ctx.report.warning(sess, Problem.INCOMPLETE_CYCLE, f"the acquisition ends mid "
                                   f"volume: the last {pages - kept} page(s) of an incomplete "
                                   f"cycle ({layout.pages_per_cycle} pages per volume) were "
                                   "dropped", "", log)
            source, times = self._final_timestamps(sess, writer, kept, log)
            writer.drop_group("intervals/trials")  # from an earlier finalize: written anew
            writer.sync()
        except (OSError, RuntimeError) as exc:
            self.writers.write_failed(sess.id, exc)
        self.writers.drop(sess.id)
        trials = self._write_trials(sess, times, log)
        if trials is None:
            return 0  # the file could not be written now: finalize again later
        frames = [layout.count(s, kept) for s in range(len(layout.series))]
        files = ctx.ledger.files(sess.id)
        missing = ctx.missing_lab_files(sess)
        if missing and ctx.cfg.completion.require_lab_files:
            ctx.report.warning(sess, Problem.LAB_FILES_MISSING, f"finished without its lab "
                               f"file(s) {' and '.join(missing)} (completion.require_lab_files "
                               "asks for them): timestamps come from the TIFFs alone and no "
                               "trials were written", "", log)
        else:
            ctx.ledger.clear_problem(sess.id, Problem.LAB_FILES_MISSING)
        ctx.ledger.clear_problem(sess.id, Problem.WAITING_FOR_LAB_FILES)
        ctx.ledger.update_session(sess.id, state=SessionState.FINISHED, finished_at=time.time(),
                                  timestamps_source=source, validation=None, trials=trials,
                                  duration_s=round(times[1] - times[0], 6))
        per_series = ", ".join(f"{s.name} {n}" for s, n in zip(layout.series, frames, strict=True))
        ctx.ledger.add_event(sess.id, "finalize", f"session finished: {kept} pages -> "
                             f"{per_series} frames; {trials} trials; timestamps: {source}")
        log.info("session finished", frames=sum(frames), series=len(frames),
                 frames_per_series=frames, trials=trials,
                 files=sum(r.state == FileState.COMMITTED for r in files),
                 failed_files=sum(r.state != FileState.COMMITTED for r in files),
                 timestamps=source, nwb=sess.nwb_path)
        return 1

    def _final_timestamps(self, sess: SessionRow, writer: SessionAppender, kept: int,
                          log: Logger) -> tuple[str, Times]:
        """Apply the scan file's onsets when usable, then store each series' times as rate +
        starting_time where they are regular. Returns (where the times come from, (first, end
        of the last frame)) for status and the trial checks."""
        layout = writer.layout
        acquired = self.ctx.ledger.frames_committed(sess.id) // layout.n_channels
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
            regular = regular_rate(t)
            measured = series_rate(t, regular)
            if measured is not None:
                # The plane's imaging_rate is the series' own rate (see core.timing).
                writer.set_imaging_rate(s, measured)
                if rate_worth_noting(measured, layout.series_rate):
                    log.info("imaging rate from frame times", series=layout.series[s].name,
                             nominal=round(layout.series_rate, 6), measured=round(measured, 6))
            if regular is not None:
                writer.use_rate(s, float(t[0]), regular, f"timestamps: {source}; regular, so "
                                f"stored as starting_time + rate ({regular:.9g} Hz)")
        if not np.isfinite(first):
            first = last = 0.0
        return source, (first, last + 1.0 / layout.series_rate)

    def _scan_onsets(self, sess: SessionRow, scan_frames: int, acquired: int,
                     log: Logger) -> tuple[np.ndarray, str] | None:
        """The lab scan file's onsets (s) for the ``scan_frames`` kept frames, or None when
        there is no usable file (missing, malformed, or a count mismatch the policy refuses;
        each reported). The rule is core.admission.onsets_verdict."""
        ctx = self.ctx
        rel = ctx.lab_of(sess).scan
        if not rel:
            return None
        name = PurePosixPath(rel).name
        try:
            onsets = read_scan_file(ctx.root / rel, ctx.cfg.scan, root=ctx.root).seconds
        except LabFileProblem as exc:
            ctx.report.problem(sess, Problem.SCAN_FILE, f"{exc}; timestamps stay as acquired",
                               rel, log)
            return None
        ctx.ledger.clear_problem(sess.id, Problem.SCAN_FILE, rel)
        verdict = onsets_verdict(name, len(onsets), scan_frames, acquired,
                                 ctx.cfg.scan.on_mismatch)
        if verdict.problem is not None:
            ctx.report.problem(sess, Problem.SCAN_MISMATCH, verdict.problem, rel, log)
        else:
            ctx.ledger.clear_problem(sess.id, Problem.SCAN_MISMATCH, rel)
        if not verdict.use:
            return None
        onsets = onsets[:verdict.keep]
        log.info("timestamps from scan file", file=rel, frames=scan_frames,
                 first=round(float(onsets[0]), 6), last=round(float(onsets[-1]), 6))
        return onsets, f"measured frame onsets from {name}"

    def _write_trials(self, sess: SessionRow, recording: Times, log: Logger) -> int | None:
        """Write the trials table from the lab's trial file; returns the number of trials (0
        when there is no usable file: reported), None when the NWB file could not be written."""
        ctx = self.ctx
        rel = ctx.lab_of(sess).trial
        if not rel:
            return 0
        try:
            table = read_trial_file(ctx.root / rel, ctx.cfg.trials, recording=recording,
                                    root=ctx.root)
        except LabFileProblem as exc:
            ctx.report.problem(sess, Problem.TRIAL_FILE, f"{exc}; no trials written (the frames "
                               "are untouched)", rel, log)
            return 0
        ctx.ledger.clear_problem(sess.id, Problem.TRIAL_FILE, rel)
        try:
            write_trials(Path(sess.nwb_path), table, ctx.cfg.trials, PurePosixPath(rel).name)
        except OSError as exc:
            ctx.report.problem(sess, Problem.NWB_LOCKED if is_lock_error(exc)
                               else Problem.OUTPUT_ERROR, f"{Path(sess.nwb_path).name}: cannot "
                               f"write the trials ({exc}); will retry", "", log)
            return None
        log.info("trials written", file=rel, trials=len(table))
        return len(table)

    def reopen(self, sess: SessionRow, log: Logger) -> int:
        """A finished session got another file: undo what finalizing did that appending cannot
        live with (rate-form timestamps, the dropped incomplete cycle); finalize runs again.

        Attached suite2p results stay in the file as they are: they describe the frames they
        were computed from (their own timestamps say which), and nothing attached is ever lost
        to a late TIFF. A warning says they cover fewer frames than the session now has; results
        of a suite2p rerun replace them through the usual attach."""
        ctx = self.ctx
        self.checks.cancel(sess.id)  # the child holds the file open for reading
        writer = self._open(sess, "reopened for a new file", log)
        if isinstance(writer, int):
            if writer == 0:
                ctx.index.dirty.add((sess.subject, sess.session))  # finished: not polled
            return writer
        pages = ctx.ledger.frames_committed(sess.id)
        kept = writer.layout.complete(pages)
        try:
            writer.restore_timestamps()
            writer.sync()
        except (OSError, RuntimeError) as exc:
            self.writers.write_failed(sess.id, exc)
        s2p = ctx.ledger.suite2p(sess.id)
        if s2p is not None and s2p.state in (Suite2pState.ATTACHED, Suite2pState.STAGED):
            frames = [writer.layout.count(i, kept) for i in range(len(writer.layout.series))]
            ctx.report.warning(sess, Problem.SUITE2P_PARTIAL, f"the attached suite2p results "
                               f"cover the first {max(frames)} frames; the session got new "
                               "frames after they were attached. They stay in the file; rerun "
                               "suite2p on the whole session to include the new frames (its "
                               "results replace these)", "", log)
        if kept < pages:
            ctx.ledger.roll_back(sess.id, kept)  # those pages are appended again, in order
        ctx.ledger.update_session(sess.id, state=SessionState.ACQUIRING, validation=None)
        ctx.ledger.clear_problem(sess.id, Problem.INCOMPLETE_CYCLE)
        ctx.ledger.add_event(sess.id, "append", "new file after the session was finished: "
                             "reopened for appending")
        log.warning("finished session got a new file; reopened", stage="append")
        return 1
