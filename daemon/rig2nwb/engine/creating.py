"""Creating a session's NWB file from its first TIFF: metadata from config.toml and the
sidecars, overridden by what the ScanImage header says, and the start time from the data.

The identifier is recorded in the ledger once the name is found free, before the file is made: a
file found under the name later is this session's own (a crash between the rename and the
ledger's commit) only when it carries this identifier, or when it is unreadable (torn while
published: set aside, never deleted). Any other file there is never replaced."""

from __future__ import annotations

import os
import time
from pathlib import Path, PurePosixPath

from rig2nwb.core.admission import shape_text, start_time
from rig2nwb.engine.context import Context
from rig2nwb.errors import MetadataProblem, NwbExists
from rig2nwb.ledger.rows import FileRow, SessionRow
from rig2nwb.logs import Logger
from rig2nwb.nwb.writer import NewFile, create_nwb, existing_identifier, new_identifier
from rig2nwb.rig.acquisition import FileAcquisition
from rig2nwb.rig.sidecars import load_metadata
from rig2nwb.rig.tiffs import TiffInfo
from rig2nwb.states import Problem, SessionState


def create_session_file(ctx: Context, sess: SessionRow, row: FileRow, info: TiffInfo,
                        acq: FileAcquisition, log: Logger) -> SessionRow | None:
    """Create the session's NWB file from ``row``, its first file. None when the metadata
    cannot be read or the name is taken (reported; the TIFFs wait until it is fixed)."""
    folder = (ctx.root / row.path).parent
    try:
        meta = load_metadata(ctx.cfg, folder)
    except MetadataProblem as exc:
        ctx.report.problem(sess, Problem.METADATA, f"{exc.message}; the NWB file is created once "
                           "it is fixed (the TIFFs wait, nothing is lost)", exc.file, log)
        return None
    for p in ctx.ledger.problems(sess.id):
        if p.code == Problem.METADATA:
            ctx.ledger.clear_problem(sess.id, Problem.METADATA, p.file)
    name = PurePosixPath(row.path).name
    si = acq.scanimage
    start, source = start_time(
        name, scanimage_start=si.acquisition_start if si is not None else None,
        scanimage_version=si.version if si is not None else "",
        datetime_tag=info.datetime_tag, mtime_ns=info.mtime_ns, pages=info.pages,
        layout=acq.layout, tz=ctx.cfg.tz)
    ident = sess.identifier or new_identifier()
    path = Path(sess.nwb_path)
    theirs = existing_identifier(path)
    if theirs == "" and sess.identifier is not None:
        # Not a readable NWB file, where this session was being created: its own file, torn
        # (a power cut while it was published). Kept aside, never deleted; made again.
        aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
        os.replace(path, aside)
        ctx.report.warning(sess, Problem.NWB_REBUILT, f"{path.name}: not a readable NWB file "
                           f"where this session's file was being made (kept as {aside.name}); "
                           "made again from the TIFFs", "", log)
        theirs = None
    if theirs is not None and theirs != ident:
        ctx.report.problem(sess, Problem.OUTPUT_EXISTS, f"{path.name} already exists in "
                           f"{path.parent} and was not written for this session (identifier "
                           f"{theirs}); rig2nwb never replaces a file it does not own: move it "
                           "away (or change output.nwb_name) and the session is converted (the "
                           "TIFFs wait, nothing is lost)", "", log)
        return None
    ctx.ledger.clear_problem(sess.id, Problem.OUTPUT_EXISTS)
    if sess.identifier is None:
        # Recorded only now that the name was found free (or ours): a file found there later
        # without a readable identifier can only be this session's own, torn while published.
        # Recorded any earlier, a stranger's unreadable file would be taken for ours.
        ctx.ledger.update_session(sess.id, identifier=ident)
    spec = NewFile(path, ident, sess.subject, sess.session, start, source,
                   info.shape, info.dtype, acq.layout, meta, si, name)
    try:
        create_nwb(ctx.cfg, spec, replace_own=theirs == ident)
    except NwbExists as exc:
        ctx.report.problem(sess, Problem.OUTPUT_EXISTS, f"{exc}; the TIFFs wait, nothing is lost",
                           "", log)
        return None
    ctx.ledger.update_session(
        sess.id, nwb_created=1, identifier=ident, start_time=start.isoformat(),
        start_source=source, frame_shape=shape_text(info.shape), dtype=info.dtype,
        state=SessionState.ACQUIRING, site=ctx.index.tiffs[row.path].site,
        layout=acq.layout.to_json())
    used = f"; metadata from config.toml + {', '.join(meta.sources)}" if meta.sources else ""
    ctx.ledger.add_event(sess.id, "create", f"NWB file created: {sess.nwb_path} "
                         f"({len(acq.layout.series)} series: {acq.layout.describe()}){used}")
    log.info("nwb created", stage="create", nwb=sess.nwb_path, start_time=start.isoformat(),
             start_source=source, series=[s.name for s in acq.layout.series],
             layout=acq.layout.describe(), sidecars=list(meta.sources))
    return ctx.ledger.session_by_id(sess.id)
