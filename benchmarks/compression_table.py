#!/usr/bin/env python3
"""Compression trade-off table: every supported ``output.compression`` setting on one session.

Converts the same synthetic session (512x512 int16 TIFFs from the kit's FrameSource, benchmarks/kit/frames.py)
with ``rig2nwb convert`` in a measured child once per setting, and reports write speed, CPU,
output size and compression ratio, the warm read speed of one frame and of one pixel's whole time
course, and whether the file opens in an h5py without any filter plugin ("readable everywhere").
The rows are what the default compression is chosen from (see the "why the default" note).

It prints figures and asserts nothing: the exit status is 1 only when a run failed or its output
did not match the TIFFs. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.kit.childrun import Measured, failure_text, measure, sync_disks
from benchmarks.kit.configs import write_config
from benchmarks.kit.daemonlog import read_json_lines
from benchmarks.kit.filters import BLOSC_CODECS
from benchmarks.kit.frames import (
    BLOCK_FRAMES,
    FRAME_SHAPE,
    SERIES_DATA,
    Dataset,
    FrameSource,
    child_timeout,
    verify,
    write_dataset,
)
from benchmarks.kit.h5append import run_limit
from benchmarks.kit.machine import environment_lines, machine_description
from benchmarks.kit.paths import command_line, make_workdir
from benchmarks.kit.report import format_table, say

MODULE = "benchmarks.compression_table"


@dataclass(frozen=True)
class Setting:
    """One ``output`` setting. ``level`` / ``shuffle`` None: the key is not written, so rig2nwb's
    own default applies (gzip level 1 with shuffle; blosc-lz4 level 5, blosc-zstd level 1, both
    with bitshuffle). ``label`` names what the file holds and must equal what ``stored_filter``
    reads back from it (else the row's check says the setting did not take)."""

    label: str
    compression: str  # output.compression
    level: int | None = None  # output.compression_level
    shuffle: bool | None = None  # output.shuffle (gzip only)


# Every setting rig2nwb supports, at the levels a user would pick, plus plain gzip 4 without the
# shuffle: the file h5py's compression="gzip" and NeuroConv's default write (rig2nwb still
# deflates it on every core; the file's filter pipeline is the same).
SETTINGS: dict[str, Setting] = {
    "none": Setting("none", "none"),
    "gzip-1": Setting("gzip 1 + shuffle", "gzip"),  # the default: no level, no shuffle key
    "gzip-4": Setting("gzip 4 + shuffle", "gzip", 4),
    "gzip-4-noshuffle": Setting("gzip 4", "gzip", 4, shuffle=False),
    "lzf": Setting("lzf", "lzf"),
    "blosc-lz4": Setting("blosc lz4 5 + bitshuffle", "blosc-lz4"),
    "blosc-zstd": Setting("blosc zstd 1 + bitshuffle", "blosc-zstd"),
}
DEFAULT_SETTING = "gzip-1"  # rig2nwb's default: output.compression = "gzip", level 1, shuffle
GZIP_REFERENCE = "gzip-4-noshuffle"  # plain gzip 4, what h5py's "gzip" and NeuroConv write
BLOSC_REFERENCE = "blosc-lz4"  # the former default (needs a filter plugin in every reader)
RIG_MBPS = 2 * 30 * FRAME_SHAPE[0] * FRAME_SHAPE[1] * 2 / 1e6  # 2 channels x 30 Hz of 512x512 int16

# Runs in a child with HDF5_PLUGIN_PATH unset and without hdf5plugin: can a plain h5py read a
# frame? argv: file, dataset. Prints "yes" or the error's first line.
_PLAIN_READ = """\
import sys, h5py
try:
    with h5py.File(sys.argv[1], "r") as f:
        f[sys.argv[2]][0]
    print("yes")
except Exception as exc:
    print(f"no: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
"""


@dataclass
class Row:
    key: str  # a SETTINGS key
    m: Measured | None = None
    sync_s: float = 0.0  # the final os.sync after the child, counted in the write time
    loop_s: float | None = None  # sum of the 'tiff appended' seconds
    output_bytes: int | None = None
    stored_as: str = ""  # the filter found in the file, e.g. "blosc lz4 5 bitshuffle"
    frame_ms: float | None = None  # median warm read of one random frame
    pixel_ms: float | None = None  # median warm read of one pixel's whole time course
    readable: str = ""  # "yes" or "no: <why>"
    check: str = ""

    @property
    def label(self) -> str:
        return SETTINGS[self.key].label

    @property
    def ok(self) -> bool:
        return self.m is not None and self.m.rc == 0 and self.check == "OK"

    @property
    def write_s(self) -> float | None:
        return None if self.m is None or self.m.rc is None else self.m.wall + self.sync_s


# --- one setting --------------------------------------------------------------------------------


def convert(ds: Dataset, key: str, rig_root: Path, run_dir: Path) -> tuple[Row, Path | None]:
    """``rig2nwb convert`` of the session with one setting, measured; returns the row and the
    NWB file (left in place for the read tests)."""
    setting = SETTINGS[key]
    row = Row(key)
    out_dir = run_dir / "nwb"
    out_dir.mkdir(parents=True)  # output.folder must exist; a fresh ledger per run
    cfg = run_dir / "config.toml"
    write_config(cfg, writer="compression_table.py", rig_root=rig_root, output=out_dir,
                 state=run_dir / "state", compression=setting.compression, level=setting.level)
    if setting.shuffle is not None:  # kit.configs has no shuffle key: add it to [output]
        text = cfg.read_text(encoding="utf-8")
        assert "[output]\n" in text, text
        cfg.write_text(text.replace("[output]\n", f"[output]\nshuffle = {str(setting.shuffle).lower()}\n", 1),
                       encoding="utf-8")
    cmd = [sys.executable, "-m", "rig2nwb", "convert", str(ds.folder), "--config", str(cfg),
           "--no-progress"]
    row.m = measure(cmd, run_dir, child_timeout(ds, setting.compression))
    # rig2nwb fsyncs each file; a final sync makes sure no written-back page of this run is
    # left for the next one to pay for.
    t0 = time.perf_counter()
    sync_disks()
    row.sync_s = time.perf_counter() - t0
    appended = [r for r in read_json_lines(run_dir / "stderr.log") if r.get("event") == "tiff appended"]
    if appended:
        row.loop_s = sum(float(r.get("seconds") or 0.0) for r in appended)
    nwbs = sorted(out_dir.glob("*.nwb"))
    nwb = nwbs[0] if nwbs else None
    if row.m.rc != 0 or nwb is None:
        row.check = failure_text(row.m, run_dir, tail=2) if row.m.rc != 0 else "FAILED: no NWB file written"
        return row, None
    row.output_bytes = nwb.stat().st_size
    row.check = verify(nwb, SERIES_DATA, ds)
    return row, nwb


def stored_filter(dset: Any) -> str:
    """The compression filter actually in the file, in the form of the SETTINGS labels (e.g.
    "gzip 1 + shuffle", "blosc lz4 5 + bitshuffle"), so a setting that did not take is visible."""
    import hdf5plugin

    filters = dict(dset._filters)
    blosc = filters.get(str(hdf5plugin.Blosc.filter_id))
    if blosc is not None:
        # Blosc cd_values: 4 reserved, then clevel, shuffle (2 = bit), compressor code.
        clevel, shuffle, codec = (int(v) for v in blosc[4:7])
        shuffled = {0: "", 1: " + byteshuffle", 2: " + bitshuffle"}.get(shuffle, f" + shuffle {shuffle}")
        return f"blosc {BLOSC_CODECS.get(codec, codec)} {clevel}{shuffled}"
    # HDF5's own byte shuffle (filter 2), run before deflate/lzf when present.
    shuffled = " + shuffle" if "shuffle" in filters else ""
    if "gzip" in filters:
        return f"gzip {filters['gzip']}{shuffled}"
    if "lzf" in filters:
        return f"lzf{shuffled}"
    return ", ".join(str(k) for k in filters) or "none"


def read_speeds(row: Row, nwb: Path, ds: Dataset, source: FrameSource, n_frames: int,
                n_pixels: int, seed: int) -> str:
    """Warm read timings with the file opened once; checks what was read against the source.

    Returns "OK" or a MISMATCH text. The reads come from the page cache (the file was just
    written and dropping caches needs root), so they measure decompression + HDF5, not the disk.
    """
    import h5py
    import hdf5plugin  # noqa: F401  (registers the Blosc filter; without it reads fail)

    rng = np.random.default_rng(seed)
    frames = rng.integers(0, ds.frames, n_frames)
    pixels = [(int(rng.integers(0, FRAME_SHAPE[0])), int(rng.integers(0, FRAME_SHAPE[1])))
              for _ in range(n_pixels)]
    frame_times: list[float] = []
    pixel_times: list[float] = []
    with h5py.File(nwb, "r") as f:
        data = f[SERIES_DATA]
        row.stored_as = stored_filter(data)
        if row.stored_as != row.label:
            return f"SETTING NOT APPLIED: stored as {row.stored_as!r}, expected {row.label!r}"
        # Untimed first read: opening the dataset and reading its chunk index once.
        data[0]
        got_frames = []
        for g in frames:
            t0 = time.perf_counter()
            got_frames.append(data[int(g)])
            frame_times.append(time.perf_counter() - t0)
        got_pixels = []
        for y, x in pixels:
            t0 = time.perf_counter()
            got_pixels.append(data[:, y, x])
            pixel_times.append(time.perf_counter() - t0)
    row.frame_ms = 1e3 * statistics.median(frame_times)
    row.pixel_ms = 1e3 * statistics.median(pixel_times)
    for g, got in zip(frames, got_frames, strict=True):
        if not np.array_equal(got, source.frame(int(g))):
            return f"MISMATCH random frame {int(g)}"
    for (y, x), got in zip(pixels, got_pixels, strict=True):
        if not np.array_equal(got, pixel_course(source, ds.frames, y, x)):
            return f"MISMATCH time course of pixel ({y}, {x})"
    return "OK"


def pixel_course(source: FrameSource, frames: int, y: int, x: int) -> np.ndarray:
    """Pixel (y, x) of every frame, as the TIFFs hold it (FrameSource.frame, block by block)."""
    out = np.empty(frames, dtype=source.blocks[0].dtype)
    for a in range(0, frames, BLOCK_FRAMES):
        b = a // BLOCK_FRAMES
        n = min(BLOCK_FRAMES, frames - a)
        block = source.blocks[b % len(source.blocks)]
        out[a:a + n] = block[:n, y, x] + block.dtype.type(b % 97)
    return out


def readable_everywhere(nwb: Path) -> str:
    """Can an h5py without hdf5plugin and without HDF5_PLUGIN_PATH read a frame of the file?"""
    env = {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}
    proc = subprocess.run([sys.executable, "-c", _PLAIN_READ, str(nwb), SERIES_DATA], env=env,
                          capture_output=True, text=True, check=False, timeout=120)
    out = proc.stdout.strip()
    return out if out else f"no: rc={proc.returncode} {proc.stderr.strip()[-200:]}"


# --- report ---------------------------------------------------------------------------------------


COLUMNS = ["compression", "stored as", "write s", "MB/s", "loop MB/s", "CPU s", "output MB",
           "raw/out", "frame read ms", "pixel read ms", "readable everywhere", "check"]


def mbps(ds: Dataset, seconds: float | None) -> float | None:
    return ds.raw_bytes / 1e6 / seconds if seconds else None


def round_or_none(value: float | None, digits: int) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def row_dict(r: Row, ds: Dataset) -> dict[str, Any]:
    ratio = ds.raw_bytes / r.output_bytes if r.output_bytes else None
    return {
        "compression": r.label + (" (default)" if r.key == DEFAULT_SETTING else ""),
        "stored as": r.stored_as or None,
        "write s": round_or_none(r.write_s, 2),
        "MB/s": round_or_none(mbps(ds, r.write_s), 1),
        "loop MB/s": round_or_none(mbps(ds, r.loop_s), 1),
        "CPU s": round_or_none(r.m.cpu if r.m else None, 2),
        "output MB": round_or_none(r.output_bytes / 1e6 if r.output_bytes else None, 1),
        "raw/out": round_or_none(ratio, 3),
        "frame read ms": round_or_none(r.frame_ms, 2),
        "pixel read ms": round_or_none(r.pixel_ms, 1),
        "readable everywhere": r.readable.split(":")[0] if r.readable else None,
        "check": r.check,
    }


def default_goal(rows: dict[str, Row], ds: Dataset) -> dict[str, Any]:
    """The issue's 'compression ratio within 10% of gzip's' for the default setting, against the
    plain gzip 4 that h5py and NeuroConv write."""
    goal = f"default ({SETTINGS[DEFAULT_SETTING].label}) size ratio within 10% of plain gzip 4's"
    ours, gzip = rows.get(DEFAULT_SETTING), rows.get(GZIP_REFERENCE)
    if not (ours and gzip and ours.ok and gzip.ok and ours.output_bytes and gzip.output_bytes):
        return {"goal": goal, "target": ">= 0.90x", "measured": "not measured (a run is missing "
                "or failed)", "met": None}
    rel = gzip.output_bytes / ours.output_bytes  # = (raw/ours) / (raw/gzip)
    return {"goal": goal, "target": ">= 0.90x",
            "measured": f"{rel:.2f}x ({ds.raw_bytes / ours.output_bytes:.2f} vs "
                        f"{ds.raw_bytes / gzip.output_bytes:.2f})",
            "met": rel >= 0.9}


def _smaller(ours: float, other: float) -> str:
    """ours/other output bytes as 'N% smaller' / 'N% larger' (NaN-safe)."""
    if math.isnan(ours) or math.isnan(other) or other == 0:
        return "? smaller"
    pct = 100 * (1 - ours / other)
    digits = 1 if abs(pct) < 5 else 0
    return f"{pct:.{digits}f}% smaller" if pct >= 0 else f"{-pct:.{digits}f}% larger"


def why_default(rows: dict[str, Row], ds: Dataset) -> str:
    """The paragraph that justifies the default, computed from the measured rows (the comparisons
    say "faster"/"slower", "smaller"/"larger" from the figures, never from expectations)."""
    ours = rows.get(DEFAULT_SETTING)
    gzip4, gzip4s = rows.get(GZIP_REFERENCE), rows.get("gzip-4")
    blosc = rows.get(BLOSC_REFERENCE)
    name = SETTINGS[DEFAULT_SETTING].label
    if not (ours and ours.ok):
        return f"why the default: not computed (the {name} run is missing or failed)"

    def loop(r: Row) -> float:  # NaN rather than None: prints as "nan" instead of failing
        return mbps(ds, r.loop_s) or math.nan

    def whole(r: Row) -> float:
        return mbps(ds, r.write_s) or math.nan

    def ratio(r: Row) -> float:
        return ds.raw_bytes / r.output_bytes if r.output_bytes else math.nan

    def size(r: Row) -> float:
        return float(r.output_bytes) if r.output_bytes else math.nan

    def ms(value: float | None) -> float:
        return math.nan if value is None else value

    def speed_vs(r: Row) -> str:
        x = loop(ours) / loop(r)
        return f"{x:.2f}x" if not math.isnan(x) else "?x"

    readable = ours.readable.split(":")[0] or "?"
    # The append loop first: the whole-run figure carries a fixed ~1.5 s start-up, which
    # dominates small sessions and hides the compressor's own speed.
    text = (f"why the default: {name} is stored with filters built into every HDF5 (readable "
            f"everywhere = {readable}: h5py, MATLAB, h5dump, any NWB reader, no plugin). It "
            f"appends at {loop(ours):.0f} MB/s in the append loop (whole run incl. start-up "
            f"{whole(ours):.0f} MB/s, {ours.m.cpu if ours.m else math.nan:.1f} CPU s) to a size "
            f"ratio of {ratio(ours):.2f}.")
    if gzip4 and gzip4.ok:
        text += (f" Against plain gzip 4 (no shuffle; what h5py's 'gzip' and NeuroConv write, here "
                 f"still deflated on every core): {speed_vs(gzip4)} its loop speed "
                 f"({loop(gzip4):.0f} MB/s) and {_smaller(size(ours), size(gzip4))} "
                 f"(ratio {ratio(gzip4):.2f}).")
    if gzip4s and gzip4s.ok:
        text += (f" gzip 4 + shuffle: ratio {ratio(gzip4s):.2f} ({name} is "
                 f"{_smaller(size(ours), size(gzip4s))}) at {loop(gzip4s):.0f} MB/s.")
    if blosc and blosc.ok:
        text += (f" Against blosc-lz4 (the former default): {speed_vs(blosc)} its loop speed "
                 f"({loop(blosc):.0f} MB/s; whole run {whole(blosc):.0f} MB/s, "
                 f"{blosc.m.cpu if blosc.m else math.nan:.1f} CPU s), "
                 f"{_smaller(size(ours), size(blosc))} (ratio {ratio(blosc):.2f}); reads: one "
                 f"frame {ms(ours.frame_ms):.2f} vs {ms(blosc.frame_ms):.2f} ms, one pixel's time "
                 f"course {ms(ours.pixel_ms):.0f} vs {ms(blosc.pixel_ms):.0f} ms; readable "
                 f"everywhere = {blosc.readable.split(':')[0] or '?'} (readers need hdf5plugin or "
                 "HDF5_PLUGIN_PATH).")
    text += (f" A 2-channel 30 Hz rig ({RIG_MBPS:.1f} MB/s) keeps the append loop busy "
             f"{100 * RIG_MBPS / loop(ours):.0f}% of the time with {name}")
    if blosc and blosc.ok:
        text += f" and {100 * RIG_MBPS / loop(blosc):.0f}% with blosc-lz4"
    text += "."
    if blosc and blosc.ok and loop(ours) < loop(blosc):
        text += (f" So the default gives up blosc-lz4's speed (the rig uses "
                 f"{100 * RIG_MBPS / loop(ours):.0f}% of {name}'s) for files every reader opens; "
                 "choose blosc-lz4 only when every reader has the plugin.")
    elif blosc and blosc.ok:
        text += " The default is as fast as blosc-lz4 here and needs no plugin in any reader."
    return text


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--gb", type=float, help="session size in GB of raw frames (1.0; --quick: 0.2)")
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help=f"comma-separated, any of {', '.join(SETTINGS)} (default: all)")
    p.add_argument("--repeats", type=int, default=1,
                   help="interleaved convert runs per setting; the median write time is shown (1)")
    p.add_argument("--read-frames", type=int, default=50, help="random frames read (50)")
    p.add_argument("--read-pixels", type=int, default=3,
                   help="pixels whose whole time course is read (3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, help="a new rig2nwb-bench-* folder is made in it "
                   "(default: under /tmp); put it on the disk you want to measure")
    p.add_argument("--keep", action="store_true", help="keep the TIFFs and the NWB files")
    p.add_argument("--json", type=Path, help="write the results in the shared benchmark format")
    p.add_argument("--quick", action="store_true", help="smoke test: a 0.2 GB session")
    args = p.parse_args(argv)
    if args.gb is None:
        args.gb = 0.2 if args.quick else 1.0
    keys = [k.strip() for k in args.settings.split(",") if k.strip()]
    bad = [k for k in keys if k not in SETTINGS]
    if bad or not keys:
        p.error(f"unknown setting(s) {', '.join(bad)}; choose from {', '.join(SETTINGS)}")
    args.settings = keys
    if args.repeats < 1 or args.read_frames < 1 or args.read_pixels < 1 or args.gb <= 0:
        p.error("--gb > 0, --repeats, --read-frames and --read-pixels >= 1")
    return args


def run_settings(args: argparse.Namespace, ds: Dataset, source: FrameSource, workdir: Path,
                 rig_root: Path) -> dict[str, Row]:
    """Every setting, ``--repeats`` times interleaved; the read tests on the median run's file."""
    runs: dict[str, list[tuple[Row, Path | None]]] = {k: [] for k in args.settings}
    for rep in range(args.repeats):
        for key in args.settings:
            row, nwb = convert(ds, key, rig_root, workdir / "runs" / f"{key}-{rep + 1}")
            say(f"  {row.label:<25} write {row.write_s or math.nan:6.2f} s "
                f"{mbps(ds, row.write_s) or math.nan:6.0f} MB/s  {row.check}")
            runs[key].append((row, nwb))
    rows: dict[str, Row] = {}
    for key, done in runs.items():
        ordered = sorted(done, key=lambda rn: rn[0].write_s if rn[0].write_s is not None else math.inf)
        row, nwb = ordered[(len(ordered) - 1) // 2]
        failed = next((r for r, _ in done if not r.ok), None)
        if failed is not None:
            row.check = failed.check
        if row.ok and nwb is not None:
            row.check = read_speeds(row, nwb, ds, source, args.read_frames, args.read_pixels,
                                    args.seed)
            row.readable = readable_everywhere(nwb)
            say(f"  {row.label:<25} reads: frame {row.frame_ms:.2f} ms, pixel time course "
                f"{row.pixel_ms:.0f} ms; readable everywhere: {row.readable}")
        if not args.keep:
            for _, path in done:
                if path is not None:
                    shutil.rmtree(path.parent, ignore_errors=True)
        rows[key] = row
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started = time.perf_counter()
    workdir = make_workdir(args.workdir)
    for line in environment_lines(workdir):
        say(line)
    source = FrameSource(args.seed)
    rig_root = workdir / "rig"
    try:
        t0 = time.perf_counter()
        ds = write_dataset(rig_root, args.gb, source)
        say(f"generated {ds.label}: {ds.frames} frames in {len(ds.tiffs)} TIFF(s), "
            f"{ds.raw_bytes / 1e6:.0f} MB raw, {time.perf_counter() - t0:.1f} s")
        # Untimed: the first run right after the TIFFs were written measured up to 2x slower.
        w = run_limit(ds, workdir / "runs" / "warmup", keep=False)
        say(f"  warm-up (h5py append, not counted) {w.m.wall:.2f} s")
        rows = run_settings(args, ds, source, workdir, rig_root)
    finally:
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    table = [row_dict(r, ds) for r in rows.values()]
    goals = [default_goal(rows, ds)]
    notes = [
        why_default(rows, ds),
        "MB/s = raw frame bytes / (wall of the whole rig2nwb convert child + a final os.sync): "
        "start-up (~1.5 s of imports and NWB creation) included; loop MB/s = raw bytes / the sum "
        "of the 'tiff appended' seconds (read + compress + write + fsync + ledger commit)",
        "reads are warm (the file was just written; dropping the page cache needs root), median of "
        f"{args.read_frames} random frames and of {args.read_pixels} pixels' whole time courses, "
        "file opened once, h5py's default 1 MB chunk cache; with one-frame chunks a time course "
        "decompresses every chunk of the series",
        "readable everywhere: a child h5py with HDF5_PLUGIN_PATH unset and no hdf5plugin import "
        "reads frame 0 (a filter installed in HDF5's default plugin folder would count as yes)",
        f"{ds.label} session, {ds.frames} frames of 512x512 int16 in {len(ds.tiffs)} TIFF(s); "
        f"{args.repeats} run(s) per setting" + (", median write time" if args.repeats > 1 else ""),
    ]
    say("")
    for line in format_table(COLUMNS, table):
        say(line)
    say("")
    for g in goals:
        verdict = {True: "MET", False: "MISSED", None: "n/a"}[g["met"]]
        say(f"goal: {g['goal']}: target {g['target']}, measured {g['measured']} -> {verdict}")
    for note in notes:
        say(note)
    say(f"whole benchmark: {time.perf_counter() - started:.0f} s")
    if args.json:
        result = {
            "benchmark": "compression", "title": "Compression trade-off of the supported settings",
            "command": command_line(MODULE, argv),
            "machine": machine_description(workdir.parent),
            "params": {"gb": args.gb, "frames": ds.frames, "tiffs": len(ds.tiffs),
                       "repeats": args.repeats, "read_frames": args.read_frames,
                       "read_pixels": args.read_pixels, "seed": args.seed},
            "columns": COLUMNS, "rows": table, "goals": goals, "notes": notes,
        }
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0 if all(r.ok for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
