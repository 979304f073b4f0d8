"""Making a session's NWB file agree with the ledger when it is opened: trim what was never
committed, check the last committed frames against their TIFF, and rebuild from the TIFFs a
file that cannot be read back. The ledger is the truth; the file follows it."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import NoReturn

import numpy as np

from rig2nwb.engine.context import Context
from rig2nwb.engine.failures import first_line, is_damaged_read
from rig2nwb.errors import NwbDamaged, NwbRebuilt, TiffProblem, UnsafeRigPath
from rig2nwb.ledger.rows import SessionRow
from rig2nwb.logs import Logger
from rig2nwb.nwb.writer import SessionAppender, existing_identifier
from rig2nwb.progress import beat as heartbeat
from rig2nwb.rig.safeopen import FileId, lstat_rig
from rig2nwb.rig.tiffs import read_batches
from rig2nwb.states import Problem, SessionState, Suite2pState

TAIL_CHECK_FRAMES = 8
VERIFY_BATCH = 16  # pages per read when every committed frame is checked


def repair(ctx: Context, sess: SessionRow, appender: SessionAppender, log: Logger, *,
           unclean: bool = False) -> None:
    """Make the file agree with the ledger: trim what was never committed, check the tail.

    The ledger counts pages of the session's stream; each series must hold exactly its
    frames among them (a finished session: among the whole cycles only).

    ``unclean``: the file was not closed cleanly last time (a crash, a power cut). Then HDF5's
    chunk index itself may be torn (a B-tree node written after the last fsync can hold entries
    of frames committed long before), so every committed frame is compared with its TIFF, and a
    difference sets the file aside for a rebuild instead of trimming a damaged index; a file
    with nothing committed is simply made again (found by the power-loss test: a zeroed tail,
    trimmed to 0 frames and appended again, read back 45 wrong frames)."""
    committed = ctx.ledger.frames_committed(sess.id)
    if unclean and committed == 0 and any(n for pair in appender.lengths() for n in pair):
        raise NothingCommitted(f"{Path(sess.nwb_path).name}: holds frames the ledger never "
                               "committed, after an unclean stop")
    if sess.state == SessionState.FINISHED:
        committed = appender.layout.complete(committed)
    else:
        # Killed in the middle of finalizing: series already in starting_time + rate form
        # get their timestamps back, so appending (and finalizing again) can go on.
        appender.restore_timestamps()
    for series in range(len(appender.layout.series)):
        try:  # 8 bytes a frame: every stored timestamp chunk must decompress
            appender.timestamps(series)
        except (OSError, RuntimeError) as exc:
            if not is_damaged_read(exc):
                raise
            raise NwbDamaged(f"{Path(sess.nwb_path).name}: stored timestamps cannot be read "
                             f"back ({first_line(exc)})") from exc
    held = appender.pages_held()
    if held < committed:
        # The disk lost frames the ledger counted (should not happen with fsync): take the
        # file's word, roll the ledger back and append those pages again.
        log.warning("NWB file shorter than the ledger; re-appending from the TIFFs",
                    ledger_pages=committed, pages_in_file=held)
        committed = held
        ctx.ledger.roll_back(sess.id, committed)
    lengths = appender.lengths()
    expected = appender.expected(committed)
    if any(n != (e, e) for n, e in zip(lengths, expected, strict=True)):
        appender.trim(committed)
        appender.sync()
        log.info("trimmed uncommitted tail", ledger_pages=committed,
                 series_frames=[n[0] for n in lengths], kept=expected)
        ctx.ledger.add_event(sess.id, "recover", f"trimmed NWB series from {lengths} "
                             f"(frames, timestamps) to the {expected} frames of the "
                             f"{committed} committed pages")
    if unclean:
        verify_all(ctx, sess, appender, committed, log)
    else:
        check_tail(ctx, sess, appender, committed, log)


class NothingCommitted(Exception):
    """The file holds frames but the ledger committed none: it is made again from scratch."""


def verify_all(ctx: Context, sess: SessionRow, appender: SessionAppender, committed: int,
               log: Logger) -> None:
    """After an unclean stop: every committed frame must read back equal to its TIFF page.
    A TIFF that changed or is gone since cannot vouch for its frames and is skipped (the
    change itself is reported by the watcher). Raises NwbDamaged on the first difference."""
    rows = sorted((r for r in ctx.ledger.files(sess.id)
                   if r.first_frame is not None and r.frames_committed > 0),
                  key=lambda r: r.first_frame or 0)
    checked = 0
    for row in rows:
        assert row.first_frame is not None
        end = min(row.frames_committed, committed - row.first_frame)
        if end <= 0:
            continue
        try:
            st: os.stat_result | None = lstat_rig(ctx.root, row.path)
        except (OSError, UnsafeRigPath):
            st = None
        if st is None or not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (
                row.size, row.mtime_ns):
            continue
        try:
            pages = read_batches(ctx.root / row.path, 0, end, VERIFY_BATCH, root=ctx.root,
                                 expect=FileId.of(st))
            k = row.first_frame
            for batch in pages:
                for src in batch:
                    try:
                        stored = appender.read_page(k)
                    except (OSError, RuntimeError) as exc:
                        raise NwbDamaged(f"{Path(sess.nwb_path).name}: frame {k} cannot be read "
                                         f"back after an unclean stop ({first_line(exc)})") from exc
                    if stored is not None and not np.array_equal(stored, src):
                        raise NwbDamaged(f"{Path(sess.nwb_path).name}: frame {k} differs from "
                                         f"{Path(row.path).name} after an unclean stop")
                    k += 1
                heartbeat()
        except TiffProblem as exc:
            log.warning("cannot check frames against their TIFF", file=row.path, error=str(exc))
            continue
        checked += end
    log.info("every committed frame checked after an unclean stop", frames=checked,
             committed=committed)


def check_tail(ctx: Context, sess: SessionRow, appender: SessionAppender, committed: int,
               log: Logger) -> int:
    """Compare the last committed pages with their source TIFF; roll back on mismatch."""
    if committed == 0:
        return 0
    rows = [r for r in ctx.ledger.files(sess.id)
            if r.first_frame is not None and r.frames_committed > 0]
    if not rows:
        return committed
    last = max(rows, key=lambda r: r.first_frame or 0)
    assert last.first_frame is not None
    try:
        st: os.stat_result | None = lstat_rig(ctx.root, last.path)
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
        pages = read_batches(ctx.root / last.path, start_in_file, end_in_file, 1,
                             root=ctx.root, expect=FileId.of(st))
        for i, src in enumerate(pages):
            try:
                stored = appender.read_page(last.first_frame + start_in_file + i)
            except (OSError, RuntimeError) as exc:
                # A torn or zeroed compressed chunk (power loss before the OS wrote it
                # out): a read failure, not a write failure; the TIFF still has the frames.
                same, why = False, f"cannot be read ({first_line(exc)})"
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
    ctx.ledger.roll_back(sess.id, last.first_frame)
    appender.trim(last.first_frame)
    appender.sync()
    return last.first_frame


def rebuild(ctx: Context, sess: SessionRow, why: str, log: Logger) -> NoReturn:
    """Set the unusable file aside (never deleted) and start the session again from its TIFFs.
    Raises NwbRebuilt: the caller plans the session again from its first file."""
    path = Path(sess.nwb_path)
    message = f"{path.name}: {why}; rebuilt from the TIFFs"
    if path.exists():
        aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
        os.replace(path, aside)
        # Damage rig2nwb repairs by itself (a torn write after a crash or power cut): nothing
        # is lost and nobody has to act, so a warning; the damaged copy is kept for a person
        # to delete.
        log.warning("NWB file unusable; rebuilding it from the TIFFs", reason=why,
                    kept=aside.name)
        ctx.report.warning(sess, Problem.NWB_REBUILT, f"{path.name}: {why} (kept as "
                           f"{aside.name}); rebuilt from the TIFFs", "", log)
    else:
        # Gone: someone deleted or moved the output, which a person should know as an error.
        log.error("NWB file missing; rebuilding it from the TIFFs", reason=why)
        ctx.report.problem(sess, Problem.NWB_REBUILT, message, "", log)
    ctx.ledger.reset_session(sess.id)  # every file with frames goes back to waiting
    s2p = ctx.ledger.suite2p(sess.id)
    if s2p is not None and s2p.state in (Suite2pState.ATTACHED, Suite2pState.STAGED,
                                         Suite2pState.ATTACHING):
        # The new file has no results yet: the survey attaches them again once it is finished.
        ctx.ledger.set_suite2p(sess.id, state=Suite2pState.READY, attached=None,
                               detail="the NWB file was rebuilt; attached again once finished")
    raise NwbRebuilt(why)


def recreate(ctx: Context, sess: SessionRow, why: str, log: Logger) -> NoReturn:
    """A file of this session that holds nothing the ledger vouches for: removed when it is
    provably this session's own (its identifier), else set aside; the session then makes its
    file again from its TIFFs. Raises NwbRebuilt."""
    path = Path(sess.nwb_path)
    if sess.identifier and existing_identifier(path) == sess.identifier:
        path.unlink()
        log.info("NWB file made again: nothing in it was committed", reason=why)
        ctx.ledger.add_event(sess.id, "recover", f"{why}; made again from the TIFFs")
        ctx.ledger.reset_session(sess.id)
        raise NwbRebuilt(why)
    rebuild(ctx, sess, why, log)
