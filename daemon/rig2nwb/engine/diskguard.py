"""The disk guard: a session pauses when the output disk cannot take its next file, and
resumes by itself once it can. Nothing is lost while paused: the TIFFs wait in the rig folder.

Free space is asked of ``free_bytes`` (a parameter, real default), the rule itself is
core.diskspace."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rig2nwb.core.diskspace import has_room
from rig2nwb.engine.failures import first_line, is_disk_full
from rig2nwb.engine.reporter import Reporter
from rig2nwb.fsutil import free_bytes
from rig2nwb.ledger.rows import SessionRow
from rig2nwb.logs import Logger
from rig2nwb.states import Problem, SessionState


class DiskGuard:
    def __init__(self, folder: Path, min_free_mb: int, report: Reporter, *,
                 free: Callable[[Path], int | None] = free_bytes) -> None:
        self.folder = folder
        self.min_free_mb = min_free_mb
        self.report = report
        self.ledger = report.ledger
        self._free = free

    @property
    def reserve(self) -> int:
        return self.min_free_mb * 1_000_000

    def free(self) -> int | None:
        return self._free(self.folder)

    def still_full(self) -> bool:
        """Not even the reserve is free: a paused session need not be planned at all."""
        return not has_room(self.free(), self.reserve, 0)

    def room_for(self, sess: SessionRow, needed: int, log: Logger) -> bool:
        """Is there room for ``needed`` more bytes? Pauses or resumes the session accordingly."""
        free = self.free()
        if has_room(free, self.reserve, needed):
            if sess.state == SessionState.PAUSED:
                self.ledger.update_session(sess.id, state=SessionState.ACQUIRING)
            # Also when the session is no longer paused: a worker restarted after the failed
            # write may have made the file again meanwhile (the session starts over, waiting).
            if self.ledger.clear_problem(sess.id, Problem.DISK_FULL):
                log.info("disk space available again; resuming", stage="append",
                         free_mb=(free or 0) // 1_000_000)
            return True
        self.pause(sess, free or 0, log, why=f", {needed // 1_000_000} MB needed for the next "
                   f"file + output.min_free_mb {self.min_free_mb}")
        return False

    def pause(self, sess: SessionRow, free: int, log: Logger, why: str = "") -> None:
        # The problem first: whoever sees the session paused (status, page) also sees why.
        self.report.problem(sess, Problem.DISK_FULL,
                            f"output disk full ({free // 1_000_000} MB free in {self.folder}"
                            f"{why}); paused until space returns, nothing is lost", "", log)
        if sess.state != SessionState.PAUSED:
            self.ledger.update_session(sess.id, state=SessionState.PAUSED)

    def write_error(self, sess: SessionRow, exc: BaseException, log: Logger) -> int:
        """A write to the output failed: a full disk pauses the session, anything else is an
        output problem retried later. Returns 0 (nothing changed)."""
        if is_disk_full(exc):
            self.pause(sess, self.free() or 0, log,
                       why="; writing failed: No space left on device")
            return 0
        reason = getattr(exc, "strerror", None) or first_line(exc)
        self.report.problem(sess, Problem.OUTPUT_ERROR,
                            f"cannot write {Path(sess.nwb_path).name}: {reason}; will retry", "",
                            log)
        return 0
