"""Writing suite2p results into a session's NWB file, replaceable as a whole.

The live file is never written in place. HDF5 has no journal: a process killed while it unlinks
or writes groups can leave the file's metadata damaged (seen in the SIGKILL tests: "address of
object past end of allocation" on the next attach). So the attach works on a complete copy of
the finished file (``work_copy``, ``~<name>.suite2p.nwb`` beside it): new results are written
with pynwb into a staging processing module (``processing/ophys_rig2nwb_staging``), which is
then moved into place as ``processing/ophys`` (after the old module is unlinked) inside the
copy; the copy is fsynced and renamed over the original (``commit_copy``), the one atomic step.
A process killed before the rename leaves the original untouched (the copy is deleted at
start-up); one killed after the ledger marked the copy complete ("staged") has the rename
finished at start-up. So the file holds the complete old or the complete new results, and a
damaged copy never becomes the file. The price: free space for one more copy of the file while
attaching, and the time to copy it (disk speed).

hdmf writes links between objects of the same file as soft links by *path*, which a move would
leave dangling: nothing inside the module links to another object of the module (every series
gets its own copy of the plane's frame times; ROI tables are referenced through object
references, which follow the object). ``_check_no_inner_links`` proves it before the swap.

Orientation: suite2p's ``ypix`` is the image row and ``xpix`` the column. The raw series store
``data[t, row, column]`` and the NWB dimension labels are (frames, x, y), so pixel masks are
stored as (x=row, y=column, weight) and images as [row, column]: masks, images and the movie use
one convention, stated in every description.

Traces are written in (time, ROI) orientation in blocks of ROIs read from the memory-mapped
suite2p arrays, so memory stays bounded (a block is ROIs x frames x 4 bytes) whatever the size.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from hdmf.data_utils import AbstractDataChunkIterator, DataChunk

from rig2nwb.core.dff import BaselineSettings, dff_block
from rig2nwb.errors import AttachError
from rig2nwb.fsutil import fsync_path
from rig2nwb.nwb import chunks as chunkwriter
from rig2nwb.progress import beat as heartbeat
from rig2nwb.suite2p.folder import Suite2pPlane, read_rows

MODULE = "ophys"
STAGING = "ophys_rig2nwb_staging"
ROI_BLOCK = 32  # ROIs per written block and per chunk column: (8192 frames x 32 ROIs) = 1 MB
TIME_CHUNK = 8192

ORIENTATION = (
    "Pixel coordinates follow the raw TwoPhotonSeries: x = image row (suite2p ypix), y = image "
    "column (suite2p xpix), so pixel_mask (x, y, weight) indexes data[t, x, y] of the movie."
)


@dataclass(frozen=True)
class PlaneTarget:
    """The raw series a suite2p plane belongs to, read from the NWB file."""

    plane: int
    series: str  # the functional channel's TwoPhotonSeries
    imaging_plane: str
    frames: int
    frame_shape: tuple[int, int]
    timestamps: np.ndarray | None  # a copy of the series' frame times, or None when rate form
    starting_time: float
    rate: float
    suffix: str  # "" for a one-plane session, else "_plane{p}"


@dataclass
class AttachSummary:
    planes: int = 0
    rois: int = 0
    cells: int = 0
    red: int = 0
    clamped: int = 0
    seconds: float = 0.0
    per_plane: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> AttachSummary:
        return cls(**json.loads(text))

    def short(self) -> str:
        return (f"{self.rois} ROIs ({self.cells} cells"
                + (f", {self.red} red" if self.red else "") + f"), {self.planes} plane(s)")


def plane_target(f: h5py.File, series_name: str, plane: int, suffix: str) -> PlaneTarget:
    """Describe the raw series ``series_name`` of an open NWB file."""
    g = f[f"acquisition/{series_name}"]
    data = g["data"]
    link = g.get("imaging_plane", getlink=True)
    plane_path = link.path if isinstance(link, h5py.SoftLink) else g["imaging_plane"].name
    frames = int(data.shape[0])
    if "timestamps" in g:
        stamps = np.asarray(g["timestamps"][:frames], dtype=np.float64)
        return PlaneTarget(plane, series_name, plane_path.rsplit("/", 1)[-1], frames,
                           (int(data.shape[1]), int(data.shape[2])), stamps,
                           float(stamps[0]) if frames else 0.0, 0.0, suffix)
    st = g["starting_time"]
    return PlaneTarget(plane, series_name, plane_path.rsplit("/", 1)[-1], frames,
                       (int(data.shape[1]), int(data.shape[2])), None, float(st[()]),
                       float(st.attrs["rate"]), suffix)


def check_fit(plane: Suite2pPlane, target: PlaneTarget) -> list[str]:
    """Every way a suite2p plane disagrees with the raw series it belongs to."""
    name = plane.folder.name
    problems = []
    if plane.nframes != target.frames:
        problems.append(f"{name}/F.npy has {plane.nframes} frames but {target.series} has "
                        f"{target.frames}: suite2p ran on other frames than this session holds "
                        "(rerun suite2p on the session's TIFFs)")
    if (plane.Ly, plane.Lx) != target.frame_shape:
        problems.append(f"{name}: suite2p frames are {plane.Ly}x{plane.Lx} but {target.series} "
                        f"frames are {target.frame_shape[0]}x{target.frame_shape[1]}")
    return problems


class _TraceBlocks(AbstractDataChunkIterator):  # type: ignore[misc]
    """Yield a (time, ROI) dataset in column blocks computed from (ROI, time) arrays.

    A ``deferred`` iterator yields nothing: hdmf then only creates the dataset (its full shape,
    chunks and filters), and ``_Traces.fill`` writes the blocks afterwards as compressed
    chunks (gzip on every core, see chunkwriter)."""

    def __init__(self, n_rois: int, n_frames: int,
                 block: Callable[[int, int], np.ndarray], deferred: bool = False) -> None:
        self.n_rois, self.n_frames, self.block = n_rois, n_frames, block
        self.r0 = n_rois if deferred else 0

    def __iter__(self) -> Iterator[DataChunk]:
        return self

    def __next__(self) -> DataChunk:
        if self.r0 >= self.n_rois:
            raise StopIteration
        heartbeat()  # a big attach is one long step of the service loop; each block is progress
        r0, r1 = self.r0, min(self.r0 + ROI_BLOCK, self.n_rois)
        self.r0 = r1
        values = np.ascontiguousarray(self.block(r0, r1).T, dtype=np.float32)
        return DataChunk(data=values, selection=np.s_[:, r0:r1])

    def recommended_chunk_shape(self) -> tuple[int, int]:
        # Equal time chunks of at most TIME_CHUNK frames: a last, mostly empty chunk would be
        # stored padded (15% more file for 50,000 frames in 8192-frame chunks, uncompressed).
        n_chunks = max(1, -(-self.n_frames // TIME_CHUNK))
        t_chunk = max(1, -(-self.n_frames // n_chunks))
        return (t_chunk, max(1, min(self.n_rois, ROI_BLOCK)))

    def recommended_data_shape(self) -> tuple[int, int]:
        return (self.n_frames, self.n_rois)

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype("float32")

    @property
    def maxshape(self) -> tuple[int, int]:
        return (self.n_frames, self.n_rois)


@dataclass
class _Deferred:
    """A trace dataset hdmf created empty, to be filled by ``_Traces.fill``."""

    path: str
    blocks: _TraceBlocks


class _Traces:
    """Makes the trace datasets of one staging write: through hdmf as it iterates, or, for
    gzip, created empty and filled afterwards with chunks compressed on ``threads`` threads."""

    def __init__(self, compression: dict[str, Any], threads: int) -> None:
        self.compression = compression
        self.defer = compression.get("compression") == "gzip"  # shuffled or not
        self.threads = threads
        self.deferred: list[_Deferred] = []

    def data(self, path: str, n_rois: int, n_frames: int,
             block: Callable[[int, int], np.ndarray]) -> Any:
        it = _TraceBlocks(n_rois, n_frames, block, deferred=self.defer)
        if self.defer:
            self.deferred.append(_Deferred(path, _TraceBlocks(n_rois, n_frames, block)))
        return _wrap(it, self.compression, it.recommended_chunk_shape())

    def fill(self, f: h5py.File) -> None:
        for job in self.deferred:
            ds = f[job.path]
            writer = chunkwriter.deflate_writer(ds, self.threads)
            if writer is None:  # hdmf did not create what was asked: never silently skip
                raise RuntimeError(f"{job.path}: expected a gzip dataset to fill")
            for chunk in job.blocks:
                writer.write_grid((0, chunk.selection[1].start), chunk.data)


def _wrap(data: Any, compression: dict[str, Any], chunks: tuple[int, ...] | None) -> Any:
    from hdmf.backends.hdf5.h5_utils import H5DataIO

    if not compression and chunks is None:  # compression off: a plain array stays plain
        return data
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*may not be available on all installations")
        return H5DataIO(data=data, chunks=chunks, **compression)


def write_staging(path: Path, planes: list[Suite2pPlane], targets: list[PlaneTarget],
                  compression: dict[str, Any],
                  baseline_for: Callable[[Suite2pPlane, PlaneTarget], BaselineSettings],
                  source: str, compress_threads: int = 1,
                  standard: dict[str, Any] | None = None) -> AttachSummary:
    """Write every plane's results into the staging module of ``path`` (replacing an old staging
    group), then flush and fsync. The live ``ophys`` module is not touched. ``compression``:
    the traces' filters; ``standard``: every other dataset's (pixel masks, images, offsets,
    frame times), built-in filters only."""
    from pynwb import NWBHDF5IO

    t0 = time.perf_counter()
    discard_staging(path)
    summary = AttachSummary(planes=len(planes))
    traces = _Traces(compression, compress_threads)
    counters: list[list[int]] = []
    with NWBHDF5IO(str(path), "a") as io:
        nwb = io.read()
        mod = nwb.create_processing_module(
            name=STAGING, description=(
                f"suite2p results of this session, attached by rig2nwb from {source}. "
                + ORIENTATION))
        containers = _containers(mod)
        for plane, target in zip(planes, targets, strict=True):
            settings = baseline_for(plane, target)
            clamped = [0]
            counters.append(clamped)
            summary.per_plane.append(_add_plane(nwb, mod, containers, plane, target,
                                                standard or {}, settings, traces, clamped))
        io.write(nwb)
    with h5py.File(path, "r+") as f:
        traces.fill(f)
        _check_no_inner_links(f, f"processing/{STAGING}")
        f.flush()
        os.fsync(f.id.get_vfd_handle())
    for p, clamped in zip(summary.per_plane, counters, strict=True):
        p["clamped"] = clamped[0]  # dF/F blocks of deferred datasets were computed in fill()
        summary.rois += p["rois"]
        summary.cells += p["cells"]
        summary.red += p["red"]
        summary.clamped += p["clamped"]
    summary.seconds = round(time.perf_counter() - t0, 2)
    return summary


def _containers(mod: Any) -> dict[str, Any]:
    from pynwb.ophys import DfOverF, Fluorescence, ImageSegmentation

    made = {
        "ImageSegmentation": ImageSegmentation(name="ImageSegmentation"),
        "Fluorescence": Fluorescence(name="Fluorescence"),
        "Neuropil": Fluorescence(name="Neuropil"),
        "Deconvolved": Fluorescence(name="Deconvolved"),
        "DfOverF": DfOverF(name="DfOverF"),
    }
    for c in made.values():
        mod.add(c)
    return made


def _add_plane(nwb: Any, mod: Any, c: dict[str, Any], plane: Suite2pPlane, target: PlaneTarget,
               standard: dict[str, Any], settings: BaselineSettings, traces: _Traces,
               clamped: list[int]) -> dict[str, Any]:
    from hdmf.common import VectorData, VectorIndex
    from pynwb.base import Images, TimeSeries
    from pynwb.image import GrayscaleImage

    n = plane.F.shape[0]
    sfx = target.suffix
    where = f"suite2p {plane.folder.name} ({plane.style} output)"
    # Pixel masks as one compound column, built in one go: add_roi per ROI is far slower.
    counts = np.array([len(y) for y in plane.ypix], dtype=np.int64)
    pm = np.empty(int(counts.sum()), dtype=[("x", "u4"), ("y", "u4"), ("weight", "f4")])
    if n:
        pm["x"] = np.concatenate(plane.ypix)
        pm["y"] = np.concatenate(plane.xpix)
        pm["weight"] = np.concatenate(plane.lam)
    # Built-in filters (hdmf's compound-dtype writer keeps them; it drops plugin ones).
    mask = VectorData(name="pixel_mask", data=_wrap(pm, standard, None) if len(pm) else pm,
                      description="pixel masks (x = image row = suite2p ypix, y = image column = "
                                  "suite2p xpix, weight = suite2p lam)")
    index = VectorIndex(name="pixel_mask_index", data=np.cumsum(counts).astype(np.uint64),
                        target=mask)
    columns = [mask, index,
               VectorData(name="iscell", data=plane.iscell[:, 0].astype(bool),
                          description="suite2p iscell flag (column 0 of iscell.npy; the curated "
                                      "classification)"),
               VectorData(name="iscell_probability", data=plane.iscell[:, 1].astype(np.float64),
                          description="suite2p classifier probability (column 1 of iscell.npy)")]
    red = 0
    if plane.redcell is not None:
        red = int(np.count_nonzero(plane.redcell[:, 0]))
        columns += [VectorData(name="redcell", data=plane.redcell[:, 0].astype(bool),
                               description="suite2p redcell flag (column 0 of redcell.npy)"),
                    VectorData(name="redcell_probability",
                               data=plane.redcell[:, 1].astype(np.float64),
                               description="suite2p redcell probability (column 1 of redcell.npy)")]
    ps = c["ImageSegmentation"].create_plane_segmentation(
        name=f"PlaneSegmentation{sfx}",
        description=(f"ROIs of {target.imaging_plane} found by {where}. Row k is suite2p ROI k "
                     "(its index in stat.npy / F.npy). " + ORIENTATION),
        imaging_plane=nwb.imaging_planes[target.imaging_plane],
        reference_images=nwb.acquisition[target.series],
        id=np.arange(n), columns=columns)
    timing = _timing(target, standard)

    def series(container: str, name: str, block: Callable[[int, int], np.ndarray], unit: str,
               description: str) -> None:
        # A region of its own for each series: a shared one is written as a link by path.
        region = ps.create_roi_table_region(region=list(range(n)),
                                            description=f"all ROIs of {where}")
        data = traces.data(f"processing/{STAGING}/{container}/{name + sfx}/data", n,
                           plane.nframes, block)
        c[container].create_roi_response_series(
            name=name + sfx, data=data, rois=region, unit=unit, description=description,
            **timing())

    def rows_of(arr: np.ndarray) -> Callable[[int, int], np.ndarray]:
        return lambda a, b: read_rows(arr, a, b)

    series("Fluorescence", "RoiResponseSeries", rows_of(plane.F), "a.u.",
           f"F: ROI fluorescence (suite2p F.npy, {where}), in (time, ROI) order; times are the "
           f"frame times of {target.series}.")
    series("Neuropil", "Neuropil", rows_of(plane.Fneu), "a.u.",
           f"Fneu: neuropil fluorescence around each ROI (suite2p Fneu.npy, {where}).")
    series("Deconvolved", "Deconvolved", rows_of(plane.spks), "a.u.",
           f"spks: deconvolved activity (suite2p spks.npy, OASIS; {where}).")
    if plane.F_chan2 is not None:
        series("Fluorescence", "RoiResponseSeries_chan2", rows_of(plane.F_chan2), "a.u.",
               f"F_chan2: ROI fluorescence in the second channel (suite2p F_chan2.npy, {where}).")
    if plane.Fneu_chan2 is not None:
        series("Neuropil", "Neuropil_chan2", rows_of(plane.Fneu_chan2), "a.u.",
               f"Fneu_chan2: neuropil fluorescence in the second channel ({where}).")

    F, Fneu = plane.F, plane.Fneu

    def dff(a: int, b: int) -> np.ndarray:
        out, k = dff_block(read_rows(F, a, b), read_rows(Fneu, a, b), settings)
        clamped[0] += k
        return out

    series("DfOverF", "DfOverF", dff, "n.a.",
           "dF/F (dimensionless), computed by rig2nwb: " + settings.describe())

    images = []
    texts = {
        "meanImg": "mean of the registered movie (suite2p meanImg)",
        "meanImgE": "enhanced mean image (suite2p meanImgE, high-pass filtered)",
        "Vcorr": "correlation map (suite2p Vcorr)",
        "max_proj": "maximum projection of the registered, filtered movie (suite2p max_proj)",
        "meanImg_chan2": "mean image of the second channel (suite2p meanImg_chan2)",
    }
    crop = (f" suite2p computed it on rows {plane.crop[0]}:{plane.crop[1]}, columns "
            f"{plane.crop[2]}:{plane.crop[3]} (its crop); it is placed there in the full frame and "
            "NaN elsewhere.") if plane.crop else ""
    for key, text in texts.items():
        img = plane.images.get(key)
        if img is None:
            continue
        extra = crop if key in ("Vcorr", "max_proj") else ""
        images.append(GrayscaleImage(name=key, data=_wrap(np.asarray(img, dtype=np.float32),
                                                          standard, None),
                                     description=f"{text}; [row, column] like the movie.{extra}"))
    if images:
        mod.add(Images(name=f"Backgrounds{sfx}", images=images,
                       description=f"background images of {where}, full-frame [row, column]"))
    offsets = plane.offsets
    if "yoff" in offsets and "xoff" in offsets:
        mod.add(TimeSeries(
            name=f"MotionOffsets{sfx}", unit="pixels",
            data=_wrap(np.stack([offsets["yoff"], offsets["xoff"]], axis=1).astype(np.float32),
                       standard, None),
            description=(f"rigid registration offsets of {where}: column 0 = yoff (rows), "
                         "column 1 = xoff (columns), the shift suite2p applied to each frame."),
            **timing()))
    if "yoff1" in offsets and "xoff1" in offsets:
        mod.add(TimeSeries(
            name=f"NonrigidMotionOffsets{sfx}", unit="pixels",
            data=_wrap(np.stack([offsets["yoff1"], offsets["xoff1"]], axis=2).astype(np.float32),
                       standard, None),
            description=(f"non-rigid registration offsets of {where}: (time, block, [yoff1, "
                         "xoff1]) per registration block, in rows and columns."),
            **timing()))
    cells = int(np.count_nonzero(plane.iscell[:, 0]))
    return {"plane": plane.index, "rois": n, "cells": cells, "red": red, "clamped": 0,
            "frames": plane.nframes, "series": target.series,
            "neuropil_coefficient": settings.neuropil_coefficient, "style": plane.style}


def _timing(target: PlaneTarget, standard: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """Frame times for each new series: a fresh copy of the raw series' timestamps (never a
    link, see the module docstring), or its rate + starting_time."""
    if target.timestamps is None:
        return lambda: {"rate": target.rate, "starting_time": target.starting_time}
    stamps = target.timestamps
    if not len(stamps):
        return lambda: {"timestamps": stamps.copy()}
    return lambda: {"timestamps": _wrap(stamps.copy(), standard, None)}


def _check_no_inner_links(f: h5py.File, group: str) -> None:
    bad: list[str] = []

    def visit(name: str, link: Any) -> None:
        if isinstance(link, h5py.SoftLink) and link.path.startswith(f"/{group}"):
            bad.append(f"{group}/{name} -> {link.path}")

    f[group].visititems_links(visit)
    if bad:
        raise AttachError("internal: staged results link inside themselves: " + "; ".join(bad))


def work_copy(path: Path) -> Path:
    """Where the attach builds the new version of ``path`` (same folder: the rename is atomic)."""
    return path.with_name(f"~{path.stem}.suite2p{path.suffix}")


COPY_BLOCK = 64 << 20


def make_work_copy(path: Path) -> Path:
    """Copy ``path`` to its work copy in blocks (a heartbeat per block: a big file takes a while)
    and fsync it."""
    work = work_copy(path)
    with path.open("rb") as src, work.open("wb") as dst:
        while block := src.read(COPY_BLOCK):
            dst.write(block)
            heartbeat()
        dst.flush()
        os.fsync(dst.fileno())
    return work


def commit_copy(path: Path) -> bool:
    """Rename the complete work copy over ``path`` and make the rename durable. False when there
    is no work copy (an earlier call finished the rename)."""
    work = work_copy(path)
    if not work.exists():
        return False
    os.replace(work, path)
    fsync_path(path.parent, strict=True)
    return True


def discard_work_copy(path: Path) -> bool:
    work = work_copy(path)
    if not work.exists():
        return False
    work.unlink()
    return True


def discard_staging(path: Path) -> bool:
    """Delete a staging group left by an interrupted attach; True if there was one."""
    with h5py.File(path, "r+") as f:
        if f"processing/{STAGING}" not in f:
            return False
        del f[f"processing/{STAGING}"]
        f.flush()
        os.fsync(f.id.get_vfd_handle())
    return True


def has_staging(path: Path) -> bool:
    with h5py.File(path, "r") as f:
        return f"processing/{STAGING}" in f


def swap_in(path: Path) -> bool:
    """Make the complete staging module the live ``ophys`` module (idempotent: returns False
    when there is nothing staged, i.e. an earlier call already finished the move)."""
    with h5py.File(path, "r+") as f:
        if f"processing/{STAGING}" not in f:
            return False
        if f"processing/{MODULE}" in f:
            del f[f"processing/{MODULE}"]
        f.move(f"processing/{STAGING}", f"processing/{MODULE}")
        f.flush()
        os.fsync(f.id.get_vfd_handle())
    return True
