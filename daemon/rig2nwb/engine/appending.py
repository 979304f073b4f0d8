"""The append job: one complete TIFF into its session's series, page by page, with commit
points. The ledger is updated only after the NWB file has been flushed and fsynced, so it never
claims a frame the disk does not hold; a pass that cannot finish is undone in full."""

from __future__ import annotations

import hashlib
import stat
import time
from collections.abc import Callable
from pathlib import PurePosixPath

import numpy as np

from rig2nwb.core.admission import admit, admit_layout
from rig2nwb.core.pagelayout import PageLayout
from rig2nwb.engine.context import Context
from rig2nwb.engine.creating import create_session_file
from rig2nwb.engine.writers import WriterPool
from rig2nwb.errors import NwbBusy, NwbRebuilt, Stopped, TiffProblem, UnsafeRigPath
from rig2nwb.ledger.rows import FileRow, SessionRow
from rig2nwb.logs import Logger
from rig2nwb.nwb.writer import SessionAppender
from rig2nwb.progress import beat as heartbeat
from rig2nwb.rig.acquisition import FileAcquisition, read_acquisition
from rig2nwb.rig.safeopen import FileId, lstat_rig
from rig2nwb.rig.tiffs import TiffInfo, batch_frames, inspect_tiff, read_batches
from rig2nwb.states import FileState, Problem, SessionState


class AppendJob:
    def __init__(self, ctx: Context, writers: WriterPool, *,
                 reopen: Callable[[SessionRow, Logger], int],
                 on_frames: Callable[[int], None] | None = None) -> None:
        self.ctx = ctx
        self.writers = writers
        self.reopen = reopen  # a finished session got another file (the finalizer undoes)
        self.on_frames = on_frames

    # --- reading the rig ---------------------------------------------------------------------

    def inspect_file(self, rel: str, expect: FileId | None) -> TiffInfo:
        """Inspect the version of the file that was classified (safeopen: no links, no FIFOs)."""
        ctx = self.ctx
        return inspect_tiff(ctx.root / rel, root=ctx.root, expect=expect,
                            max_frame_bytes=ctx.budget // 4)

    def acquisition(self, rel: str, info: TiffInfo) -> FileAcquisition:
        """The file's layout, per-page times and header warnings (cached per size and mtime)."""
        ctx = self.ctx
        cached = ctx.acquired.get(rel)
        if cached is not None and cached[:2] == (info.size, info.mtime_ns):
            return cached[2]
        acq = read_acquisition(ctx.root / rel, ctx.cfg, root=ctx.root, expect=info.file_id)
        ctx.acquired[rel] = (info.size, info.mtime_ns, acq)
        return acq

    def inspect(self, rel: str) -> None:
        """Inspect a complete file once; the planner reads the verdict from the cache."""
        obs = self.ctx.index.tiffs[rel]
        result: TiffInfo | TiffProblem
        try:
            info = self.inspect_file(rel, obs.file_id)
            self.acquisition(rel, info)
            result = info
        except TiffProblem as exc:
            result = exc
        self.ctx.inspected[rel] = (obs.size, obs.mtime_ns, result)

    def fail_file(self, sess: SessionRow, row: FileRow, problem: TiffProblem,
                  log: Logger) -> None:
        obs = self.ctx.index.tiffs.get(row.path)
        self.ctx.ledger.update_file(row.id, state=FileState.FAILED, error=problem.message,
                                    size=obs.size if obs else row.size,
                                    mtime_ns=obs.mtime_ns if obs else row.mtime_ns)
        self.ctx.report.problem(sess, problem.code, problem.message, row.path, log)

    # --- appending ---------------------------------------------------------------------------

    def append(self, sess: SessionRow, row: FileRow, log: Logger) -> int:
        ctx = self.ctx
        info = ctx.inspected.get(row.path, (0, 0, None))[2]
        if row.state == FileState.APPENDING and not isinstance(info, TiffInfo):
            # Resuming a partly appended file after a restart: inspect it first.
            obs = ctx.index.tiffs.get(row.path)
            try:
                info = self.inspect_file(row.path, obs.file_id if obs else None)
            except TiffProblem as exc:
                self.fail_file(sess, row, exc, log)
                return 1
        assert isinstance(info, TiffInfo)
        name = PurePosixPath(row.path).name
        log = log.bind(stage="append", file=row.path)
        refusal = admit(name, file_site=ctx.index.tiffs[row.path].site, session_site=sess.site,
                        session_name=sess.session, shape=info.shape, dtype=info.dtype,
                        session_shape=sess.frame_shape, session_dtype=sess.dtype)
        if refusal is not None:
            self.fail_file(sess, row, TiffProblem(refusal.code, refusal.message), log)
            return 1
        try:
            acq = self.acquisition(row.path, info)
        except TiffProblem as exc:
            self.fail_file(sess, row, exc, log)
            return 1
        refusal = admit_layout(name, acq.layout, None if sess.layout is None
                               else PageLayout.from_json(sess.layout))
        if refusal is not None:
            self.fail_file(sess, row, TiffProblem(refusal.code, refusal.message), log)
            return 1
        for text in acq.warnings:
            # once per session, named after the first file that says so (a run of 100 files
            # repeats its header 100 times)
            code = f"{Problem.HEADER_MISMATCH}:" + hashlib.sha1(text.encode()).hexdigest()[:10]
            if not any(p.code == code for p in ctx.ledger.problems(sess.id)):
                ctx.report.warning(sess, code, f"{name}: {text}", "", log)
        if sess.state == SessionState.FINISHED:
            return self.reopen(sess, log)
        done = row.frames_committed if row.first_frame is not None else 0
        if done > info.pages:
            ctx.ledger.update_file(row.id, state=FileState.COMMITTED)
            ctx.report.problem(sess, Problem.CHANGED_AFTER_COMMIT, f"{name}: now has {info.pages} "
                               f"pages but {done} were appended already; the NWB file keeps "
                               "those", row.path, log)
            return 1
        if not ctx.disk.room_for(sess, info.frame_bytes * (info.pages - done), log):
            return 0
        committed_before = ctx.ledger.frames_committed(sess.id)
        try:
            if not sess.nwb_created:
                created = create_session_file(ctx, sess, row, info, acq, log)
                if created is None:
                    return 0  # metadata problem, reported: the file waits until it is fixed
                sess = created
            writer = self.writers.get(sess)
        except NwbBusy as exc:
            ctx.report.problem(sess, Problem.NWB_LOCKED, str(exc), "", log)
            return 0
        except NwbRebuilt:
            return 1  # the ledger was reset: plan the session again from its first file
        except OSError as exc:
            return ctx.disk.write_error(sess, exc, log)
        ctx.ledger.clear_problem(sess.id, Problem.NWB_LOCKED)
        ctx.ledger.clear_problem(sess.id, Problem.OUTPUT_ERROR)
        if ctx.ledger.frames_committed(sess.id) != committed_before:
            return 1  # opening the file repaired it (rolled back): plan again from the ledger
        try:
            self._stream(sess, row, info, acq, writer, log)
        except TiffProblem as exc:
            self.writers.drop(sess.id)
            self.fail_file(sess, row, exc, log)
            return 1
        except Stopped:
            return 1
        except (OSError, RuntimeError) as exc:
            # h5py reports failed writes and flushes as OSError or RuntimeError (e.g. ENOSPC
            # inside H5Fflush). The ledger still says what is committed; the handle is broken.
            self.writers.write_failed(sess.id, exc)
        return 1

    def _stream(self, sess: SessionRow, row: FileRow, info: TiffInfo, acq: FileAcquisition,
                writer: SessionAppender, log: Logger) -> None:
        ctx = self.ctx
        committed = ctx.ledger.frames_committed(sess.id)
        name = PurePosixPath(row.path).name
        # Frames of this file already committed (a restart mid-file, or a file that grew after
        # it was appended); only the last file of a series can be continued.
        done = row.frames_committed if row.first_frame is not None else 0
        first = row.first_frame if row.first_frame is not None else committed
        if done and first + done != committed:
            raise TiffProblem(Problem.CHANGED_AFTER_COMMIT, f"{name}: {done} of its pages are in "
                              "the NWB file but later frames follow them; the rest cannot be added")
        if done and row.state != FileState.APPENDING and not self._same_prefix(
                writer, row.path, info, committed, done):
            raise TiffProblem(Problem.CHANGED_AFTER_COMMIT, f"{name}: its first {done} pages "
                              "differ from the frames appended before; not appended")
        t0 = time.monotonic()
        try:
            self._copy_pages(sess, row, info, acq, writer, first, done, log)
        except TiffProblem:
            self._undo_pass(sess, row, writer, committed)  # nothing of a half-read file stays
            raise
        # The file must not have changed while we read it: a writer that paused longer than
        # the settle period would otherwise be appended half-written.
        try:
            st = lstat_rig(ctx.root, row.path)
            unchanged = (stat.S_ISREG(st.st_mode) and info.file_id is not None
                         and FileId.of(st) == info.file_id)
        except (OSError, UnsafeRigPath):
            unchanged = False  # deleted, moved away or replaced while we read it
        if not unchanged:
            self._undo_pass(sess, row, writer, committed)
            ctx.inspected.pop(row.path, None)
            ctx.index.touched(row.path)
            log.warning("file changed while it was being appended; rolled back, will retry "
                        "when it is complete (consider a longer completion.settle_seconds)")
            return
        writer.sync()
        ctx.ledger.commit_frames(
            sess.id, row.id, file_frames_committed=info.pages, file_state=FileState.COMMITTED,
            series_frames=first + info.pages, size=info.size, mtime_ns=info.mtime_ns,
            frames=info.pages, first_frame=first)
        ctx.report.clear_file_problems(sess.id, row.path)
        dt = time.monotonic() - t0
        mb = (info.pages - done) * info.frame_bytes / 1e6
        if sess.state != SessionState.ACQUIRING:
            ctx.ledger.update_session(sess.id, state=SessionState.ACQUIRING)
        log.info("tiff appended", frames=info.pages - done, first_frame=first,
                 series_frames=first + info.pages, seconds=round(dt, 3),
                 mb_per_s=round(mb / dt, 1) if dt > 0 else None)
        ctx.ledger.add_event(sess.id, "append", f"{row.path}: {info.pages - done} frames "
                             f"appended at frame {first}")

    def _copy_pages(self, sess: SessionRow, row: FileRow, info: TiffInfo, acq: FileAcquisition,
                    writer: SessionAppender, first: int, done: int, log: Logger) -> None:
        """Stream pages ``done``.. of the file into the series at stream page ``first + done``,
        flushing every batch and committing every ``commit_every_frames`` (and when asked to
        stop). Page times: the file's own per-frame timestamps (ScanImage), else nominal."""
        ctx = self.ctx
        layout = writer.layout
        # Batches sized in bytes: a small compressed file can declare huge frames.
        batch = batch_frames(info.frame_bytes, ctx.budget, ctx.cfg.append.batch_frames)
        every = ctx.cfg.append.commit_every_frames
        since_commit = 0
        pos = done
        for frames in read_batches(ctx.root / row.path, done, info.pages, batch, root=ctx.root,
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
            stopping = ctx.stopping()
            if (since_commit >= every or stopping) and pos < info.pages:
                writer.sync()
                ctx.ledger.commit_frames(
                    sess.id, row.id, file_frames_committed=pos, file_state=FileState.APPENDING,
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
        self.ctx.ledger.roll_back(sess.id, committed)
        self.ctx.ledger.update_file(row.id, state=FileState.WAITING)
        writer.trim(committed)
        writer.sync()

    def _same_prefix(self, writer: SessionAppender, rel: str, info: TiffInfo, committed: int,
                     done: int) -> bool:
        """Does the TIFF still hold, as its last appended data page, the frame we stored?"""
        root = self.ctx.root
        for back in range(1, min(done, writer.layout.pages_per_cycle) + 1):
            stored = writer.read_page(committed - back)
            if stored is not None:  # not a flyback page
                page = next(read_batches(root / rel, done - back, done - back + 1, 1,
                                         root=root, expect=info.file_id))
                return bool(np.array_equal(page[0], stored))
        return True
