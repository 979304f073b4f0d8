"""``rig2nwb demo``: a simulated rig feeding the real daemon, ending with a finished NWB file.

The rig writes TIFFs page by page in real time into the configured rig folder, then the lab's
scan and trial files; the daemon (the same Service as ``rig2nwb run``) converts them as they
complete. At the end the NWB file is read back with pynwb and compared with the rig's frames.

``--suite2p`` closes the loop: once the session is finished and checked, rig2nwb starts real
suite2p on it (suite2p.run.executor = "local", the default job command), attaches the ROIs and
traces, and draws the summary picture again with the ROIs on it. suite2p must be importable by
this Python (``pip install 'rig2nwb[suite2p]'``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from rig2nwb.config.paths import status_html, status_json, summary_png
from rig2nwb.config.schema import Config
from rig2nwb.core.patterns import Pattern
from rig2nwb.engine.engine import Engine
from rig2nwb.errors import UsageError
from rig2nwb.logs import get_logger
from rig2nwb.outputs.status import collect, render_table
from rig2nwb.service.loop import Service
from rig2nwb.service.priority import lower_priority
from rig2nwb.states import JobState, SessionState, Suite2pState
from rig2nwb.testing.simrig import MovieSpec, SimSession


@dataclass(frozen=True)
class DemoOptions:
    files: int = 3
    frames_per_file: int = 150
    size: int = 512
    rate: float = 30.0
    subject: str = "mouse01"
    site: str = "site1"
    timeout_seconds: float = 600.0
    suite2p: bool = False


def concrete_path(pattern: Pattern, stem: str, **values: str) -> str:
    """A real file path that matches ``pattern``: wildcards filled with ``stem``."""
    text = pattern.render(**values)
    text = text.replace("*", stem, 1).replace("*", "").replace("?", "x")
    if pattern.match(text) is None:
        raise UsageError(f"cannot make a file name for pattern {pattern.text!r}; the demo needs a "
                         "frames pattern whose file name part is a simple wildcard like '*.tif'")
    return text


def plan_session(cfg: Config, opts: DemoOptions, session: str) -> SimSession:
    values = {"subject": opts.subject, "site": opts.site, "session": session}
    root = cfg.rig.root
    tiffs = [root / concrete_path(cfg.frames_pattern, f"{session}_{i + 1:05d}", **values)
             for i in range(opts.files)]
    scan = root / cfg.pattern(cfg.rig.scan_file).render(**values) if cfg.rig.scan_file else None
    trial = root / cfg.pattern(cfg.rig.trial_file).render(**values) if cfg.rig.trial_file else None
    return SimSession(tiff_paths=tiffs, frames_per_file=opts.frames_per_file,
                      movie=MovieSpec(shape=(opts.size, opts.size), rate=opts.rate),
                      scan_path=scan, trial_path=trial, realtime=True, tz=cfg.tz)


def run_demo(cfg: Config, opts: DemoOptions) -> int:
    cfg = demo_config(cfg, opts)
    log = get_logger("rig2nwb.commands.demo")
    session = datetime.now().strftime("%Y%m%d_%H%M%S")
    sim = plan_session(cfg, opts, session)
    for folder in (cfg.rig.root, cfg.output.folder, cfg.state.folder):
        folder.mkdir(parents=True, exist_ok=True)
    print(f"rig folder:    {cfg.rig.root}\noutput folder: {cfg.output.folder}\n"
          f"simulating session {opts.subject}/{session}: {opts.files} TIFFs x "
          f"{opts.frames_per_file} frames of {opts.size}x{opts.size} int16 at {opts.rate:g} Hz "
          f"(~{opts.files * opts.frames_per_file / opts.rate:.0f} s of acquisition)", flush=True)

    rig_error: list[BaseException] = []
    rig_stop = threading.Event()

    def rig() -> None:
        try:
            sim.write(stop=rig_stop)
            log.info("simulated rig finished writing", stage="simrig", session=session)
        except BaseException as exc:  # surfaced in the main thread
            rig_error.append(exc)

    service = Service(cfg)
    service.install_signal_handlers()
    deadline = time.monotonic() + opts.timeout_seconds

    def finished(engine: Engine) -> bool:
        if rig_error or time.monotonic() > deadline:
            return True
        row = engine.ledger.session(opts.subject, session)
        # finished, and its file checked (pynwb validator + nwbinspector) unless that is off
        done = row is not None and row.state == SessionState.FINISHED and (
            row.validation is not None or not cfg.output.check_files)
        if not done or not opts.suite2p or row is None:
            return done
        # --suite2p: until the results are attached and the file checked again, or the job
        # ended without results.
        job = engine.ledger.latest_jobs().get(row.id)
        s2p = engine.ledger.suite2p(row.id)
        if job is not None and job.state in (JobState.FAILED, JobState.CANCELLED,
                                             JobState.LOST):
            return True
        return s2p is not None and (s2p.state == Suite2pState.PROBLEM or (
            (s2p.state == Suite2pState.ATTACHED and engine.ledger.session_by_id(row.id).validation
            is not None) or not cfg.output.check_files))

    rig_thread = threading.Thread(target=rig, name="simrig", daemon=True)
    rig_thread.start()
    # The daemon part runs at service.nice, as `rig2nwb run`'s worker does (the simulated rig
    # keeps its priority: it stands for the acquisition).
    lower_priority(cfg.service.nice, exclude=frozenset({rig_thread.native_id or 0}))
    try:
        service.run(until=finished)
    finally:
        rig_stop.set()
        rig_thread.join(timeout=10)
    if rig_error:
        print(f"rig2nwb demo: the simulated rig failed: {rig_error[0]}")
        return 1
    rows = [r for r in collect(cfg) if r["session"] == session]
    if not rows or rows[0]["state"] != "finished":
        print("rig2nwb demo: the session did not finish in time (see the log above)")
        print(render_table(collect(cfg)))
        return 1
    ok = _read_back(Path(rows[0]["nwb_path"]), sim)
    if rows[0]["validation"]:
        print(f"  checked with pynwb's validator and nwbinspector: {rows[0]['validation']}")
    print("\nstatus (rig2nwb status):")
    print(render_table(collect(cfg), tz=cfg.tz))
    # What an experimenter opens from the share (the page is kept while the daemon runs).
    picture = summary_png(cfg, opts.subject, session)
    if picture.exists():
        print(f"\nsummary picture: {picture}")
    if status_html(cfg).exists():
        print(f"status page:     {status_html(cfg)}  (+ {status_json(cfg).name})")
    if opts.suite2p:
        ok = _suite2p_outcome(rows[0]) and ok
    return 0 if ok and rows[0]["validation_ok"] is not False else 1


def demo_config(cfg: Config, opts: DemoOptions) -> Config:
    """With ``--suite2p``: jobs on this machine, results beside the NWB files (the rig folder
    stays as the rig wrote it), looked for every 2 s. UsageError without suite2p."""
    if not opts.suite2p:
        return cfg
    import importlib.util

    if importlib.util.find_spec("suite2p") is None:
        raise UsageError("demo --suite2p runs real suite2p, which this Python cannot import; "
                         "install it with: pip install 'rig2nwb[suite2p]'")
    raw = cfg.model_dump(mode="json")
    raw["suite2p"].update(enabled=True, interval_seconds=2.0, settle_seconds=0.0,
                          folder=str(cfg.output.folder / "suite2p" / "{subject}" / "{session}"))
    raw["suite2p"]["run"].update(executor="local", poll_seconds=1.0, local_launcher="process")
    from rig2nwb.config.loading import validate_config

    return validate_config(raw, base=Path.cwd(), source="demo")


def _suite2p_outcome(row: dict[str, Any]) -> bool:
    job, s2p = row.get("processing"), row.get("suite2p")
    if job is None:
        print("suite2p: no job was started (see the log)")
        return False
    print(f"suite2p job ({job['executor']} {job['job_id']}): {job['state']}; log: {job['log']}")
    if s2p is None or s2p["state"] != "attached":
        print(f"suite2p results: {s2p['state'] + ': ' + s2p['detail'] if s2p else 'none'}")
        return False
    print(f"suite2p results attached: {s2p['rois']} ROIs, {s2p['cells']} cells "
          f"({s2p['planes']} plane(s)); the summary picture shows them")
    return True


def _read_back(path: Path, sim: SimSession) -> bool:
    import hdf5plugin  # noqa: F401  (registers the Blosc filter for readers)
    from pynwb import NWBHDF5IO

    from rig2nwb.nwb.writer import describe_compression

    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        tps = nwb.acquisition["TwoPhotonSeries"]
        data, stamps = tps.data, tps.get_timestamps()
        same: bool = True
        pos = 0
        for i in range(len(sim.tiff_paths)):
            for frame in sim.expected_frames(i):
                same &= bool(np.array_equal(data[pos], frame))
                pos += 1
        same &= bool(data.shape[0] == pos)
        print(f"\nNWB file: {path}")
        print(f"  identifier {nwb.identifier}, session start {nwb.session_start_time.isoformat()}")
        print(f"  subject {nwb.subject.subject_id} ({nwb.subject.species}); device "
              f"{next(iter(nwb.devices))}; imaging plane {tps.imaging_plane.name} "
              f"({tps.imaging_plane.indicator}, {tps.imaging_plane.location})")
        print(f"  TwoPhotonSeries: {data.shape[0]} frames of {data.shape[1]}x{data.shape[2]} "
              f"{data.dtype}, timestamps {stamps[0]:.3f} .. {stamps[-1]:.3f} s, "
              f"compression {describe_compression(data)}")
        print(f"  {tps.comments}")
        if nwb.trials is not None:
            print(f"  trials: {len(nwb.trials)} ({', '.join(nwb.trials.colnames)})")
        print(f"  frames identical to what the rig wrote: {'yes' if same else 'NO'}")
    return same
