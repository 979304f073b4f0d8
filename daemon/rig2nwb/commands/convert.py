"""``rig2nwb convert FOLDER``: one-shot backfill of a finished session through the same engine
the daemon uses (service.oneshot)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rig2nwb.config.paths import resolve_session_folder
from rig2nwb.config.schema import Config
from rig2nwb.core.pagelayout import PageLayout
from rig2nwb.engine.engine import Engine
from rig2nwb.errors import TiffProblem
from rig2nwb.ledger.quarantine import quarantine_text
from rig2nwb.ledger.rows import SessionRow
from rig2nwb.ledger.store import Ledger
from rig2nwb.logs import Logger, get_logger
from rig2nwb.nwb.checksummary import CheckSummary
from rig2nwb.service.oneshot import after_one_shot, finish_checks, one_shot
from rig2nwb.states import FileState, SessionState


@dataclass(frozen=True)
class ConvertResult:
    ok: bool
    message: str
    nwb_paths: list[str]


def convert(cfg: Config, folder: Path, *, progress: bool | None = None,
            notify: bool = False) -> ConvertResult:
    log = get_logger("rig2nwb.commands.convert")
    scope = resolve_session_folder(cfg, folder)
    bar = None
    with one_shot(cfg, scope=scope) as run:
        engine, ledger = run.engine, run.ledger
        try:
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
            finish_checks(engine)
        finally:
            if bar is not None:
                bar.close()
        after_one_shot(cfg, run, notify=notify)
        return _result(engine, ledger, log)


def _result(engine: Engine, ledger: Ledger, log: Logger) -> ConvertResult:
    keys = {o.key for o in engine.tiffs.values()}
    sessions = [s for s in ledger.sessions() if (s.subject, s.session) in keys]
    failed: list[str] = []
    for s in sessions:
        for r in ledger.files(s.id):
            if r.path in engine.tiffs and r.state != FileState.COMMITTED:
                failed.append(f"{PurePosixPath(r.path).name}: {r.error or r.state}")
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


def _what_was_written(ledger: Ledger, s: SessionRow) -> str:
    """'52 frames in X.nwb', or for several series '1600 pages -> 9 series x 100 frames in X'."""
    pages = ledger.frames_committed(s.id)
    layout = PageLayout.from_json(s.layout) if s.layout else PageLayout()
    kept = layout.complete(pages) if s.state == SessionState.FINISHED else pages
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
        if row is not None and row.state == FileState.COMMITTED and (row.size, row.mtime_ns) == (
                obs.size, obs.mtime_ns):
            continue
        try:
            info = engine.inspect_file(rel, obs.file_id)
        except TiffProblem as exc:
            engine.inspected[rel] = (obs.size, obs.mtime_ns, exc)
            continue
        engine.inspected[rel] = (obs.size, obs.mtime_ns, info)
        total += info.pages - (row.frames_committed if row and row.state == FileState.APPENDING else 0)
    return total
