#!/usr/bin/env python3
"""rig2nwb's suite2p attach against NeuroConv's Suite2pSegmentationInterface.

Both append the same synthetic suite2p folder (suite2p 0.14 layout, ``plane0/``) into identical
copies of one finished rig2nwb session file (``rig2nwb convert`` of synthetic 64x64 int16 TIFFs),
each as its own child process, and the script prints wall time, peak RSS and how much the NWB
file grew. A plain h5py write of the same three trace arrays is the practical limit.

* NeuroConv runs in ``benchmarks/.venv-peers`` (``bash benchmarks/setup_peers.sh``), with its
  default compression (gzip, level 4) and with compression off;
* ``rig2nwb attach SESSION --config CFG`` runs with this interpreter, at ``output.compression``
  gzip (level 4), none and blosc-lz4.

It prints figures and asserts nothing; the exit status is 1 only when a run failed or its traces
did not read back equal to the suite2p arrays. See benchmarks/README.md.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# Only the standard library and numpy at module level (the kit modules below included): the
# NeuroConv child runs this module with the peers venv's Python, which has neither rig2nwb nor
# hdf5plugin.
from benchmarks.kit.childrun import Measured, failure_text, measure
from benchmarks.kit.machine import git_state, machine_description, versions
from benchmarks.kit.paths import PEERS_PYTHON, command_line, make_workdir, module_command, module_env

MODULE = "benchmarks.suite2p_attach"
SUBJECT = "mouse01"
SESSION = "s2p_bench"
FRAME_SHAPE = (64, 64)
FRAMES_PER_FILE = 5000
FRAME_RATE = 30.0
TRACE_BLOCK = 5000  # frames generated at a time
ROI_GROUP = 100  # ROIs the h5py reference reads and writes at a time
TRACES = ("F", "Fneu", "spks")
NEUROCONV_CHILD = "_neuroconv-attach"  # hidden subcommands: the measured children
H5PY_CHILD = "_h5py-write"
SPEED_GOAL = 2.0  # rig2nwb at least 2x faster than NeuroConv at equal compression ...
# ... and with a lower peak RSS. (rig2nwb, NeuroConv) compressions compared; the last pair is
# each tool's default.
GOAL_PAIRS = (("gzip 4", "gzip 4"), ("none", "none"), ("blosc-lz4", "gzip 4"))
QUICK_ROIS, QUICK_FRAMES = 50, 12_000  # --quick: the smoke-test size

# --- synthetic session: TIFFs and the suite2p folder ---------------------------------------


def write_tiffs(folder: Path, n_frames: int, seed: int) -> list[Path]:
    """Deterministic 64x64 int16 frames, FRAMES_PER_FILE pages per file, one page a frame."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, cols = FRAME_SHAPE
    rr, cc = np.mgrid[0:rows, 0:cols].astype(np.float32)
    background = 400.0 + 100.0 * np.sin(rr / 9.0) * np.cos(cc / 7.0)
    paths: list[Path] = []
    for i, start in enumerate(range(0, n_frames, FRAMES_PER_FILE)):
        n = min(FRAMES_PER_FILE, n_frames - start)
        noise = rng.normal(0.0, 20.0, (n, rows, cols)).astype(np.float32)
        block = (background + noise + (np.arange(start, start + n) % 100)[:, None, None])
        path = folder / f"file_{i + 1:05d}.tif"
        tifffile.imwrite(path, block.astype(np.int16), photometric="minisblack")
        paths.append(path)
    return paths


def make_stat(rng: np.random.Generator, n_rois: int, ly: int, lx: int) -> npt.NDArray[np.object_]:
    """suite2p 0.14 stat.npy: one dict per ROI (disk-shaped, overlapping ROIs)."""
    yy, xx = np.mgrid[0:ly, 0:lx]
    counts = np.zeros((ly, lx), np.int32)
    rois: list[dict[str, Any]] = []
    for _ in range(n_rois):
        cy, cx = rng.uniform(2, ly - 2), rng.uniform(2, lx - 2)
        radius = float(rng.uniform(2.5, 5.0))
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        inside = d2 <= radius**2
        ypix, xpix = np.nonzero(inside)
        lam = np.exp(-d2[inside] / (2 * (radius / 2) ** 2)).astype(np.float32)
        lam /= lam.sum()
        counts[ypix, xpix] += 1
        npix = int(ypix.size)
        rois.append({
            "ypix": ypix.astype(np.int64), "xpix": xpix.astype(np.int64), "lam": lam,
            "med": [int(np.median(ypix)), int(np.median(xpix))], "npix": npix, "npix_soma": npix,
            "soma_crop": np.ones(npix, bool), "radius": radius,
            "aspect_ratio": float(rng.uniform(1.0, 1.3)), "compact": float(rng.uniform(1.0, 1.1)),
            "solidity": 1.0, "footprint": float(rng.uniform(0.5, 2.0)),
            "mrs": float(rng.uniform(0.5, 1.5)), "mrs0": float(rng.uniform(0.5, 1.5)),
            "skew": float(rng.uniform(0.5, 3.0)), "std": float(rng.uniform(10, 60)), "iplane": 0,
        })
    mean_npix = float(np.mean([r["npix"] for r in rois]))
    stat = np.empty(n_rois, dtype=object)
    for i, r in enumerate(rois):
        r["overlap"] = counts[r["ypix"], r["xpix"]] > 1
        r["npix_norm"] = r["npix_norm_no_crop"] = r["npix"] / mean_npix
        stat[i] = r
    return stat


def make_ops(n_frames: int, ly: int, lx: int, plane_dir: Path, session_folder: Path,
             tiffs: Sequence[Path], rng: np.random.Generator) -> dict[str, Any]:
    """suite2p 0.14 ops.npy content (a flat dict; saved as a 0-d object array)."""
    img = rng.uniform(100, 500, (ly, lx)).astype(np.float32)
    return {
        "suite2p_version": "0.14.4", "Ly": ly, "Lx": lx, "nframes": n_frames,
        "frames_per_file": np.full(len(tiffs), FRAMES_PER_FILE, np.int64),
        "frames_per_folder": np.array([n_frames], np.int64), "fs": FRAME_RATE, "tau": 1.0,
        "nplanes": 1, "nchannels": 1, "functional_chan": 1, "align_by_chan": 1,
        "neucoeff": 0.7, "baseline": "maximin", "win_baseline": 60.0, "sig_baseline": 10.0,
        "diameter": 0, "sparse_mode": True, "spatial_scale": 0, "do_registration": 1,
        "nonrigid": True, "batch_size": 500, "keep_movie_raw": False,
        "data_path": [str(session_folder)], "filelist": [str(p) for p in tiffs],
        "save_path0": str(session_folder), "save_folder": "suite2p", "save_path": str(plane_dir),
        "fast_disk": str(plane_dir), "reg_file": str(plane_dir / "data.bin"),
        "ops_path": str(plane_dir / "ops.npy"), "input_format": "tif",
        "yrange": np.array([0, ly]), "xrange": np.array([0, lx]),
        "meanImg": img, "meanImgE": (img / img.max()).astype(np.float32),
        "refImg": img.astype(np.int16), "max_proj": (img * 1.5).astype(np.float32),
        "Vcorr": rng.uniform(0, 1, (ly, lx)).astype(np.float32),
        "xoff": rng.integers(-2, 3, n_frames).astype(np.int32),
        "yoff": rng.integers(-2, 3, n_frames).astype(np.int32),
        "corrXY": rng.uniform(0.8, 1.0, n_frames).astype(np.float32),
        "badframes": np.zeros(n_frames, bool), "timing": {"registration": 1.0, "detection": 1.0},
    }


def write_suite2p_folder(plane_dir: Path, *, session_folder: Path, tiffs: Sequence[Path],
                         n_rois: int, n_frames: int, seed: int) -> None:
    """A 0.14-style plane0 folder: ops, stat, F, Fneu, spks (float32, (ROI, time), written in
    blocks through open_memmap so the traces never sit in RAM) and iscell (float64, (ROI, 2))."""
    plane_dir.mkdir(parents=True)
    ly, lx = FRAME_SHAPE
    rng = np.random.default_rng(seed)
    ops = make_ops(n_frames, ly, lx, plane_dir, session_folder, tiffs, rng)
    np.save(plane_dir / "ops.npy", np.array(ops, dtype=object), allow_pickle=True)
    np.save(plane_dir / "stat.npy", make_stat(rng, n_rois, ly, lx), allow_pickle=True)
    iscell = np.column_stack([rng.random(n_rois) < 0.7, rng.random(n_rois)]).astype(np.float64)
    np.save(plane_dir / "iscell.npy", iscell)

    out = {name: np.lib.format.open_memmap(plane_dir / f"{name}.npy", mode="w+", dtype=np.float32,
                                           shape=(n_rois, n_frames)) for name in TRACES}
    baseline = rng.uniform(200, 800, n_rois).astype(np.float32)
    amplitude = rng.uniform(50, 300, n_rois).astype(np.float32)
    rate = rng.uniform(0.002, 0.03, n_rois).astype(np.float32)  # events per frame
    decay = np.float32(math.exp(-1.0 / (1.0 * FRAME_RATE)))  # tau = 1 s
    npil_level = (0.6 * baseline).astype(np.float32)
    calcium = np.zeros(n_rois, np.float32)
    for a in range(0, n_frames, TRACE_BLOCK):
        b = min(n_frames, a + TRACE_BLOCK)
        n = b - a
        events = (rng.random((n, n_rois), dtype=np.float32) < rate)
        spikes = events * rng.exponential(1.0, (n, n_rois)).astype(np.float32)
        ca = np.empty((n, n_rois), np.float32)
        for t in range(n):  # calcium: exponential decay of the spike train
            calcium *= decay
            calcium += spikes[t]
            ca[t] = calcium
        t_s = np.arange(a, b, dtype=np.float32)[:, None] / FRAME_RATE
        drift = 30.0 * np.sin(2 * np.pi * t_s / 120.0 + np.arange(n_rois) / 50.0)
        fneu = npil_level + drift + rng.normal(0, 8.0, (n, n_rois)).astype(np.float32)
        f = baseline + amplitude * ca + 0.7 * (fneu - npil_level) \
            + rng.normal(0, 15.0, (n, n_rois)).astype(np.float32)
        out["F"][:, a:b] = f.T
        out["Fneu"][:, a:b] = fneu.T
        out["spks"][:, a:b] = (spikes * amplitude).T
    for mm in out.values():
        mm.flush()
    del out


# --- measuring child processes ----------------------------------------------------------------


def last_lines_of(text: str, n: int = 2) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


# --- the measured children --------------------------------------------------------------------


def neuroconv_child(argv: Sequence[str]) -> int:
    """Runs in the peers venv: NeuroConv's suite2p interface appends into an existing NWB file."""
    t0 = time.perf_counter()
    p = argparse.ArgumentParser(prog=f"python -m {MODULE} {NEUROCONV_CHILD}")
    p.add_argument("--folder", type=Path, required=True)  # the suite2p folder (holds plane0/)
    p.add_argument("--nwb", type=Path, required=True)
    p.add_argument("--compression", choices=("gzip", "none"), required=True)
    p.add_argument("--result", type=Path, required=True)
    args = p.parse_args(argv)

    # Installed only in the peers venv, not where mypy runs.
    from neuroconv.datainterfaces import (  # type: ignore[import-not-found, unused-ignore]
        Suite2pSegmentationInterface,
    )
    from neuroconv.tools.nwb_helpers import (  # type: ignore[import-not-found, unused-ignore]
        configure_backend,
    )
    from pynwb import NWBHDF5IO

    t_import = time.perf_counter()
    interface = Suite2pSegmentationInterface(folder_path=args.folder, plane_name="plane0")
    metadata = interface.get_metadata()
    t_init = time.perf_counter()
    if args.compression == "gzip":
        # NeuroConv's own append path, with its default backend configuration (gzip, h5py's
        # default level 4, NeuroConv's chunking).
        interface.run_conversion(nwbfile_path=args.nwb, metadata=metadata, append_on_disk_nwbfile=True)
    else:
        # run_conversion refuses a backend_configuration when appending (NeuroConv 0.10), so this
        # is its _append_nwbfile with every dataset's compressors set to None.
        with NWBHDF5IO(path=str(args.nwb), mode="r+", load_namespaces=True) as io:
            nwbfile = io.read()
            interface.add_to_nwbfile(nwbfile=nwbfile, metadata=metadata)
            config = interface.get_default_backend_configuration(nwbfile=nwbfile, backend="hdf5")
            for dataset_config in config.dataset_configurations.values():
                dataset_config.compressors = None
            configure_backend(nwbfile=nwbfile, backend_configuration=config)
            io.write(nwbfile)
    t_end = time.perf_counter()
    args.result.write_text(json.dumps({"import_s": t_import - t0, "init_s": t_init - t_import,
                                       "write_s": t_end - t_init}))
    return 0


def h5py_child(argv: Sequence[str]) -> int:
    """The practical limit: F, Fneu and spks, transposed to (time, ROI), into a fresh HDF5 file.

    Reads each .npy in contiguous groups of ROI_GROUP whole ROI rows (plain reads, no mmap, so
    the RSS is only the buffers) and writes each group as one column of whole chunks."""
    t0 = time.perf_counter()
    p = argparse.ArgumentParser(prog=f"python -m {MODULE} {H5PY_CHILD}")
    p.add_argument("--plane", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--compression", choices=("gzip", "none"), required=True)
    p.add_argument("--result", type=Path, required=True)
    args = p.parse_args(argv)
    import h5py

    t_import = time.perf_counter()
    extra: dict[str, Any] = {"compression": "gzip", "compression_opts": 4} \
        if args.compression == "gzip" else {}
    with h5py.File(args.out, "w") as f:
        for name in TRACES:
            with open(args.plane / f"{name}.npy", "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(fh)
                if fortran or len(shape) != 2:
                    raise SystemExit(f"{name}.npy: expected a C-order 2-D array")
                n_rois, n_frames = shape
                # 2 MB chunks: TRACE_BLOCK frames x ROI_GROUP ROIs (clamped to the data)
                chunks = (min(n_frames, TRACE_BLOCK), min(n_rois, ROI_GROUP))
                ds = f.create_dataset(name, shape=(n_frames, n_rois), dtype=dtype, chunks=chunks,
                                      **extra)
                for r0 in range(0, n_rois, ROI_GROUP):
                    r1 = min(n_rois, r0 + ROI_GROUP)
                    rows = np.fromfile(fh, dtype=dtype, count=(r1 - r0) * n_frames)
                    ds[:, r0:r1] = np.ascontiguousarray(rows.reshape(r1 - r0, n_frames).T)
    args.result.write_text(json.dumps({"import_s": t_import - t0,
                                       "write_s": time.perf_counter() - t_import}))
    return 0


# --- runs ---------------------------------------------------------------------------------------


@dataclass
class Bench:
    workdir: Path
    rig_root: Path
    session_folder: Path
    suite2p_folder: Path  # holds plane0/
    pristine_nwb: Path  # the finished session file, never written to
    pristine_state: Path  # rig2nwb's state folder right after convert
    nwb_path: Path  # where rig2nwb's ledger expects the session file
    state_folder: Path
    n_rois: int
    n_frames: int
    timeout: float
    keep: bool


@dataclass
class Row:
    method: str
    compression: str
    m: Measured | None = None
    growth: int | None = None  # bytes the NWB (or HDF5) file grew by
    check: str = ""
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.m is not None and self.m.rc == 0 and self.check.startswith("OK")


def read_phases(path: Path) -> dict[str, float]:
    if not path.exists():
        return {}
    return {k: float(v) for k, v in json.loads(path.read_text()).items()}


def check_traces(path: Path, plane: Path, n_rois: int, n_frames: int) -> str:
    """Find each of F, Fneu and spks in the written file (a 2-D dataset of (time, ROI) or
    (ROI, time)) and compare the first, middle and last frame with the suite2p arrays."""
    import h5py
    import hdf5plugin  # noqa: F401  (registers the Blosc filters rig2nwb may write with)

    refs = {name: np.load(plane / f"{name}.npy", mmap_mode="r") for name in TRACES}
    samples = sorted({0, n_frames // 2, n_frames - 1})
    candidates: list[str] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and obj.ndim == 2 and sorted(obj.shape) == sorted(
                (n_rois, n_frames)):
            candidates.append(name)

    found: dict[str, str] = {}
    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
            for loc in candidates:
                ds = f[loc]
                time_major = ds.shape == (n_frames, n_rois)
                got = [np.asarray(ds[t, :] if time_major else ds[:, t]) for t in samples]
                for name, ref in refs.items():
                    if name not in found and all(
                            np.array_equal(g.astype(np.float32), ref[:, t])
                            for g, t in zip(got, samples, strict=True)):
                        found[name] = loc
                        break
    except OSError as exc:
        return f"UNREADABLE ({exc})"
    missing = [n for n in TRACES if n not in found]
    if missing:
        return f"MISSING {','.join(missing)} (2-D candidates: {len(candidates)})"
    def short(loc: str) -> str:  # .../Fluorescence/RoiResponseSeries/data -> RoiResponseSeries
        parts = loc.split("/")
        return parts[-2] if parts[-1] == "data" and len(parts) > 1 else parts[-1]

    return "OK " + " ".join(f"{n}={short(found[n])}" for n in TRACES)


def run_neuroconv(bench: Bench, compression: str, run_dir: Path) -> Row:
    row = Row("NeuroConv", "gzip 4" if compression == "gzip" else compression)
    if not PEERS_PYTHON.exists():
        row.check = f"SKIPPED: {PEERS_PYTHON} missing (run: bash benchmarks/setup_peers.sh)"
        return row
    run_dir.mkdir(parents=True)
    nwb = run_dir / bench.pristine_nwb.name
    shutil.copyfile(bench.pristine_nwb, nwb)
    phases = run_dir / "phases.json"
    cmd = module_command(MODULE, NEUROCONV_CHILD, "--folder", str(bench.suite2p_folder),
                         "--nwb", str(nwb), "--compression", compression, "--result", str(phases),
                         python=PEERS_PYTHON)
    row.m = measure(cmd, run_dir, bench.timeout, env=module_env())
    row.phases = read_phases(phases)
    finish(bench, row, nwb, run_dir)
    return row


def run_h5py(bench: Bench, compression: str, run_dir: Path) -> Row:
    row = Row("plain h5py", "gzip 4" if compression == "gzip" else compression)
    run_dir.mkdir(parents=True)
    out = run_dir / "traces.h5"
    phases = run_dir / "phases.json"
    cmd = module_command(MODULE, H5PY_CHILD, "--plane", str(bench.suite2p_folder / "plane0"),
                         "--out", str(out), "--compression", compression, "--result", str(phases))
    row.m = measure(cmd, run_dir, bench.timeout, env=module_env())
    row.phases = read_phases(phases)
    finish(bench, row, out, run_dir, base_size=0)
    return row


def write_config(path: Path, *, rig_root: Path, output: Path, state: Path, compression: str,
                 level: int | None = None) -> None:
    """A rig2nwb config for the ScanImage-style layout {subject}/{session}/*.tif; everything not
    written here keeps rig2nwb's defaults."""
    from rig2nwb.testing.configs import write_config as write_toml  # not in the peers venv

    out: dict[str, object] = {"folder": str(output), "compression": compression}
    if level is not None:
        out["compression_level"] = level
    # The post-session file check (pynwb validator + nwbinspector) is not what is measured.
    out["check_files"] = False
    write_toml(path, {
        "rig": {"name": "bench", "root": str(rig_root), "frames": "{subject}/{session}/*.tif",
                "scan_file": "", "trial_file": ""},
        "output": out,
        "state": {"folder": str(state)},
        "session": {"description": "suite2p attach benchmark (synthetic data)",
                    "experimenter": ["Doe, Jane"], "lab": "Bench Lab", "institution": "Bench University"},
        "subject": {"species": "Mus musculus", "sex": "U", "age": "P90D"},
        "imaging": {"frame_rate": FRAME_RATE},
        # JSON explicitly: the benchmark only keeps the log, but it should be machine-readable.
        "logging": {"level": "INFO", "format": "json"},
    }, comment="Written by benchmarks/suite2p_attach.py")


def restore_session(bench: Bench) -> None:
    """Put the session's NWB file and rig2nwb's state back as convert left them."""
    out_dir = bench.nwb_path.parent
    shutil.rmtree(out_dir)
    out_dir.mkdir()
    shutil.copyfile(bench.pristine_nwb, bench.nwb_path)
    shutil.rmtree(bench.state_folder, ignore_errors=True)
    shutil.copytree(bench.pristine_state, bench.state_folder)


def run_rig2nwb(bench: Bench, compression: str, run_dir: Path) -> Row:
    level = 4 if compression == "gzip" else None
    row = Row("rig2nwb", f"gzip {level}" if level is not None else compression)
    run_dir.mkdir(parents=True)
    restore_session(bench)
    cfg = run_dir / "config.toml"
    write_config(cfg, rig_root=bench.rig_root, output=bench.nwb_path.parent,
                 state=bench.state_folder, compression=compression, level=level)
    cmd = [sys.executable, "-m", "rig2nwb", "attach", str(bench.session_folder), "--config", str(cfg)]
    row.m = measure(cmd, run_dir, bench.timeout)
    finish(bench, row, bench.nwb_path, run_dir, keep_as=run_dir / bench.nwb_path.name)
    return row


def attach_problem() -> str | None:
    """Why ``rig2nwb attach`` cannot be run with this interpreter, or None if it can."""
    proc = subprocess.run([sys.executable, "-m", "rig2nwb", "attach", "--help"],
                          capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return None
    if "invalid choice" in proc.stderr:
        return "NOT RUN: this rig2nwb has no 'attach' command yet"
    return f"NOT RUN: 'rig2nwb attach --help' failed: {last_lines_of(proc.stderr)[:300]}"



def finish(bench: Bench, row: Row, out: Path, run_dir: Path, *, base_size: int | None = None,
           keep_as: Path | None = None) -> None:
    assert row.m is not None
    base = bench.pristine_nwb.stat().st_size if base_size is None else base_size
    if out.exists() and row.m.rc == 0:
        row.growth = out.stat().st_size - base
    if row.m.rc != 0:
        row.check = failure_text(row.m, run_dir)
    else:
        row.check = check_traces(out, bench.suite2p_folder / "plane0", bench.n_rois, bench.n_frames)
    if bench.keep and keep_as is not None and out.exists():
        shutil.move(out, keep_as)
    elif not bench.keep:
        out.unlink(missing_ok=True)


# --- setup and report ---------------------------------------------------------------------------


def prepare(workdir: Path, n_rois: int, n_frames: int, seed: int, keep: bool,
            timeout: float) -> Bench:
    rig_root = workdir / "rig"
    session_folder = rig_root / SUBJECT / SESSION
    t0 = time.perf_counter()
    tiffs = write_tiffs(session_folder, n_frames, seed)
    print(f"TIFFs: {len(tiffs)} files x {FRAMES_PER_FILE} pages of {FRAME_SHAPE[0]}x{FRAME_SHAPE[1]}"
          f" int16 ({n_frames} frames) in {time.perf_counter() - t0:.1f} s", flush=True)

    # convert with compression "none": the session file can then be read by any HDF5 reader
    # (the peers venv has no hdf5plugin), and the trace writes are all that differ between runs.
    base = workdir / "base"
    nwb_dir, state = base / "nwb", base / "state"
    nwb_dir.mkdir(parents=True)
    cfg = base / "convert.toml"
    write_config(cfg, rig_root=rig_root, output=nwb_dir, state=state, compression="none")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rig2nwb", "convert", str(session_folder),
                           "--config", str(cfg), "--no-progress"], capture_output=True, text=True,
                          check=False)
    nwbs = sorted(nwb_dir.glob("*.nwb"))
    if proc.returncode != 0 or len(nwbs) != 1:
        raise SystemExit(f"rig2nwb convert failed (rc={proc.returncode}):\n{proc.stdout}\n"
                         f"{proc.stderr[-3000:]}")
    print(f"rig2nwb convert: {nwbs[0].name}, {nwbs[0].stat().st_size / 1e6:.0f} MB, "
          f"{time.perf_counter() - t0:.1f} s", flush=True)

    pristine = workdir / "pristine"
    pristine.mkdir()
    pristine_nwb = pristine / nwbs[0].name
    shutil.copyfile(nwbs[0], pristine_nwb)
    shutil.copytree(state, pristine / "state")

    # The suite2p folder goes in only after convert, so convert can never pick it up itself.
    t0 = time.perf_counter()
    suite2p_folder = session_folder / "suite2p"
    write_suite2p_folder(suite2p_folder / "plane0", session_folder=session_folder, tiffs=tiffs,
                         n_rois=n_rois, n_frames=n_frames, seed=seed + 1)
    size = sum(p.stat().st_size for p in (suite2p_folder / "plane0").iterdir())
    print(f"suite2p folder: {n_rois} ROIs x {n_frames} frames, {size / 1e6:.0f} MB, "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    return Bench(workdir, rig_root, session_folder, suite2p_folder, pristine_nwb,
                 pristine / "state", nwbs[0], state, n_rois, n_frames, timeout, keep)


_PEER_PACKAGES = ("neuroconv", "roiextractors", "pynwb", "hdmf", "h5py")


def median_row(rows: list[Row]) -> Row:
    """One row of repeated runs: the median wall time, the largest peak RSS, any failure."""
    done = [r for r in rows if r.m is not None]
    if not done:
        return rows[0]
    failed = [r for r in done if not r.ok]
    first = failed[0] if failed else done[0]
    walls = [r.m.wall for r in done if r.m is not None]
    rss = max(r.m.peak_rss for r in done if r.m is not None)
    cpu = statistics.median(r.m.cpu for r in done if r.m is not None)
    assert first.m is not None
    m = Measured(first.m.rc, statistics.median(walls), rss, cpu)
    phases = {k: statistics.median(r.phases[k] for r in done if k in r.phases)
              for k in first.phases}
    return Row(first.method, first.compression, m, first.growth, first.check, phases)


def fmt(value: float | None, spec: str) -> str:
    """``format(value, spec)``, or "-" as wide as the spec's width ("7.2f": 7)."""
    if value is None or math.isnan(value):
        return "-".rjust(int(spec.split(".")[0]))
    return format(value, spec)


def report(rows: list[Row], repeats: int) -> None:
    print()
    head = (f"{'method':<12} {'compression':<11} {'wall s':>7} {'CPU s':>6} {'peak RSS MB':>11} "
            f"{'growth MB':>9}  check / notes")
    print(head)
    print("-" * len(head))
    for r in rows:
        m = r.m
        notes = r.check
        if r.phases:
            notes += "  [" + ", ".join(f"{k} {v:.1f}" for k, v in r.phases.items()) + "]"
        print(f"{r.method:<12} {r.compression:<11} {fmt(m.wall if m else None, '7.2f')} "
              f"{fmt(m.cpu if m else None, '6.1f')} "
              f"{fmt(m.peak_rss / 1e6 if m and m.peak_rss else None, '11.0f')} "
              f"{fmt(r.growth / 1e6 if r.growth is not None else None, '9.1f')}  {notes}")
    if repeats > 1:
        print(f"(median wall and CPU of {repeats} runs, largest peak RSS)")

    def find(method: str, compression: str) -> Row | None:
        return next((r for r in rows if r.method == method and r.compression == compression), None)

    print()
    print(f"goal: rig2nwb >= {SPEED_GOAL:g}x faster than NeuroConv and a lower peak RSS, "
          "at equal compression")
    if not any(find("rig2nwb", o) and find("NeuroConv", t) for o, t in GOAL_PAIRS):
        print("  (no rig2nwb / NeuroConv pair was run)")
    for ours_c, theirs_c in GOAL_PAIRS:
        ours, theirs = find("rig2nwb", ours_c), find("NeuroConv", theirs_c)
        label = f"rig2nwb {ours_c} vs NeuroConv {theirs_c}"
        if ours is None or theirs is None:
            continue
        if not (ours.ok and theirs.ok) or ours.m is None or theirs.m is None:
            why = "rig2nwb" if not ours.ok else "NeuroConv"
            print(f"  {label:<40} n/a ({why} run failed or was not run)")
            continue
        speed = theirs.m.wall / ours.m.wall
        rss = ours.m.peak_rss / theirs.m.peak_rss
        verdict = "MET" if speed >= SPEED_GOAL and rss < 1.0 else "NOT MET"
        note = " (each tool's default)" if ours_c == "blosc-lz4" else ""
        print(f"  {label:<40} {speed:5.2f}x faster, peak RSS x{rss:.2f}  -> {verdict}{note}")


def json_goals(rows: list[Row]) -> list[dict[str, Any]]:
    """The goals in the shared format: speed and peak RSS of each (rig2nwb, NeuroConv) pair."""
    goals: list[dict[str, Any]] = []
    for ours_c, theirs_c in GOAL_PAIRS:
        ours = next((r for r in rows if r.method == "rig2nwb" and r.compression == ours_c), None)
        theirs = next((r for r in rows if r.method == "NeuroConv" and r.compression == theirs_c),
                      None)
        pair = f"rig2nwb {ours_c} vs NeuroConv {theirs_c}" + (
            " (each tool's default)" if ours_c == "blosc-lz4" else " (equal compression)")
        speed: dict[str, Any] = {"goal": f"{pair}: >= {SPEED_GOAL:g}x faster",
                                 "target": f">= {SPEED_GOAL:.1f}x"}
        rss: dict[str, Any] = {"goal": f"{pair}: lower peak RSS", "target": "< 1.00x NeuroConv's"}
        if ours is None or theirs is None:
            for g in (speed, rss):
                g.update(measured="not measured: a run was not in the plan", met=None)
        elif not (ours.ok and theirs.ok) or ours.m is None or theirs.m is None:
            why = "rig2nwb" if not ours.ok else "NeuroConv"
            for g in (speed, rss):
                g.update(measured=f"not measured: the {why} run failed or was not run", met=None)
        else:
            x = theirs.m.wall / ours.m.wall
            speed.update(measured=f"{x:.2f}x ({ours.m.wall:.2f} s vs {theirs.m.wall:.2f} s)",
                         met=x >= SPEED_GOAL)
            r = ours.m.peak_rss / theirs.m.peak_rss
            rss.update(measured=f"{r:.2f}x ({ours.m.peak_rss / 1e6:.0f} vs "
                                f"{theirs.m.peak_rss / 1e6:.0f} MB)", met=r < 1.0)
        goals += [speed, rss]
    return goals


def write_json(path: Path, rows: list[Row], args: argparse.Namespace, argv: Sequence[str],
               workdir: Path) -> None:
    """The results in the benchmarks' shared format (see run_all.py)."""

    def num(value: float | None, digits: int) -> float | None:
        return None if value is None or math.isnan(value) else round(value, digits)

    table = [{"method": r.method, "compression": r.compression,
              "wall s": num(r.m.wall if r.m else None, 2), "CPU s": num(r.m.cpu if r.m else None, 1),
              "peak RSS MB": num(r.m.peak_rss / 1e6 if r.m and r.m.peak_rss else None, 0),
              "growth MB": num(r.growth / 1e6 if r.growth is not None else None, 1),
              "check": r.check} for r in rows]
    notes = [f"{r.method} {r.compression} phases: "
             + ", ".join(f"{k} {v:.1f} s" for k, v in r.phases.items()) for r in rows if r.phases]
    notes.append("growth MB = how much the session's NWB file grew (plain h5py: its file's size); "
                 "peak RSS includes file-backed pages of memory-mapped .npy files")
    if args.repeats > 1:
        notes.append(f"median wall and CPU of {args.repeats} runs, largest peak RSS")
    result = {
        "benchmark": "suite2p", "title": "suite2p attach vs NeuroConv's Suite2pSegmentationInterface",
        "command": command_line(MODULE, argv),
        "machine": machine_description(workdir.parent),
        "params": {"rois": args.rois, "frames": args.frames, "repeats": args.repeats,
                   "rig2nwb compressions": args.rig2nwb_compressions, "seed": args.seed},
        "columns": ["method", "compression", "wall s", "CPU s", "peak RSS MB", "growth MB", "check"],
        "rows": table, "goals": json_goals(rows), "notes": notes,
    }
    path.write_text(json.dumps(result, indent=1), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == NEUROCONV_CHILD:
        return neuroconv_child(argv[1:])
    if argv and argv[0] == H5PY_CHILD:
        return h5py_child(argv[1:])

    p = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rois", type=int, help=f"ROIs (1000; --quick: {QUICK_ROIS})")
    p.add_argument("--frames", type=int, help=f"frames (50000; --quick: {QUICK_FRAMES})")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: --rois {QUICK_ROIS} --frames {QUICK_FRAMES} unless given")
    p.add_argument("--json", type=Path, help="also write the results in the shared benchmark "
                   "format (see run_all.py)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="a new rig2nwb-s2p-bench-* folder for data and outputs is made in it "
                        "(default: in the system temp folder, /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work folder and every output")
    p.add_argument("--skip-neuroconv", action="store_true")
    p.add_argument("--skip-h5py", action="store_true")
    p.add_argument("--rig2nwb-compressions", default="gzip,none,blosc-lz4",
                   help="output.compression values of the rig2nwb runs ('' = none of them)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved runs of every row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per measured run")
    args = p.parse_args(argv)
    if args.rois is None:
        args.rois = QUICK_ROIS if args.quick else 1000
    if args.frames is None:
        args.frames = QUICK_FRAMES if args.quick else 50_000
    if args.rois < 1 or args.frames < 2 or args.repeats < 1:
        p.error("--rois >= 1, --frames >= 2 and --repeats >= 1")
    ours = [c.strip() for c in args.rig2nwb_compressions.split(",") if c.strip()]

    # Always a fresh folder (inside --workdir if given): old data is never reused.
    workdir = make_workdir(args.workdir, prefix="rig2nwb-s2p-bench-").resolve()
    started = time.perf_counter()
    print(f"work folder: {workdir}", flush=True)
    print(f"rig2nwb side: {versions(sys.executable, ('rig2nwb', 'pynwb', 'hdmf', 'h5py'))}"
          f" ({git_state()}); load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.skip_neuroconv:
        print(f"NeuroConv side: {versions(str(PEERS_PYTHON), _PEER_PACKAGES)}", flush=True)
    try:
        bench = prepare(workdir, args.rois, args.frames, args.seed, args.keep, args.timeout)
        plan: list[tuple[str, str]] = []
        if not args.skip_h5py:
            plan += [("h5py", "none"), ("h5py", "gzip")]
        if not args.skip_neuroconv:
            plan += [("neuroconv", "gzip"), ("neuroconv", "none")]
        plan += [("rig2nwb", c) for c in ours]
        runners = {"h5py": run_h5py, "neuroconv": run_neuroconv, "rig2nwb": run_rig2nwb}
        results: dict[tuple[str, str], list[Row]] = {key: [] for key in plan}
        no_attach = attach_problem() if ours else None
        if no_attach:
            print(f"rig2nwb attach: {no_attach}", flush=True)
        for rep in range(args.repeats):
            for method, compression in plan:
                if method == "rig2nwb" and no_attach:
                    if not rep:
                        results[(method, compression)].append(Row(
                            "rig2nwb", "gzip 4" if compression == "gzip" else compression,
                            check=no_attach))
                    continue
                run_dir = workdir / "runs" / f"{method}-{compression}-{rep + 1}"
                row = runners[method](bench, compression, run_dir)
                results[(method, compression)].append(row)
                wall = f"{row.m.wall:.2f} s" if row.m else "-"
                print(f"  run {rep + 1}/{args.repeats}: {row.method} {row.compression}: {wall} "
                      f"{row.check}", flush=True)
        rows = [median_row(rs) for rs in results.values()]
        report(rows, args.repeats)
        print(f"\nwhole benchmark: {time.perf_counter() - started:.0f} s")
        if args.json:
            write_json(args.json, rows, args, argv, workdir)
        return 0 if all(r.ok for r in rows) else 1
    finally:
        if args.keep:
            print(f"kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
