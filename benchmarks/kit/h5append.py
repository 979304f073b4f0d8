"""The practical limit: a plain h5py append of the session's TIFF pages, the baseline that
append_throughput, batch_convert and compression_table compare ``rig2nwb convert`` with.

It always runs in a child process of its own (``python -m benchmarks.kit.h5append``, built by
``command``), measured like every other method: ``run_limit`` runs and checks it.
numpy and tifffile at module level; h5py only inside the child.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tifffile

from benchmarks.kit.childrun import Measured, failure_text, measure
from benchmarks.kit.frames import BLOCK_FRAMES, Dataset, child_timeout, verify
from benchmarks.kit.paths import module_command, module_env

MODULE = "benchmarks.kit.h5append"


def h5py_append(out: Path, tiffs: Sequence[Path], batch: int, gzip_level: int | None = None) -> float:
    """TIFF pages in batches to a one-frame-chunked dataset (uncompressed, or HDF5's own gzip at
    ``gzip_level``), flushed per batch and fsynced per file (rig2nwb's durability points).
    Returns loop seconds."""
    import h5py

    with tifffile.TiffFile(tiffs[0]) as tf:
        shape, dtype = tf.pages.first.shape, tf.pages.first.dtype
    t0 = time.perf_counter()
    n = 0
    with h5py.File(out, "w") as f:
        gzip = {} if gzip_level is None else {"compression": "gzip",
                                               "compression_opts": gzip_level}
        data = f.create_dataset("data", shape=(0, *shape), maxshape=(None, *shape),
                                chunks=(1, *shape), dtype=dtype, **gzip)
        for path in tiffs:
            with tifffile.TiffFile(path) as tf:
                # The same reading mode as rig2nwb's read_batches, so only the writing differs.
                tf.pages.cache = False
                tf.pages.useframes = True
                pages = len(tf.pages)
                for a in range(0, pages, batch):
                    b = min(pages, a + batch)
                    frames = tf.asarray(key=range(a, b), maxworkers=1).reshape(b - a, *shape)
                    data.resize(n + b - a, axis=0)
                    data[n:n + b - a] = frames
                    n += b - a
                    f.flush()
            os.fsync(f.id.get_vfd_handle())
    return time.perf_counter() - t0


def command(out: Path, result: Path, tiffs: Sequence[Path], *, batch: int = BLOCK_FRAMES,
            gzip_level: int | None = None) -> list[str]:
    """The child's command line; run it with ``env=module_env()``. It writes the HDF5 file
    ``out`` (dataset ``data``) and ``{"loop_seconds": ...}`` to ``result``."""
    level = [] if gzip_level is None else ["--gzip-level", str(gzip_level)]
    return module_command(MODULE, "--out", str(out), "--result", str(result), "--batch", str(batch),
                          *level, *map(str, tiffs))


def read_loop_seconds(result: Path) -> float | None:
    return float(json.loads(result.read_text())["loop_seconds"]) if result.exists() else None


@dataclass(frozen=True)
class LimitRun:
    m: Measured
    loop_seconds: float | None  # time inside the append loop, start-up excluded
    output_bytes: int | None
    check: str


def run_limit(ds: Dataset, run_dir: Path, keep: bool) -> LimitRun:
    """The uncompressed append of ``ds`` as a measured child, its output checked against the
    TIFFs and then deleted (unless ``keep``)."""
    run_dir.mkdir(parents=True)
    out = run_dir / "append.h5"
    loop = run_dir / "loop.json"
    m = measure(command(out, loop, ds.tiffs), run_dir, child_timeout(ds), env=module_env())
    loop_s = read_loop_seconds(loop)
    size = out.stat().st_size if out.exists() else None
    check = verify(out, "data", ds) if m.rc == 0 else failure_text(m, run_dir, tail=2)
    if not keep:
        out.unlink(missing_ok=True)
    return LimitRun(m, loop_s, size, check)


def main(argv: Sequence[str] | None = None) -> int:
    """The child: append the TIFFs, write the loop seconds."""
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                description="h5py append of TIFF pages (a benchmark's child)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--result", type=Path, required=True)
    p.add_argument("--batch", type=int, default=BLOCK_FRAMES)
    p.add_argument("--gzip-level", type=int, help="HDF5's gzip at this level (default: none)")
    p.add_argument("tiffs", type=Path, nargs="+")
    args = p.parse_args(argv)
    seconds = h5py_append(args.out, args.tiffs, args.batch, args.gzip_level)
    args.result.write_text(json.dumps({"loop_seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
