#!/usr/bin/env python3
"""Batch conversion of one session, side by side: rig2nwb, NeuroConv, plain h5py and cp.

The same synthetic session (512x512 int16 frames) is written twice, as ScanImage 2016+ multi-file
runs (``<base>_00001_0000k.tif``) and as plain one-page-per-frame TIFFs, and each method converts
it in its own child process, measured the same way (wall to data on disk, CPU, peak RSS):

* ``rig2nwb convert`` at output.compression none, gzip (level 4), its default (nothing set:
  gzip 1 after HDF5's byte shuffle, compressed on every core) and blosc-lz4 (the old default);
* NeuroConv 0.10 (``benchmarks/.venv-peers``): ``ScanImageImagingInterface`` on the ScanImage
  files, ``TiffImagingInterface`` on the plain ones, at its default backend configuration (gzip 4)
  and with compression off;
* a plain h5py append of the plain TIFFs (the practical limit), uncompressed and gzip 4;
* ``cp`` of the TIFFs (the disk's own figure).

Every output is checked against the TIFF pages (first, middle, last frame). It prints figures and
asserts nothing: the exit status is 1 only when a run failed or an output check failed.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

# Module level: only what the peers venv also has (numpy, tifffile, psutil), because the NeuroConv
# child runs this module with the peers venv's Python, which has neither rig2nwb nor hdf5plugin.
from benchmarks.kit import h5append
from benchmarks.kit.childrun import Measured, failure_text, measure, sync_disks
from benchmarks.kit.daemonlog import read_json_lines
from benchmarks.kit.filters import BLOSC_CODECS, BLOSC_FILTER
from benchmarks.kit.frames import (
    FRAME_BYTES,
    FRAME_SHAPE,
    FRAMES_PER_FILE,
    SUBJECT,
    Dataset,
    FrameSource,
    cache_note,
    child_timeout,
    write_dataset,
)
from benchmarks.kit.machine import environment_lines, git_state, versions
from benchmarks.kit.paths import PEERS_PYTHON, command_line, make_workdir, module_command, module_env
from benchmarks.kit.report import say
from benchmarks.kit.scanimage_synth import Acquisition, write_scanimage_tiff

MODULE = "benchmarks.batch_convert"
FORMATS = ("scanimage", "plain")
FRAME_RATE = 30.0
# Each method family and the settings it runs at (the first word of a --methods token).
SETTINGS: dict[str, tuple[str, ...]] = {
    # default: output.compression left unset, rig2nwb's default (gzip 1 + shuffle)
    "rig2nwb": ("none", "gzip", "default", "blosc-lz4"),
    "neuroconv": ("default", "none"),
    "h5py": ("none", "gzip"),
    "cp": ("copy",),
}
RIG2NWB_DEFAULT = "default"
RIG2NWB_DEFAULT_LABEL = "gzip 1 + shuffle"  # what rig2nwb's default compression is
GZIP_LEVEL = 4  # h5py's default gzip level, which NeuroConv's default configuration uses
NEUROCONV_CHILD = "_neuroconv-convert"  # hidden subcommand: the measured NeuroConv child
SESSION_START = datetime(2025, 3, 14, 10, 30, 5, tzinfo=UTC)  # plain TIFFs carry none
COLUMNS = ["format", "method", "compression", "wall s", "MB/s", "ratio to limit", "CPU s",
           "peak RSS MB", "output MB", "raw/out", "check"]
# Goals of issue 7 (figures are reported, never asserted)
NONE_GOAL, GZIP_GOAL, DEFAULT_GOAL = 5.0, 2.0, 10.0
RSS_GOAL_MB, RATIO_OF_GZIP_GOAL, LIMIT_GOAL = 300.0, 0.9, 0.8


# --- data -------------------------------------------------------------------------------------


def write_scanimage_session(rig_root: Path, gb: float, source: FrameSource,
                            per_file: int) -> Dataset:
    """``gb`` GB of the same frames as write_dataset, as one ScanImage grab split into files of
    ``per_file`` frames: ``{subject}/{session}/{session}_00001_0000k.tif``."""
    frames = max(1, round(gb * 1e9 / FRAME_BYTES))
    session = f"si_{gb:g}gb".replace(".", "p")
    folder = rig_root / SUBJECT / session
    folder.mkdir(parents=True)
    acq = Acquisition(shape=FRAME_SHAPE, frame_rate=FRAME_RATE, frames_per_file=per_file)
    tiffs: list[Path] = []
    for k, start in enumerate(range(0, frames, per_file)):
        stop = min(frames, start + per_file)
        path = folder / f"{session}_00001_{k + 1:05d}.tif"
        write_scanimage_tiff(path, (source.frame(g) for g in range(start, stop)), stop - start,
                             start, k, acq)
        tiffs.append(path)
    return Dataset(f"{gb:g} GB", session, folder, tuple(tiffs), frames)


@dataclass(frozen=True)
class Session:
    fmt: str  # scanimage | plain
    ds: Dataset
    rig_root: Path
    frames_pattern: str  # rig2nwb's rig.frames for this layout
    frames_per_file: int

    def page(self, g: int, tiffs: Sequence[Path] | None = None) -> np.ndarray:
        """Frame ``g`` as its TIFF page (of ``tiffs``: copies of the session's files)."""
        path = (tiffs or self.ds.tiffs)[g // self.frames_per_file]
        with tifffile.TiffFile(path) as tf:
            page: np.ndarray = tf.pages[g % self.frames_per_file].asarray()
        return page


def make_session(fmt: str, gb: float, workdir: Path, source: FrameSource,
                 si_per_file: int) -> Session:
    rig_root = workdir / f"rig-{fmt}"
    if fmt == "scanimage":
        return Session(fmt, write_scanimage_session(rig_root, gb, source, si_per_file), rig_root,
                       "{subject}/{session}/*.tif", si_per_file)
    # write_dataset's layout is rig2nwb's default one: {subject}/tif/{site}/{session}/*.tif
    return Session(fmt, write_dataset(rig_root, gb, source), rig_root,
                   "{subject}/tif/{site}/{session}/*.tif", FRAMES_PER_FILE)


# --- the measured children ----------------------------------------------------------------------


def neuroconv_child(argv: Sequence[str]) -> int:
    """Runs in the peers venv: one NeuroConv imaging interface converts the files to a new NWB."""
    t0 = time.perf_counter()
    p = argparse.ArgumentParser(prog=f"python -m {MODULE} {NEUROCONV_CHILD}")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--setting", choices=SETTINGS["neuroconv"], required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--result", type=Path, required=True)
    p.add_argument("tiffs", type=Path, nargs="+")
    args = p.parse_args(argv)

    # Installed only in the peers venv, not where mypy runs.
    from neuroconv.datainterfaces import (  # type: ignore[import-not-found, unused-ignore]
        ScanImageImagingInterface,
        TiffImagingInterface,
    )

    t_import = time.perf_counter()
    interface: Any
    if args.format == "scanimage":
        # file_paths, not file_path: NeuroConv 0.10.2 turns file_path into [file_path], which
        # switches off roiextractors' detection of the run's other files (only file 1 converts).
        interface = ScanImageImagingInterface(file_paths=args.tiffs)
    else:
        interface = TiffImagingInterface(file_paths=args.tiffs, sampling_frequency=FRAME_RATE)
    metadata = interface.get_metadata()
    if "session_start_time" not in metadata["NWBFile"]:  # plain TIFFs state none; it is required
        metadata["NWBFile"]["session_start_time"] = SESSION_START
    t_init = time.perf_counter()
    # The documented way to change the backend settings: build the default configuration from an
    # in-memory file, edit it, and pass it to run_conversion (datasets are matched by location).
    config = interface.get_default_backend_configuration(
        nwbfile=interface.create_nwbfile(metadata=metadata), backend="hdf5")
    stored = {}
    for loc, dataset_config in config.dataset_configurations.items():
        if args.setting == "none":
            for attr in ("compression_method", "compressors"):  # the name changed across versions
                if hasattr(dataset_config, attr):
                    setattr(dataset_config, attr, None)
        stored[loc] = {"chunks": list(dataset_config.chunk_shape),
                       "buffer": list(dataset_config.buffer_shape)}
    t_config = time.perf_counter()
    interface.run_conversion(nwbfile_path=args.out, metadata=metadata, overwrite=True,
                             backend_configuration=config)
    t_end = time.perf_counter()
    n_files = len(getattr(interface.imaging_extractor, "file_paths", args.tiffs))
    args.result.write_text(json.dumps({
        "phases": {"import": t_import - t0, "init": t_init - t_import,
                   "configure": t_config - t_init, "write": t_end - t_config},
        "files_read": n_files, "datasets": stored}))
    return 0


# --- running and checking the methods -----------------------------------------------------------


@dataclass
class Row:
    fmt: str
    family: str  # rig2nwb | neuroconv | h5py | cp
    setting: str
    raw_bytes: int
    m: Measured | None = None
    sync_s: float = 0.0  # the os.sync() after the child, part of the reported wall
    output_bytes: int | None = None
    check: str = ""
    stored: str = ""  # how the output stores the frames (filter, chunks), as read back
    phases: dict[str, float] = field(default_factory=dict)
    runs: int = 1
    cached: str = ""  # share of the source TIFFs in the page cache just before the run

    @property
    def ok(self) -> bool:
        return self.m is not None and self.m.rc == 0 and self.check.startswith("OK")

    @property
    def wall(self) -> float | None:
        """Seconds to data on disk: the child's wall time plus the sync after it."""
        return None if self.m is None else self.m.wall + self.sync_s

    @property
    def mbps(self) -> float | None:
        w = self.wall
        return self.raw_bytes / 1e6 / w if w else None

    @property
    def ratio(self) -> float | None:  # raw/out
        return self.raw_bytes / self.output_bytes if self.output_bytes else None

    @property
    def method(self) -> str:
        if self.family == "neuroconv":
            return ("NeuroConv ScanImageImagingInterface" if self.fmt == "scanimage"
                    else "NeuroConv TiffImagingInterface")
        return {"rig2nwb": "rig2nwb convert", "h5py": "h5py append", "cp": "cp + sync"}[self.family]

    @property
    def compression(self) -> str:
        """Compression as the table shows it: 'gzip 4', 'none', 'gzip 1 + shuffle (default)'."""
        if self.family == "cp":
            return "-"
        if self.family == "neuroconv":
            return f"gzip {GZIP_LEVEL} (default)" if self.setting == "default" else "none"
        if self.family == "rig2nwb" and self.setting == RIG2NWB_DEFAULT:
            return f"{RIG2NWB_DEFAULT_LABEL} (default)"
        return f"gzip {GZIP_LEVEL}" if self.setting == "gzip" else self.setting

    @property
    def codec(self) -> str:
        """What the output is compressed with: none, gzip (level 4), gzip-1 (rig2nwb's default)
        or blosc-lz4 (for the limits: only none and gzip have an h5py append at the same
        settings; the others are compared with the uncompressed one)."""
        if self.family == "neuroconv":
            return "gzip" if self.setting == "default" else "none"
        if self.family == "rig2nwb" and self.setting == RIG2NWB_DEFAULT:
            return "gzip-1"
        return "none" if self.family == "cp" else self.setting


def timed_child(cmd: Sequence[str], run_dir: Path, timeout: float,
                env: dict[str, str] | None = None) -> tuple[Measured, float]:
    """measure() (which syncs before), then os.sync() timed: every method ends with its data on
    disk, whatever it fsyncs itself (rig2nwb and the h5py limit fsync per file, NeuroConv and
    cp do not)."""
    m = measure(cmd, run_dir, timeout, env)
    t = time.perf_counter()
    sync_disks()
    return m, time.perf_counter() - t


def storage_text(data: Any) -> str:
    """The dataset's filters as read back ('gzip 4', 'blosc', 'none') and its chunk shape."""
    plist = data.id.get_create_plist()
    names = []
    for i in range(plist.get_nfilters()):
        code, _flags, values, name = plist.get_filter(i)
        label = name.decode(errors="replace").split()[0] or str(code)
        if code == 1 and values:  # deflate (gzip) and its level
            label += f" {values[0]}"
        elif code == BLOSC_FILTER and len(values) > 6:  # cd_values[6]: the compressor
            label += f"-{BLOSC_CODECS.get(values[6], values[6])} {values[4]}"
        names.append(label)
    return f"{' + '.join(names) or 'none'}, chunks {data.chunks}"


def check_frames(data: Any, s: Session, tiffs: Sequence[Path] | None = None) -> str:
    """First, middle and last frame against the TIFF pages. NWB's TwoPhotonSeries stores frames as
    (time, x, y) and NeuroConv transposes the pages to that; rig2nwb and h5py store the pages as
    they are. Either orientation passes, but the same one for every frame."""
    frames = s.ds.frames
    if tuple(data.shape) != (frames, *FRAME_SHAPE):
        return f"MISMATCH shape {tuple(data.shape)}, expected {(frames, *FRAME_SHAPE)}"
    transposed: bool | None = None
    for g in sorted({0, frames // 2, frames - 1}):
        got, want = np.asarray(data[g]), s.page(g, tiffs)
        as_page, as_xy = np.array_equal(got, want), np.array_equal(got.T, want)
        if transposed is None and (as_page or as_xy):
            transposed = not as_page
        if not (as_xy if transposed else as_page):
            return f"MISMATCH frame {g}"
    return "OK (stored transposed: (t, x, y))" if transposed else "OK"


def check_output(path: Path, s: Session) -> tuple[str, str]:
    """(check, storage) of an HDF5/NWB output: its one 3-D dataset of the session's length under
    /acquisition (or /data for the h5py limit)."""
    import h5py
    import hdf5plugin  # noqa: F401  (registers the Blosc filter rig2nwb writes with)

    frames = s.ds.frames
    found: list[str] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and obj.ndim == 3 and obj.shape[0] == frames:
            found.append(name)

    try:
        with h5py.File(path, "r") as f:
            if "data" in f:
                found.append("data")
            elif "acquisition" in f:
                f["acquisition"].visititems(lambda n, o: visit(f"acquisition/{n}", o))
            if len(found) != 1:
                return f"MISMATCH: {len(found)} 3-D datasets of {frames} frames", ""
            data = f[found[0]]
            return check_frames(data, s), f"{found[0]}: {storage_text(data)}"
    except (OSError, KeyError, ValueError) as exc:
        return f"MISMATCH ({exc})", ""


def scanimage_recognised(nwb: Path, run_dir: Path) -> str | None:
    """Why rig2nwb did not treat the files as ScanImage, or None if it did: its 'nwb created' log
    line names the ScanImage epoch as the start time source, and the NWB device says ScanImage."""
    import h5py

    created = [r for r in read_json_lines(run_dir / "stderr.log") if r.get("event") == "nwb created"]
    source = str(created[0].get("start_source", "")) if created else ""
    with h5py.File(nwb, "r") as f:
        devices = f.get("general/devices")
        texts = [str(d.attrs.get("description", "")) for d in devices.values()] if devices else []
    if "ScanImage" not in source:
        return f"start time source is {source or '?'!r}, not the ScanImage header"
    if not any("ScanImage" in t for t in texts):
        return "no NWB device description mentions ScanImage"
    return None


def finish(row: Row, out: Path | None, s: Session, run_dir: Path, keep: bool) -> Row:
    """Check the output, then delete it (the disk holds two sessions of TIFFs already)."""
    assert row.m is not None
    if row.m.rc != 0:
        row.check = failure_text(row.m, run_dir)
    elif out is None or not out.exists():
        row.check = "MISMATCH: no output file"
    else:
        row.output_bytes = out.stat().st_size
        row.check, row.stored = check_output(out, s)
        if row.check.startswith("OK") and row.family == "rig2nwb" and s.fmt == "scanimage":
            why = scanimage_recognised(out, run_dir)
            row.check = f"MISMATCH: not read as ScanImage ({why})" if why else row.check
    if out is not None and out.exists():
        if keep:
            shutil.move(out, run_dir / out.name)
        else:
            out.unlink()
    return row


def write_config(path: Path, s: Session, output: Path, state: Path, compression: str) -> None:
    """A rig2nwb config: only rig, output, state, subject and logging; the rest is the default
    (compression ``default``: output.compression and its level are not set at all)."""
    from rig2nwb.testing.configs import write_config as write_toml  # not in the peers venv

    chosen: dict[str, Any] = {}
    if compression == "gzip":
        chosen = {"compression": compression, "compression_level": GZIP_LEVEL}
    elif compression != RIG2NWB_DEFAULT:
        chosen = {"compression": compression}
    write_toml(path, {
        "rig": {"name": "bench", "root": str(s.rig_root), "frames": s.frames_pattern,
                "scan_file": "", "trial_file": ""},
        # The post-session file check (pynwb validator + nwbinspector) is not the conversion.
        "output": {"folder": str(output), **chosen, "check_files": False},
        "state": {"folder": str(state)},
        "subject": {"age": "P90D"},
        "logging": {"level": "INFO", "format": "json"},
    }, comment="Written by benchmarks/batch_convert.py")


def run_rig2nwb(s: Session, setting: str, run_dir: Path, timeout: float, keep: bool) -> Row:
    row = Row(s.fmt, "rig2nwb", setting, s.ds.raw_bytes)
    out_dir = run_dir / "nwb"
    out_dir.mkdir(parents=True)  # output.folder must exist; a fresh ledger per run
    cfg = run_dir / "config.toml"
    write_config(cfg, s, out_dir, run_dir / "state", setting)
    cmd = [sys.executable, "-m", "rig2nwb", "convert", str(s.ds.folder), "--config", str(cfg),
           "--no-progress"]
    row.m, row.sync_s = timed_child(cmd, run_dir, timeout)
    logs = read_json_lines(run_dir / "stderr.log")
    appended = [float(r.get("seconds") or 0.0) for r in logs if r.get("event") == "tiff appended"]
    if appended:
        row.phases = {"appends": sum(appended)}
    nwbs = sorted(out_dir.glob("*.nwb"))
    finish(row, nwbs[0] if nwbs else None, s, run_dir, keep)
    shutil.rmtree(out_dir, ignore_errors=True)
    return row


def run_neuroconv(s: Session, setting: str, run_dir: Path, timeout: float, keep: bool) -> Row:
    row = Row(s.fmt, "neuroconv", setting, s.ds.raw_bytes)
    if not PEERS_PYTHON.exists():
        row.check = f"SKIPPED: {PEERS_PYTHON} missing (run: bash benchmarks/setup_peers.sh)"
        return row
    run_dir.mkdir(parents=True)
    out, result = run_dir / "neuroconv.nwb", run_dir / "result.json"
    cmd = module_command(MODULE, NEUROCONV_CHILD, "--format", s.fmt, "--setting", setting,
                         "--out", str(out), "--result", str(result), *map(str, s.ds.tiffs),
                         python=PEERS_PYTHON)
    row.m, row.sync_s = timed_child(cmd, run_dir, timeout, env=module_env())
    if result.exists():
        info = json.loads(result.read_text())
        row.phases = {k: float(v) for k, v in info["phases"].items()}
        if info.get("files_read") != len(s.ds.tiffs):
            row.check = f"MISMATCH: read {info.get('files_read')} of {len(s.ds.tiffs)} files"
    if row.check:
        return row
    return finish(row, out, s, run_dir, keep)


def run_h5py(s: Session, setting: str, run_dir: Path, timeout: float, keep: bool) -> Row:
    row = Row(s.fmt, "h5py", setting, s.ds.raw_bytes)
    run_dir.mkdir(parents=True)
    out, result = run_dir / "append.h5", run_dir / "result.json"
    cmd = h5append.command(out, result, s.ds.tiffs,
                           gzip_level=None if setting == "none" else GZIP_LEVEL)
    row.m, row.sync_s = timed_child(cmd, run_dir, timeout, env=module_env())
    loop_s = h5append.read_loop_seconds(result)
    if loop_s is not None:
        row.phases = {"loop": loop_s}
    return finish(row, out, s, run_dir, keep)


def run_cp(s: Session, setting: str, run_dir: Path, timeout: float, keep: bool) -> Row:
    row = Row(s.fmt, "cp", setting, s.ds.raw_bytes)
    dest = run_dir / "copy"
    dest.mkdir(parents=True)
    row.m, row.sync_s = timed_child(["cp", *map(str, s.ds.tiffs), str(dest)], run_dir, timeout)
    copies = [dest / p.name for p in s.ds.tiffs]
    if row.m.rc != 0:
        row.check = failure_text(row.m, run_dir)
    elif not all(c.exists() for c in copies):
        row.check = "MISMATCH: copies missing"
    else:
        row.output_bytes = sum(c.stat().st_size for c in copies)
        same = sum(p.stat().st_size for p in s.ds.tiffs) == row.output_bytes
        row.check = "MISMATCH: sizes differ" if not same else check_frames(_Pages(s, copies), s,
                                                                              copies)
        row.stored = "TIFF copies"
    if not keep:
        shutil.rmtree(dest, ignore_errors=True)
    return row


class _Pages:
    """Copies of a session's TIFFs, indexed like a (frames, rows, cols) dataset."""

    def __init__(self, s: Session, copies: Sequence[Path]) -> None:
        self._s, self._copies = s, copies
        self.shape = (s.ds.frames, *FRAME_SHAPE)

    def __getitem__(self, g: int) -> np.ndarray:
        return self._s.page(g, self._copies)


RUNNERS = {"rig2nwb": run_rig2nwb, "neuroconv": run_neuroconv, "h5py": run_h5py, "cp": run_cp}


def timeout_for(s: Session, setting: str, factor: float) -> float:
    # Generous: only a hung child should reach it. NeuroConv's default and gzip run at ~30 MB/s.
    slow = setting in ("gzip", "default")
    return factor * child_timeout(s.ds, "gzip" if slow else "none")


def median_row(rows: list[Row]) -> Row:
    """Repeats: the median wall time (with its CPU, sync and phases), the largest peak RSS and
    the first failure."""
    done = [r for r in rows if r.m is not None]
    if not done:
        return rows[0]
    ordered = sorted(done, key=lambda r: r.wall or math.inf)
    mid = ordered[(len(ordered) - 1) // 2]
    assert mid.m is not None
    bad = next((r for r in done if not r.ok), None)
    rss = max(r.m.peak_rss for r in done if r.m is not None)
    m = Measured(bad.m.rc if bad and bad.m else mid.m.rc, mid.m.wall, rss, mid.m.cpu)
    return Row(mid.fmt, mid.family, mid.setting, mid.raw_bytes, m, mid.sync_s, mid.output_bytes,
               bad.check if bad else mid.check, mid.stored, mid.phases, len(done), mid.cached)


# --- report -------------------------------------------------------------------------------------


def limit_for(row: Row, rows: list[Row]) -> Row | None:
    """The h5py append at the same compression (rig2nwb's default and blosc-lz4 rows and cp: the
    uncompressed one)."""
    codec = row.codec if row.codec in ("none", "gzip") else "none"
    return next((r for r in rows if r.family == "h5py" and r.setting == codec and r.ok), None)


def row_values(row: Row, rows: list[Row]) -> dict[str, Any]:
    limit = limit_for(row, rows)
    ratio = row.mbps / limit.mbps if limit and limit.mbps and row.mbps and row.ok else None
    m = row.m

    def r(v: float | None, nd: int) -> float | None:
        return None if v is None or math.isnan(v) else round(v, nd)

    return {
        "format": row.fmt, "method": row.method, "compression": row.compression,
        "wall s": r(row.wall, 2), "MB/s": r(row.mbps, 1), "ratio to limit": r(ratio, 2),
        "CPU s": r(m.cpu if m else None, 2),
        "peak RSS MB": r(m.peak_rss / 1e6 if m and m.peak_rss else None, 0),
        "output MB": r(row.output_bytes / 1e6 if row.output_bytes else None, 1),
        "raw/out": r(row.ratio, 3), "check": row.check,
        "child wall s": r(m.wall if m else None, 2), "sync s": round(row.sync_s, 2),
        "stored": row.stored, "phases s": {k: round(v, 2) for k, v in row.phases.items()},
        "runs": row.runs, "TIFFs cached before": row.cached,
    }


def table_lines(values: list[dict[str, Any]]) -> list[str]:
    widths = {"format": 10, "method": 36, "compression": 28, "wall s": 8, "MB/s": 7,
              "ratio to limit": 15, "CPU s": 8, "peak RSS MB": 12, "output MB": 10, "raw/out": 8}
    specs = {"wall s": ".2f", "MB/s": ".0f", "ratio to limit": ".2f", "CPU s": ".1f",
             "peak RSS MB": ".0f", "output MB": ".0f", "raw/out": ".2f"}

    def cell(col: str, v: Any) -> str:
        text = "-" if v is None else (format(v, specs[col]) if col in specs else str(v))
        w = widths[col]
        return text.rjust(w) if col in specs else text.ljust(w)

    head = "".join(cell(c, c) if c not in specs else c.rjust(widths[c]) for c in widths) + "  check"
    lines = [head, "-" * len(head)]
    for v in values:
        lines.append("".join(cell(c, v[c]) for c in widths) + "  " + v["check"])
    return lines


def find(rows: list[Row], fmt: str, family: str, setting: str) -> Row | None:
    return next((r for r in rows if r.fmt == fmt and r.family == family and r.setting == setting),
                None)


def speed_goal(rows: list[Row], fmt: str, ours_setting: str, theirs: tuple[str, str],
               target: float, label: str) -> dict[str, Any] | None:
    ours, peer = find(rows, fmt, "rig2nwb", ours_setting), find(rows, fmt, *theirs)
    if ours is None or peer is None:
        return None
    goal = f"{fmt}: {label}"
    if not (ours.ok and peer.ok) or not ours.mbps or not peer.mbps:
        who = "rig2nwb" if not ours.ok else "the comparison run"
        return {"goal": goal, "target": f">= {target:g}x", "met": None,
                "measured": f"not measured: {who} failed"}
    x = ours.mbps / peer.mbps
    return {"goal": goal, "target": f">= {target:g}x", "met": x >= target,
            "measured": f"{x:.2f}x ({ours.mbps:.0f} vs {peer.mbps:.0f} MB/s)"}


def goals(rows: list[Row]) -> list[dict[str, Any]]:
    out: list[dict[str, Any] | None] = []
    for fmt in FORMATS:
        out += [
            speed_goal(rows, fmt, "none", ("neuroconv", "none"), NONE_GOAL,
                       "equal settings, uncompressed: rig2nwb none vs NeuroConv none"),
            speed_goal(rows, fmt, "gzip", ("neuroconv", "default"), GZIP_GOAL,
                       f"equal settings, gzip {GZIP_LEVEL}: rig2nwb gzip {GZIP_LEVEL} vs NeuroConv "
                       f"(its default, gzip {GZIP_LEVEL})"),
            speed_goal(rows, fmt, RIG2NWB_DEFAULT, ("neuroconv", "default"), DEFAULT_GOAL,
                       f"default settings: rig2nwb ({RIG2NWB_DEFAULT_LABEL}) vs NeuroConv (gzip "
                       f"{GZIP_LEVEL})"),
        ]
        default, gz = find(rows, fmt, "rig2nwb", RIG2NWB_DEFAULT), find(rows, fmt, "rig2nwb", "gzip")
        if default and gz:
            goal = (f"{fmt}: default compression ratio within 10% of gzip's (raw/out of "
                    f"{RIG2NWB_DEFAULT_LABEL} >= {RATIO_OF_GZIP_GOAL} x raw/out of gzip "
                    f"{GZIP_LEVEL})")
            if default.ok and gz.ok and default.ratio and gz.ratio:
                x = default.ratio / gz.ratio
                out.append({"goal": goal, "target": f">= {RATIO_OF_GZIP_GOAL}",
                            "met": x >= RATIO_OF_GZIP_GOAL,
                            "measured": f"{x:.2f} ({default.ratio:.2f} vs {gz.ratio:.2f})"})
            else:
                out.append({"goal": goal, "target": f">= {RATIO_OF_GZIP_GOAL}", "met": None,
                            "measured": "not measured: a rig2nwb run failed"})
    ours = [r for r in rows if r.family == "rig2nwb" and r.m is not None and r.m.peak_rss]
    if ours:
        worst = max(ours, key=lambda r: r.m.peak_rss if r.m else 0)
        assert worst.m is not None
        peers = [r.m.peak_rss for r in rows if r.family == "neuroconv" and r.m and r.m.peak_rss]
        ref = f"; NeuroConv up to {max(peers) / 1e6:.0f} MB" if peers else ""
        out.append({"goal": f"rig2nwb peak RSS <= {RSS_GOAL_MB:.0f} MB (worst rig2nwb row)",
                    "target": f"<= {RSS_GOAL_MB:.0f} MB",
                    "met": worst.m.peak_rss / 1e6 <= RSS_GOAL_MB,
                    "measured": f"{worst.m.peak_rss / 1e6:.0f} MB ({worst.fmt} {worst.compression})"
                                f"{ref}"})
    ours_none, limit = find(rows, "plain", "rig2nwb", "none"), find(rows, "plain", "h5py", "none")
    if ours_none and limit:
        goal = "plain: uncompressed, rig2nwb none vs the plain h5py append"
        if ours_none.ok and limit.ok and ours_none.mbps and limit.mbps:
            x = ours_none.mbps / limit.mbps
            out.append({"goal": goal, "target": f">= {LIMIT_GOAL}x", "met": x >= LIMIT_GOAL,
                        "measured": f"{x:.2f}x ({ours_none.mbps:.0f} vs {limit.mbps:.0f} MB/s)"})
        else:
            out.append({"goal": goal, "target": f">= {LIMIT_GOAL}x", "met": None,
                        "measured": "not measured: a run failed"})
    return [g for g in out if g is not None]


def goal_line(g: dict[str, Any]) -> str:
    verdict = {True: "MET", False: "NOT MET", None: "n/a"}[g["met"]]
    return f"goal {g['goal']}: {g['measured']} (target {g['target']}) -> {verdict}"


# --- main ---------------------------------------------------------------------------------------


def parse_methods(text: str) -> list[tuple[str, str]]:
    """'rig2nwb,neuroconv:none,cp' -> [(family, setting), ...] in SETTINGS order."""
    wanted: set[tuple[str, str]] = set()
    for token in (t.strip() for t in text.split(",") if t.strip()):
        family, _, setting = token.partition(":")
        if family not in SETTINGS or (setting and setting not in SETTINGS[family]):
            raise ValueError(token)
        wanted |= {(family, s) for s in SETTINGS[family] if not setting or s == setting}
    return [(f, s) for f, ss in SETTINGS.items() for s in ss if (f, s) in wanted]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Batch conversion of one session, side by side: rig2nwb convert, NeuroConv, "
                    "a plain h5py append and cp. Prints figures; asserts nothing.")
    p.add_argument("--gb", type=float, help="session size in GB of raw frames (4.2; --quick 0.3)")
    p.add_argument("--si-frames-per-file", type=int,
                   help=f"frames per ScanImage file ({FRAMES_PER_FILE}; --quick 250, so the smoke "
                        f"test has a multi-file run; plain TIFFs always hold {FRAMES_PER_FILE})")
    p.add_argument("--formats", default=",".join(FORMATS),
                   help="session formats to write and convert (scanimage,plain)")
    p.add_argument("--methods", default=",".join(SETTINGS),
                   help="methods to run, comma-separated: family or family:setting; families and "
                        "settings: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in SETTINGS.items()))
    p.add_argument("--repeats", type=int, default=1,
                   help="interleaved runs of every method; median wall, largest peak RSS (1)")
    p.add_argument("--timeout-factor", type=float, default=1.0,
                   help="multiplies every child's timeout (120 s + the session at 10 MB/s for gzip "
                        "runs, 40 MB/s otherwise)")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the untimed cp + sync of each session after writing it")
    p.add_argument("--no-warm-cache", action="store_true",
                   help="do not read the TIFFs into the page cache before each run (then each "
                        "run finds whatever the VM left cached: see the fincore notes)")
    p.add_argument("--workdir", type=Path, help="a new batch-bench-* folder is made in it "
                   "(default: under /tmp); put it on the disk you want to measure")
    p.add_argument("--keep", action="store_true", help="keep the TIFFs and every output")
    p.add_argument("--json", type=Path, help="write the results in the shared JSON format")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: a 0.3 GB session (ScanImage: 2 files; options given win)")
    args = p.parse_args(argv)
    if args.gb is None:
        args.gb = 0.3 if args.quick else 4.2
    if args.si_frames_per_file is None:
        args.si_frames_per_file = 250 if args.quick else FRAMES_PER_FILE
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not args.formats or any(f not in FORMATS for f in args.formats):
        p.error(f"--formats: choose from {', '.join(FORMATS)}")
    try:
        args.plan = parse_methods(args.methods)
    except ValueError as exc:
        p.error(f"--methods: unknown {exc}")
    if (not args.plan or args.repeats < 1 or args.gb <= 0 or args.timeout_factor <= 0
            or args.si_frames_per_file < 1):
        p.error("need at least one method, --repeats >= 1, --gb > 0, --timeout-factor > 0 and "
                "--si-frames-per-file >= 1")
    return args


def cached_share(paths: Sequence[Path]) -> str:
    """How much of the files is in the page cache, measured with util-linux fincore (reads come
    from RAM then, not from the disk), or why it is unknown."""
    if shutil.which("fincore") is None:
        return "unknown (no fincore)"
    proc = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE",
                           *map(str, paths)], capture_output=True, text=True, check=False)
    pairs = [line.split() for line in proc.stdout.splitlines()]
    sizes = [(int(a), int(b)) for a, b in (p for p in pairs if len(p) == 2)]
    total = sum(b for _, b in sizes)
    if proc.returncode != 0 or not total:
        return "unknown (fincore failed)"
    return f"{100 * sum(a for a, _ in sizes) / total:.0f}% (fincore)"


def prepare(args: argparse.Namespace, workdir: Path) -> tuple[list[Session], list[str]]:
    source = FrameSource(args.seed)
    sessions, notes = [], []
    for fmt in args.formats:
        t0 = time.perf_counter()
        s = make_session(fmt, args.gb, workdir, source, args.si_frames_per_file)
        note = f"{fmt}: {cache_note(s.ds)}"
        say(f"wrote {fmt} TIFFs in {time.perf_counter() - t0:.1f} s; {note}")
        notes.append(note)
        if not args.no_warmup:
            # Untimed: right after the TIFFs are written the first run on a VM disk measured up to
            # 2x slower, whichever method went first (see append_throughput).
            w = run_cp(s, "copy", workdir / "runs" / f"{fmt}-warmup", 600.0, keep=False)
            say(f"  warm-up cp + sync (not counted): {w.wall or 0:.2f} s {w.check}")
        share = cached_share(s.ds.tiffs)
        say(f"  {fmt} TIFFs in the page cache before the runs: {share}")
        notes.append(f"{fmt}: TIFFs in the page cache before the runs: {share}")
        sessions.append(s)
    return sessions, notes


def warm_cache(paths: Sequence[Path]) -> None:
    """Read the files once (into the page cache), untimed."""
    buf = bytearray(8 << 20)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def run_all(args: argparse.Namespace, sessions: list[Session], workdir: Path) -> list[Row]:
    results: dict[tuple[str, str, str], list[Row]] = {}
    for rep in range(args.repeats):
        # Interleaved (formats and methods), so slow drift of a shared machine affects all alike.
        for s in sessions:
            for family, setting in args.plan:
                if family == "h5py" and s.fmt != "plain":
                    continue  # the limit reads the plain TIFFs only: the same frame bytes
                run_dir = workdir / "runs" / f"{s.fmt}-{family}-{setting}-{rep + 1}"
                # A VM drops page cache on its own (a first full run found the TIFFs 0% cached
                # after the ScanImage runs, and the plain runs read the disk): read every TIFF
                # once before each run, so every method starts from the same, warm, state.
                if not args.no_warm_cache:
                    warm_cache(s.ds.tiffs)
                cached = cached_share(s.ds.tiffs)
                row = RUNNERS[family](s, setting, run_dir,
                                      timeout_for(s, setting, args.timeout_factor),
                                      args.keep)
                row.cached = cached
                results.setdefault((s.fmt, family, setting), []).append(row)
                wall = f"{row.wall:7.2f} s" if row.wall is not None else "      -  "
                rss = f"{row.m.peak_rss / 1e6:5.0f} MB" if row.m else ""
                say(f"  run {rep + 1}/{args.repeats} {s.fmt:<9} {row.method:<36} "
                    f"{row.compression:<28} {wall} {rss}  {row.check}")
    return [median_row(rs) for rs in results.values()]


def machine_info(workdir: Path) -> dict[str, Any]:
    import psutil  # type: ignore[import-untyped]  # no stubs installed

    return {"cpus": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 1e9, 1),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "environment": [*environment_lines(workdir), "rig2nwb side: " + versions(
                sys.executable, ("pynwb", "hdmf", "hdf5plugin", "tifffile")) + f" ({git_state()})"],
            "peers": versions(str(PEERS_PYTHON), ("neuroconv", "roiextractors", "pynwb", "hdmf",
                                                   "h5py", "tifffile"))}


def report_notes(rows: list[Row], sessions: list[Session], args: argparse.Namespace) -> list[str]:
    notes = [
        "wall s = the child's wall time + an os.sync() after it exits (every method measured to "
        "data on disk; rig2nwb and the h5py limit also fsync per file, NeuroConv and cp do not); "
        "'child wall s' in the JSON excludes the sync. sync is system-wide: other writers on a "
        "shared machine add to it.",
        "MB/s = raw frame bytes (frames x 512 x 512 x 2, MB = 1e6 bytes) / wall s; ratio to limit "
        "= MB/s / MB/s of the h5py append at the same compression (gzip 4 rows: the gzip 4 "
        "append; rig2nwb default (gzip 1 + shuffle), blosc-lz4 and cp rows: the uncompressed "
        "append); raw/out = raw bytes / "
        "output size. The h5py limit reads the plain TIFFs only (the same frame bytes) and "
        "serves both formats.",
        "NeuroConv runs in benchmarks/.venv-peers with get_default_backend_configuration "
        "(gzip 4, its chunks and buffer) or that configuration with every dataset's compressors "
        "= None, passed to run_conversion(..., overwrite=True, backend_configuration=...).",
        "NeuroConv 0.10.2's ScanImageImagingInterface(file_path=first file) converts that file "
        "only (it passes file_paths=[file_path] on, which disables roiextractors' multi-file "
        "detection), so the run's files are given as file_paths=[...]; TiffImagingInterface takes "
        "file_paths=[...] of the plain TIFFs and sampling_frequency=30, and needs a "
        "session_start_time in the metadata.",
        "NeuroConv stores frames transposed to NWB's (time, x, y); the checks accept that "
        "orientation ('stored transposed').",
        "Synthetic ScanImage files: SI 2021 BigTIFF, ScanImage block after the header, ~5 KB "
        "SI.* header in every page's Software tag (real files: ~18 KB), per-frame data "
        "(frameNumbers, frameTimestamps_sec, epoch ...) in each ImageDescription "
        "(benchmarks/kit/scanimage_synth.py).",
    ]
    for r in rows:
        extra = []
        if r.stored:
            extra.append(r.stored)
        if r.phases:
            extra.append("phases " + ", ".join(f"{k} {v:.1f} s" for k, v in r.phases.items()))
        if r.m is not None:
            extra.append(f"sync {r.sync_s:.2f} s")
        if r.cached:
            extra.append(f"TIFFs cached before: {r.cached}")
        if extra:
            notes.append(f"{r.fmt} {r.method} {r.compression}: {'; '.join(extra)}")
    if args.repeats > 1:
        notes.append(f"{args.repeats} interleaved runs per row: median wall, largest peak RSS")
    return notes


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == NEUROCONV_CHILD:
        return neuroconv_child(argv[1:])
    args = parse_args(argv)
    workdir = make_workdir(args.workdir)
    started = time.perf_counter()
    machine = machine_info(workdir)
    for line in machine["environment"]:
        say(line)
    say(f"NeuroConv side: {machine['peers']}")
    try:
        sessions, data_notes = prepare(args, workdir)
        rows = run_all(args, sessions, workdir)
        for s in sessions:
            data_notes.append(f"{s.fmt}: TIFFs in the page cache after the runs: "
                              f"{cached_share(s.ds.tiffs)}")
    finally:
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    values = [row_values(r, rows) for r in rows]
    goal_list = goals(rows)
    notes = data_notes + report_notes(rows, sessions, args)
    say()
    for line in table_lines(values):
        say(line)
    say()
    for g in goal_list:
        say(goal_line(g))
    say()
    for n in notes:
        say(n)
    say(f"whole benchmark: {time.perf_counter() - started:.0f} s")
    if args.json:
        ds = sessions[0].ds
        doc = {
            "benchmark": "batch", "title": "Batch conversion of one session",
            "command": command_line(MODULE, argv),
            "machine": machine,
            "params": {"gb": args.gb, "frames": ds.frames, "frame_shape": list(FRAME_SHAPE),
                       "dtype": "int16", "frames_per_file": FRAMES_PER_FILE,
                       "files": len(ds.tiffs), "raw_mb": round(ds.raw_bytes / 1e6, 1),
                       "formats": args.formats, "methods": [f"{f}:{s}" for f, s in args.plan],
                       "repeats": args.repeats, "frame_rate_hz": FRAME_RATE, "seed": args.seed},
            "columns": COLUMNS, "rows": values, "goals": goal_list, "notes": notes,
        }
        args.json.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        say(f"wrote {args.json}")
    # Timings and missed goals never fail the run; a failed child or a wrong output does (a
    # method skipped because the peers venv is missing does not).
    return 1 if any(r.check.startswith(("FAILED", "MISMATCH")) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
