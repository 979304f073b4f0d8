"""Keeping the ledger in step with the rig index: new files get rows (and new sessions a row
and an output name nobody else owns), changed files are retried or reported, and each session's
facts are gathered for the pure planner."""

from __future__ import annotations

import time
from pathlib import Path, PurePosixPath

from rig2nwb.config.paths import preview_png, summary_png
from rig2nwb.core.admission import grown_file_continues, retry_failed
from rig2nwb.core.names import is_safe_name, printable
from rig2nwb.core.planner import FileFacts, Parsed, SessionFacts
from rig2nwb.core.runorder import run_position
from rig2nwb.engine.context import Context
from rig2nwb.errors import TiffProblem
from rig2nwb.ledger.rows import FileRow, SessionRow
from rig2nwb.rig.index import Key, Obs
from rig2nwb.states import TRANSIENT_PROBLEMS, FileState, Problem, SessionState

# A session waiting for its lab files is said to wait once it has been idle this much longer
# than completion.session_idle_seconds (the lab's stimulus PC may copy them a little later).
LAB_FILES_GRACE_SECONDS = 300.0


class LedgerSync:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # --- files and sessions ---------------------------------------------------------------

    def session_of(self, obs: Obs) -> int | None:
        row = self.ctx.ledger.file(obs.rel)
        if row is not None:
            return row.session_id
        sess = self.ctx.ledger.session(*obs.key)
        return None if sess is None else sess.id

    def ensure_file(self, obs: Obs) -> None:
        """The ledger row of a TIFF the index holds: added, retried or reported as it changed."""
        ledger = self.ctx.ledger
        row = ledger.file(obs.rel)
        if row is not None:
            now = (obs.size, obs.mtime_ns)
            if retry_failed(row.state, (row.size, row.mtime_ns), now):
                # The file changed since it failed (e.g. it was still being written): retry.
                ledger.update_file(row.id, state=FileState.WAITING, error=None)
                self.ctx.report.clear_file_problems(row.session_id, obs.rel)
            elif row.state == FileState.VANISHED:
                ledger.update_file(row.id, state=FileState.WAITING, error=None)
                ledger.clear_problem(row.session_id, Problem.VANISHED, obs.rel)
            elif row.state == FileState.COMMITTED and (row.size, row.mtime_ns) != now:
                self._committed_file_changed(row, obs)
            return
        sess = self._session_row(obs.key, obs.site, obs.rel)
        if sess is None:
            return
        ledger.add_file(sess.id, obs.rel, obs.size, obs.mtime_ns)

    def _committed_file_changed(self, row: FileRow, obs: Obs) -> None:
        """A TIFF changed after it was appended: a writer that paused longer than the settle
        period, or reopened its file. Its new pages are appended if it is still the last file of
        the series; otherwise the change is reported, since a series cannot grow in the middle."""
        ctx = self.ctx
        sess = ctx.ledger.session_by_id(row.session_id)
        name = PurePosixPath(row.path).name
        log = ctx.session_log(sess).bind(stage="watch", file=row.path)
        ctx.inspected.pop(row.path, None)
        if grown_file_continues(row.first_frame, row.frames, ctx.ledger.frames_committed(sess.id)):
            # Back to waiting with its committed frames kept: once complete again, only the new
            # pages are appended (see AppendJob._stream).
            ctx.ledger.update_file(row.id, state=FileState.WAITING)
            log.warning("tiff changed after it was appended; its new pages will be appended",
                        frames_appended=row.frames)
            ctx.ledger.add_event(sess.id, "watch", f"{name} grew after it was appended")
            return
        ctx.report.problem(sess, Problem.CHANGED_AFTER_COMMIT,
                           f"{name}: changed after it was appended ({row.size} -> {obs.size} "
                           "bytes) and later files are already in the NWB file; the change is "
                           "not in it", row.path, log)

    def _session_row(self, key: Key, site: str, rel: str) -> SessionRow | None:
        ctx = self.ctx
        sess = ctx.ledger.session(*key)
        if sess is not None:
            return sess
        subject, session = key
        folder = str(PurePosixPath(rel).parent)
        if not all(is_safe_name(v) for v in (subject, session, site or "x")):
            ctx.report.rig_problem(Problem.UNSAFE_NAME, folder, f"{printable(folder)}: subject "
                                   f"{subject!r}, site {site!r} or session {session!r} is not a "
                                   "safe name ('..', separators, leading or trailing spaces, "
                                   "control characters such as newlines or ESC); files ignored")
            return None
        out = ctx.cfg.output
        nwb_path = out.folder / out.nwb_name.format(subject=subject, session=session, site=site)
        if nwb_path.resolve().parent != out.folder.resolve():
            ctx.report.rig_problem(Problem.UNSAFE_NAME, folder,
                                   f"{folder}: its NWB file {nwb_path.name} would leave the "
                                   "output folder; files ignored")
            return None
        owner = self._output_owner(subject, session, nwb_path)
        if owner is not None:
            ctx.report.rig_problem(Problem.OUTPUT_TAKEN, folder, f"{folder}: {owner}; its files "
                                   "are ignored (nothing is overwritten). Change output.nwb_name "
                                   "(or the folder names) so that sessions cannot share a file")
            return None
        ctx.ledger.clear_problem(None, Problem.OUTPUT_TAKEN, folder)
        sess = ctx.ledger.ensure_session(subject, session, site, str(nwb_path))
        ctx.ledger.add_event(sess.id, "watch", "session seen")
        ctx.log.info("new session", stage="watch", subject=subject, session=session)
        return sess

    def _output_owner(self, subject: str, session: str, nwb_path: Path) -> str | None:
        """The other session that already owns one of this session's output files (NWB file,
        summary picture, preview), as a sentence; None when they are all free. Compared without
        case: on Windows and macOS shares, names that differ in case are one file."""
        cfg = self.ctx.cfg
        mine = {str(nwb_path).casefold(): "NWB file",
                str(summary_png(cfg, subject, session)).casefold(): "summary picture",
                str(preview_png(cfg, subject, session)).casefold(): "preview"}
        for other in self.ctx.ledger.sessions():
            theirs = (other.nwb_path, summary_png(cfg, other.subject, other.session),
                      preview_png(cfg, other.subject, other.session))
            for path in theirs:
                what = mine.get(str(path).casefold())
                if what is not None:
                    return (f"its {what} {Path(path).name} is already that of session "
                            f"{printable(other.subject)}/{printable(other.session)}")
        return None

    def retry_transient(self) -> None:
        """Give files that failed for a passing reason (permissions, I/O) another chance."""
        ctx = self.ctx
        for p in ctx.ledger.problems():
            if p.code not in TRANSIENT_PROBLEMS or p.file not in ctx.index.tiffs:
                continue
            r = ctx.ledger.file(p.file)
            if r is not None and r.state == FileState.FAILED:
                ctx.ledger.update_file(r.id, state=FileState.WAITING)
                ctx.inspected.pop(r.path, None)
                ctx.index.dirty.add(ctx.index.tiffs[p.file].key)

    def active_keys(self) -> list[Key]:
        """The sessions to plan this step: those whose files changed, and every unfinished one."""
        ctx = self.ctx
        keys = set(ctx.index.dirty)
        ctx.index.dirty.clear()
        for sess in ctx.ledger.sessions():
            if sess.state != SessionState.FINISHED:
                keys.add((sess.subject, sess.session))
        quarantined = {(s.subject, s.session) for s in ctx.ledger.sessions() if s.quarantined}
        keys -= quarantined
        if ctx.convert:
            keys = {k for k in keys if any(o.key == k for o in ctx.index.tiffs.values())}
        return sorted(keys)

    # --- facts for the planner --------------------------------------------------------------

    def facts(self, sess: SessionRow) -> SessionFacts:
        ctx = self.ctx
        rows = {r.path: r for r in ctx.ledger.files(sess.id)}
        retrying = {p.file for p in ctx.ledger.problems(sess.id) if p.code in TRANSIENT_PROBLEMS}
        now_m, now_w = ctx.index.now(), time.time()
        facts: list[FileFacts] = []
        newest = 0
        for rel, row in rows.items():
            obs = ctx.index.tiffs.get(rel)
            if ctx.convert and obs is None and row.state not in (
                    FileState.COMMITTED, FileState.APPENDING):
                continue  # convert looks only at its folder
            parsed: Parsed = "unknown"
            if obs is not None:
                newest = max(newest, obs.mtime_ns)
                cached = ctx.inspected.get(rel)
                if cached is not None and cached[:2] == (obs.size, obs.mtime_ns):
                    parsed = "bad" if isinstance(cached[2], TiffProblem) else "ok"
            facts.append(FileFacts(
                path=rel,
                position=obs.position if obs else run_position(rel),
                present=obs is not None,
                quiet_for=(now_m - obs.changed_at) if obs else 0.0,
                closed=obs.closed if obs else False,
                parsed=parsed,
                state=row.state,
                holds_frames=row.first_frame is not None and row.frames_committed > 0,
                retrying=row.state == FileState.FAILED and rel in retrying,
            ))
        lab = ctx.lab_of(sess)
        need = [k for k, pat in (("scan", ctx.cfg.rig.scan_file),
                                  ("trial", ctx.cfg.rig.trial_file)) if pat]
        return SessionFacts(
            files=facts,
            marker=bool(lab.marker),
            lab_files_present=all(getattr(lab, k) for k in need),
            idle_for=(now_w - newest / 1e9) if newest else 0.0,
            finished=sess.state == SessionState.FINISHED,
        )

    def lab_files_hint(self, sess: SessionRow, facts: SessionFacts, require: bool) -> None:
        """A session whose TIFFs stopped coming waits for its lab files (require_lab_files):
        say so, or it would look like it hangs in 'acquiring'."""
        ctx = self.ctx
        waiting = (require and not facts.lab_files_present
                   and not facts.finished and not facts.marker and not ctx.convert
                   and ctx.index.root_ok  # an unreachable share hides them: unknown, not missing
                   and facts.idle_for >= ctx.cfg.completion.session_idle_seconds
                   + LAB_FILES_GRACE_SECONDS)
        if waiting:
            missing = " and ".join(ctx.missing_lab_files(sess))
            ctx.report.warning(sess, Problem.WAITING_FOR_LAB_FILES, f"no new TIFF for "
                               f"{facts.idle_for:.0f} s, but the lab files ({missing}) are "
                               "missing; the session finishes once they arrive "
                               "(completion.require_lab_files = true)", "",
                               ctx.log.bind(session=sess.session))
        elif facts.finished or facts.lab_files_present:
            ctx.ledger.clear_problem(sess.id, Problem.WAITING_FOR_LAB_FILES)

