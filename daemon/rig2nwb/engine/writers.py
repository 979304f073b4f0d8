"""The writer pool: one open appender per session being written, opened (and repaired to the
ledger) on first use, closed when idle, and never touched again after HDF5 failed a write."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from rig2nwb.core.pagelayout import PageLayout
from rig2nwb.engine.context import Context
from rig2nwb.engine.failures import first_line, is_damaged_read, is_disk_full
from rig2nwb.engine.repair import NothingCommitted, rebuild, recreate, repair
from rig2nwb.errors import NwbBusy, NwbDamaged, WriterPoisoned
from rig2nwb.ledger.quarantine import clear_inflight
from rig2nwb.ledger.rows import SessionRow
from rig2nwb.nwb.chunks import resolve_threads
from rig2nwb.nwb.writer import SessionAppender, is_lock_error, standard_args
from rig2nwb.states import Problem

WRITER_IDLE_CLOSE_SECONDS = 15.0


def open_key(session_id: int) -> str:
    """The ledger meta key saying a session's file is open for writing."""
    return f"writer_open:{session_id}"

# HDF5 handles whose writes failed. They must never be closed or garbage-collected in this
# process (see WriterPool.write_failed); the worker exits soon after one lands here.
_POISONED: list[SessionAppender] = []


@dataclass
class _Writer:
    appender: SessionAppender
    last_used: float = field(default_factory=time.monotonic)


class WriterPool:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.writers: dict[int, _Writer] = {}

    def open_appenders(self) -> list[tuple[int, SessionAppender]]:
        """The sessions whose file is open for appending, with their appender (read-only use:
        the live preview reads recent frames through it)."""
        return [(sid, w.appender) for sid, w in self.writers.items()]

    def get(self, sess: SessionRow) -> SessionAppender:
        """The open appender of a session, opening and repairing the file on first use.
        Raises NwbRebuilt when the file had to be set aside, NwbBusy when another program
        holds it, OSError for anything else about the output."""
        ctx = self.ctx
        w = self.writers.get(sess.id)
        if w is not None:
            w.last_used = time.monotonic()
            return w.appender
        path = Path(sess.nwb_path)
        log = ctx.session_log(sess).bind(stage="recover")
        if sess.layout is None:  # a ledger from before layouts: one plain series
            ctx.ledger.update_session(sess.id, layout=PageLayout(
                frame_rate=ctx.cfg.imaging.frame_rate).to_json())
            sess = ctx.ledger.session_by_id(sess.id)
        assert sess.layout is not None
        damaged = [p for p in ctx.ledger.problems(sess.id) if p.code == Problem.NWB_DAMAGED]
        if damaged and path.exists():
            # An earlier worker could not read its own committed data back (a damaged chunk):
            # repairing from the ledger would fail the same way, so rebuild from the TIFFs.
            ctx.ledger.clear_problem(sess.id, Problem.NWB_DAMAGED)
            rebuild(ctx, sess, damaged[0].message, log)
        # Set before the file is opened for writing, cleared when it is closed cleanly: found
        # still set, the last writer died with the file open (see repair, ``unclean``).
        unclean = ctx.ledger.get_meta(open_key(sess.id)) is not None
        ctx.ledger.set_meta(open_key(sess.id), str(time.time()))
        try:
            appender = SessionAppender(path, PageLayout.from_json(sess.layout),
                                       resolve_threads(ctx.cfg.append.compress_threads),
                                       standard_args(ctx.cfg))
        except FileNotFoundError:
            rebuild(ctx, sess, "the NWB file is missing", log)
        except NwbDamaged as exc:
            rebuild(ctx, sess, str(exc), log)
        except OSError as exc:
            if is_lock_error(exc):
                raise NwbBusy(f"{path.name}: locked by another program; will retry") from exc
            raise  # permissions and the like: reported as an output problem, retried
        try:
            repair(ctx, sess, appender, log, unclean=unclean)
        except NothingCommitted as exc:
            appender.close()
            recreate(ctx, sess, str(exc), log)
        except NwbDamaged as exc:  # a read failed: the handle is sound, only the data is not
            appender.close()
            rebuild(ctx, sess, str(exc), log)
        except (OSError, RuntimeError) as exc:
            self.writers[sess.id] = _Writer(appender)
            self.write_failed(sess.id, exc)
        self.writers[sess.id] = _Writer(appender)
        return appender

    def drop(self, session_id: int) -> None:
        """Sync and close a session's file (before another reader or writer needs it)."""
        w = self.writers.pop(session_id, None)
        if w is None:
            return
        try:
            w.appender.sync()
            w.appender.close()
        except (OSError, RuntimeError) as exc:
            self.writers[session_id] = w
            self.write_failed(session_id, exc)
        self.ctx.ledger.delete_meta(open_key(session_id))

    def close_idle(self) -> None:
        now = time.monotonic()
        for sid, w in list(self.writers.items()):
            if now - w.last_used > WRITER_IDLE_CLOSE_SECONDS:
                self.drop(sid)

    def close_all(self) -> None:
        for sid in list(self.writers):
            self.drop(sid)

    def write_failed(self, session_id: int, exc: OSError | RuntimeError) -> NoReturn:
        """HDF5 failed a write: record why, then end this process without touching the file.

        After such a failure HDF5's state of the file is broken (a retried flush corrupts the
        chunk index; closing it segfaults), so the handle is parked where nothing closes or
        collects it and WriterPoisoned ends the worker; the supervisor starts a new one, which
        repairs the file from the ledger like after a crash."""
        ctx = self.ctx
        w = self.writers.pop(session_id, None)
        if w is not None:
            _POISONED.append(w.appender)
        sess = ctx.ledger.session_by_id(session_id)
        log = ctx.session_log(sess).bind(stage="append")
        if is_disk_full(exc):
            # A full disk is not this session's fault: the restart is no death of the session
            # (it pauses until space returns).
            clear_inflight(ctx.ledger)
        if is_damaged_read(exc):  # not the disk: the file's own data cannot be read back
            ctx.ledger.report_problem(sess.id, Problem.NWB_DAMAGED, f"{Path(sess.nwb_path).name}: "
                                      f"stored data cannot be read back ({first_line(exc)})")
        else:
            ctx.disk.write_error(sess, exc, log)
        log.error("writing the NWB file failed; restarting the worker to recover it safely",
                  error=first_line(exc))
        raise WriterPoisoned(first_line(exc)) from exc
