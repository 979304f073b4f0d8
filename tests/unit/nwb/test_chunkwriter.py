"""gzip chunks compressed on a thread pool and written with write_direct_chunk (chunkwriter).

Expectations are independent of the code under test: frames read back through HDF5's own deflate
filter (h5py, and a child process that has never imported hdf5plugin or rig2nwb) must equal the
source arrays bit for bit, and every stored chunk must be a zlib stream that Python's zlib
inflates to the frame's bytes.
"""

from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

from rig2nwb.core.pagelayout import PageLayout
from rig2nwb.nwb import chunks as chunkwriter
from rig2nwb.nwb.writer import SessionAppender

SHAPE = (64, 48)


def frames(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = (400 + rng.poisson(50, (n, *SHAPE))).astype("<i2")
    out[:, :8] = rng.integers(-32768, 32767, (n, 8, SHAPE[1]), dtype="<i2")  # incompressible rows
    return out


def gzip_dataset(f: h5py.File, chunk: int = 1, level: int = 4, **extra: object) -> h5py.Dataset:
    return f.create_dataset("d", shape=(0, *SHAPE), maxshape=(None, *SHAPE), dtype="<i2",
                            chunks=(chunk, *SHAPE), compression="gzip", compression_opts=level,
                            **extra)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_direct_chunks_read_back_through_hdf5s_deflate(tmp_path: Path, threads: int) -> None:
    src = frames(30)
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        ds = gzip_dataset(f, level=6)
        writer = chunkwriter.for_dataset(ds, threads)
        assert writer is not None and writer.level == 6
        ds.resize(30, axis=0)
        writer.write(0, src[:20])
        writer.write(20, src[20:])
    with h5py.File(path, "r") as f:
        ds = f["d"]
        assert np.array_equal(ds[:], src)
        for k in (0, 17, 29):
            mask, payload = ds.id.read_direct_chunk((k, 0, 0))
            assert mask == 0  # the deflate filter is recorded as applied
            assert zlib.decompress(payload) == src[k].tobytes()


@pytest.mark.parametrize("threads", [1, 2])
def test_shuffled_chunks_read_back_through_hdf5s_own_filters(tmp_path: Path, threads: int) -> None:
    """shuffle + deflate (the default pipeline): each stored chunk is the frame's bytes
    regrouped by byte position (HDF5's shuffle, written out here with numpy) and deflated."""
    src = frames(12, seed=5)
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        ds = gzip_dataset(f, level=1, shuffle=True)
        writer = chunkwriter.for_dataset(ds, threads)
        assert writer is not None
        ds.resize(12, axis=0)
        writer.write(0, src)
    with h5py.File(path, "r") as f:
        ds = f["d"]
        assert np.array_equal(ds[:], src)
        for k in (0, 11):
            mask, payload = ds.id.read_direct_chunk((k, 0, 0))
            assert mask == 0
            shuffled = src[k].tobytes()
            by_position = b"".join(shuffled[i::2] for i in range(2))  # int16: 2 bytes a value
            assert zlib.decompress(payload) == by_position


def test_readable_without_plugins_in_a_fresh_process(tmp_path: Path) -> None:
    src = frames(6, seed=3)
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        ds = gzip_dataset(f)
        ds.resize(6, axis=0)
        writer = chunkwriter.for_dataset(ds, 2)
        assert writer is not None
        writer.write(0, src)
    np.save(tmp_path / "src.npy", src)
    code = ("import sys, h5py, numpy as np\n"
            "assert 'hdf5plugin' not in sys.modules\n"
            f"d = h5py.File({str(path)!r}, 'r')['d'][:]\n"
            f"assert np.array_equal(d, np.load({str(tmp_path / 'src.npy')!r})), 'frames differ'\n")
    env = {"PATH": "/usr/bin:/bin", "HDF5_PLUGIN_PATH": str(tmp_path / "no-plugins")}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("start,count", [(0, 9), (1, 9), (2, 1), (4, 2), (5, 11), (3, 3)])
def test_partial_chunks_go_through_h5py(tmp_path: Path, start: int, count: int) -> None:
    """Three-frame chunks, writes that start and end anywhere: whole chunks are written directly,
    partial ones merged by HDF5; the dataset must equal the source either way."""
    src = frames(start + count + 4, seed=1)
    with h5py.File(tmp_path / "p.h5", "w") as f:
        ds = gzip_dataset(f, chunk=3)
        writer = chunkwriter.for_dataset(ds, 2)
        assert writer is not None
        ds.resize(start, axis=0)
        ds[:start] = src[:start]
        ds.resize(start + count, axis=0)
        appender_like_put(ds, writer, start, src[start:start + count])
        ds.resize(start + count + 4, axis=0)
        appender_like_put(ds, writer, start + count, src[start + count:])
        assert np.array_equal(ds[:], src)


def appender_like_put(ds: h5py.Dataset, writer: chunkwriter.DeflateChunkWriter, k0: int,
                      block: np.ndarray) -> None:
    # The same split SessionAppender._put makes; the appender itself is tested below.
    end = k0 + block.shape[0]
    first, last = writer.aligned(k0, end)
    if first >= last:
        ds[k0:end] = block
        return
    ds[k0:first] = block[: first - k0]
    writer.write(first, block[first - k0:last - k0])
    ds[last:end] = block[last - k0:]


def test_rejects_unaligned_writes(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "u.h5", "w") as f:
        ds = gzip_dataset(f, chunk=4)
        ds.resize(8, axis=0)
        writer = chunkwriter.for_dataset(ds, 1)
        assert writer is not None
        with pytest.raises(ValueError, match="not whole chunks"):
            writer.write(2, frames(4))


@pytest.mark.parametrize("kwargs", [
    {},  # no filter
    {"compression": "lzf"},
    {"compression": "gzip", "fletcher32": True},
    {"compression": "gzip", "shuffle": True, "fletcher32": True},
    {**hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.BITSHUFFLE)},
])
def test_other_pipelines_are_left_to_hdf5(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with h5py.File(tmp_path / "o.h5", "w") as f:
        ds = f.create_dataset("d", shape=(0, *SHAPE), maxshape=(None, *SHAPE), dtype="<i2",
                              chunks=(1, *SHAPE), **kwargs)  # type: ignore[arg-type]
        assert chunkwriter.for_dataset(ds, 2) is None


def test_chunks_that_split_a_frame_are_left_to_hdf5(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "s.h5", "w") as f:
        ds = f.create_dataset("d", shape=(0, *SHAPE), maxshape=(None, *SHAPE), dtype="<i2",
                              chunks=(1, 32, 48), compression="gzip")
        assert chunkwriter.for_dataset(ds, 2) is None


def test_big_endian_source_is_stored_in_the_files_byte_order(tmp_path: Path) -> None:
    src = frames(4, seed=5)
    with h5py.File(tmp_path / "be.h5", "w") as f:
        ds = gzip_dataset(f)
        ds.resize(4, axis=0)
        writer = chunkwriter.for_dataset(ds, 2)
        assert writer is not None
        writer.write(0, src.astype(">i2"))
        assert np.array_equal(ds[:], src)


def test_appender_writes_multi_series_gzip_sessions(tmp_path: Path) -> None:
    """SessionAppender over a two-plane x two-channel layout with gzip series: every series
    holds its de-interleaved pages, batch boundaries falling anywhere."""
    layout = PageLayout(channels=(1, 2), planes=2, frame_rate=30.0)
    n_pages = 4 * 13
    pages = frames(n_pages, seed=7)
    path = tmp_path / "s.nwb"
    with h5py.File(path, "w") as f:
        for spec in layout.series:
            g = f.create_group(spec.path)
            g.create_dataset("data", shape=(0, *SHAPE), maxshape=(None, *SHAPE), dtype="<i2",
                             chunks=(2, *SHAPE), compression="gzip", compression_opts=4)
            g.create_dataset("timestamps", shape=(0,), maxshape=(None,), dtype="f8", chunks=(64,))
    appender = SessionAppender(path, layout, compress_threads=2)
    try:
        start = 0
        for size in (5, 8, 3, 16, 20):
            times = np.arange(start, start + size) / 120.0
            appender.write(start, pages[start:start + size], times)
            start += size
        assert start == n_pages
        appender.sync()
    finally:
        appender.close()
    with h5py.File(path, "r") as f:
        for s, spec in enumerate(layout.series):
            # Pages run channel fastest, then plane: series s holds every 4th page from s.
            assert np.array_equal(f[spec.path]["data"][:], pages[s::4]), spec.name



def test_grid_writes_pad_edge_chunks(tmp_path: Path) -> None:
    """(time, ROI) traces in (7, 4) chunks over a (23, 10) dataset: column blocks of 4 ROIs,
    the last block 2 wide and the last time chunk 2 long (both stored padded)."""
    rng = np.random.default_rng(11)
    src = rng.standard_normal((23, 10)).astype(np.float32)
    with h5py.File(tmp_path / "t.h5", "w") as f:
        ds = f.create_dataset("t", shape=(23, 10), dtype="f4", chunks=(7, 4), compression="gzip")
        writer = chunkwriter.deflate_writer(ds, 2)
        assert writer is not None and chunkwriter.for_dataset(ds, 2) is None  # not whole frames
        for r0 in range(0, 10, 4):
            writer.write_grid((0, r0), src[:, r0:r0 + 4])
        assert np.array_equal(ds[:], src)
        with pytest.raises(ValueError, match="not whole chunks"):
            writer.write_grid((0, 2), src[:, 2:6])  # starts inside a chunk
        with pytest.raises(ValueError, match="not whole chunks"):
            writer.write_grid((0, 0), src[:10, :4])  # ends inside a chunk before the edge
