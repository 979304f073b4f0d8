"""One-shot backfill of a finished session through the same engine the daemon uses."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rig2nwb.config.schema import Config
from rig2nwb.core.pagelayout import PageLayout
from rig2nwb.engine.engine import Engine
from rig2nwb.engine.quarantine import quarantine_text
from rig2nwb.errors import TiffProblem
from rig2nwb.ledger.store import Ledger, SessionRow
from rig2nwb.logs import get_logger
from rig2nwb.nwb.check import CheckSummary
from rig2nwb.service.loop import ledger_path, lock_state, open_verified


@dataclass(frozen=True)
class ConvertResult:
    ok: bool
    message: str
    nwb_paths: list[str]


def resolve_session_folder(cfg: Config, folder: Path) -> Path:
    """Accept a folder given absolute, relative to the working folder, or relative to rig.root."""
    for candidate in (folder, cfg.rig.root / folder):
        if candidate.is_dir():
            resolved = candidate.resolve()
            try:
                inside = resolved.relative_to(cfg.rig.root.resolve())
            except ValueError:
                raise ValueError(f"{folder} is not inside rig.root ({cfg.rig.root}); "
                                 "patterns are matched relative to rig.root") from None
            # Spelled from rig.root (which may itself be a link, the admin's choice): the rig
            # is then read from there, through rigfs, never through a link below it.
            return cfg.rig.root / inside
    raise ValueError(f"{folder}: no such folder")


def after_one_shot(cfg: Config, engine: Engine, since_event: int, *, notify: bool) -> None:
    """What a one-shot command (convert, attach) does once its work is done, as the daemon
    would: the notifications of its events are sent (``notify``), or marked done so that a
    daemon started later does not send them; and the status page and its JSON are rewritten
    (the summary pictures were drawn by the check child already). Never raises: the work is
    done, a page that cannot be written is a warning."""
    from rig2nwb.outputs.notify import NotifyHook

    log = get_logger("rig2nwb.oneshot")
    try:
        if notify:
            NotifyHook(cfg).deliver_now(engine, since_event)
        else:
            NotifyHook.mark_done(engine.ledger, since_event)
    except Exception as exc:  # the conversion is done; its notifications are not its result
        log.warning("notifications not sent", stage="notify", error=str(exc))
    if not cfg.status.page:
        return
    from rig2nwb.outputs.page import write_page

    try:
        write_page(cfg, running=False)
    except OSError as exc:
        log.warning("status page not written", stage="status", error=str(exc))


def convert(cfg: Config, folder: Path, *, progress: bool | None = None,
            notify: bool = False) -> ConvertResult:
    log = get_logger("rig2nwb.commands.convert")
    scope = resolve_session_folder(cfg, folder)
    lock = lock_state(cfg)
    try:
        ledger = open_verified(ledger_path(cfg))
    except BaseException:
        lock.release()
        raise
    bar = None
    try:
        since_event = ledger.last_event_id()
        engine = Engine(cfg, ledger, convert_scope=scope)
        engine.recover()
        engine.full_scan()
        if not engine.tiffs:
            return ConvertResult(False, f"no TIFFs under {scope} match rig.frames "
                                 f"({cfg.rig.frames})", [])
        total = _pending_frames(engine, ledger)
        use_bar = sys.stderr.isatty() if progress is None else progress
        if use_bar and total:
            from tqdm import tqdm
            bar = tqdm(total=total, unit="frame", desc="converting", file=sys.stderr)
            engine.on_frames = bar.update
        while engine.step():
            pass
        while engine.checks_pending():  # validation of the finished files, in a child process
            engine.run_checks()
            time.sleep(0.1)
        engine.close()
        after_one_shot(cfg, engine, since_event, notify=notify)
        keys = {o.key for o in engine.tiffs.values()}
        sessions = [s for s in ledger.sessions() if (s.subject, s.session) in keys]
        failed: list[str] = []
        for s in sessions:
            for r in ledger.files(s.id):
                if r.path in engine.tiffs and r.state != "committed":
                    failed.append(f"{PurePosixPath(r.path).name}: {r.error or r.state}")
        sessions = [ledger.session_by_id(s.id) for s in sessions]
        quarantined = [s for s in sessions if s.quarantined]
        if quarantined:
            log.error("convert stopped: session quarantined", stage="convert")
            return ConvertResult(False, quarantine_text(quarantined[0]),
                                 [s.nwb_path for s in sessions if s.nwb_created])
        paths = [s.nwb_path for s in sessions if s.nwb_created]
        frames = sum(ledger.frames_committed(s.id) for s in sessions)
        summary = "; ".join(_what_was_written(ledger, s) for s in sessions if s.nwb_created)
        checks = {s.nwb_path: CheckSummary.from_json(s.validation) for s in sessions if s.validation}
        bad_checks = [f"{Path(path).name}: {c.short()}" for path, c in checks.items() if not c.ok]
        if failed:
            log.error("convert incomplete", stage="convert", failed=len(failed))
            more = f" (and {len(failed) - 1} more; see rig2nwb status)" if len(failed) > 1 else ""
            return ConvertResult(False, f"incomplete: {len(failed)} of {len(engine.tiffs)} TIFF(s) "
                                 f"not appended: {failed[0]}{more}", paths)
        log.info("convert done", stage="convert", frames=frames, nwb=paths)
        if bad_checks:
            return ConvertResult(False, f"written, but the file check found problems: "
                                 f"{'; '.join(bad_checks)} ({summary})", paths)
        return ConvertResult(True, summary, paths)
    finally:
        if bar is not None:
            bar.close()
        ledger.close()
        lock.release()


def _what_was_written(ledger: Ledger, s: SessionRow) -> str:
    """'52 frames in X.nwb', or for several series '1600 pages -> 9 series x 100 frames in X'."""
    pages = ledger.frames_committed(s.id)
    layout = PageLayout.from_json(s.layout) if s.layout else PageLayout()
    kept = layout.complete(pages) if s.state == "finished" else pages
    counts = sorted({layout.count(i, kept) for i in range(len(layout.series))})
    if len(layout.series) == 1:
        text = f"{counts[0]} frames in {s.nwb_path}"
    else:
        per = "/".join(map(str, counts))
        text = f"{pages} pages -> {len(layout.series)} series x {per} frames in {s.nwb_path}"
    if s.validation:
        text += f" (checked: {CheckSummary.from_json(s.validation).short()})"
    return text


def _pending_frames(engine: Engine, ledger: Ledger) -> int:
    """Frames still to append (inspecting now; the engine reuses these inspections)."""
    total = 0
    for rel, obs in sorted(engine.tiffs.items()):
        row = ledger.file(rel)
        if row is not None and row.state == "committed" and (row.size, row.mtime_ns) == (
                obs.size, obs.mtime_ns):
            continue
        try:
            info = engine.inspect_file(rel, obs.file_id)
        except TiffProblem as exc:
            engine.inspected[rel] = (obs.size, obs.mtime_ns, exc)
            continue
        engine.inspected[rel] = (obs.size, obs.mtime_ns, info)
        total += info.pages - (row.frames_committed if row and row.state == "appending" else 0)
    return total
