"""What the summary picture shows, read from a finished NWB file: the mean image of each plane,
the ROI outlines, the traces of the most active cells, and the frame timing. Bounded reads
(sampled frames, blocks of columns): a 10 GB file costs the same as a small one."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAX_SAMPLED_FRAMES = 500


MAX_PLANES = 3


TRACE_CELLS = 5


READ_BLOCK = 32  # frames per read when every frame is used


READ_BYTES = 64 * 2**20  # and at most this much of them as float64 (large frames: fewer)


ROI_BLOCK = 64  # dF/F columns per read when ranking ROIs


MIN_RING_AREA = 1.5  # px^2; a one-pixel hole or island encloses 0.5


SERIES_NAME = re.compile(r"_plane(\d+)_ch(\d+)$")


@dataclass
class Series:
    name: str
    plane: int
    channel: int
    frames: int
    imaging_plane: str  # path of its ImagingPlane (how segmentations find their series)


@dataclass
class PlaneImage:
    plane: int
    series: str
    frames: int  # frames in the series
    mean: np.ndarray | None  # mean of the sampled frames (None: no frames)
    sampled: int
    times: np.ndarray  # times (s) of the sampled frames
    frame_means: np.ndarray  # mean of each sampled frame (the whole-frame fluorescence)


@dataclass
class Outline:
    vertices: np.ndarray  # (n, 2) of (column, row)
    codes: np.ndarray  # matplotlib Path codes


@dataclass
class Segmentation:
    name: str
    plane: int
    outlines: list[Outline]
    iscell: np.ndarray  # bool per ROI
    mean_img: np.ndarray | None  # suite2p's meanImg of this plane, if stored


@dataclass
class Trace:
    label: str
    times: np.ndarray
    values: np.ndarray


@dataclass
class Timing:
    series: str
    frames: int
    intervals: np.ndarray | None  # seconds; None when stored as a rate
    rate: float | None  # Hz, when stored as starting_time + rate
    duration: float  # seconds from the first frame to the end of the last


@dataclass
class SummaryData:
    file_name: str
    subject: str
    session: str
    start_time: str
    series: list[Series]
    images: list[PlaneImage]
    planes_total: int
    segmentations: list[Segmentation] = field(default_factory=list)
    traces: list[Trace] = field(default_factory=list)
    traces_note: str = ""
    trial_onsets: np.ndarray | None = None  # None: no trials table
    timing: Timing | None = None
    rig: str = ""  # the rig's name (rig.name), shown before subject / session


def _text(f: Any, path: str) -> str:
    if path not in f:
        return ""
    value = f[path][()]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else ""
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return str(value)


def _attr(obj: Any, name: str) -> str:
    value = obj.attrs.get(name, "")
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _link_target(group: Any, name: str) -> str:
    import h5py

    link = group.get(name, getlink=True)
    if isinstance(link, h5py.SoftLink):
        return str(link.path)
    return str(group[name].name) if name in group else ""


def _series(f: Any) -> list[Series]:
    """Every TwoPhotonSeries in acquisition/, with its plane and channel (rig2nwb names them
    TwoPhotonSeries or TwoPhotonSeries_plane<p>_ch<c>; other names get a plane of their own)."""
    import h5py

    if "acquisition" not in f:
        return []
    found = []
    for name in sorted(f["acquisition"]):
        g = f["acquisition"][name]
        if not isinstance(g, h5py.Group) or "data" not in g or g["data"].ndim != 3:
            continue
        if _attr(g, "neurodata_type") != "TwoPhotonSeries":
            continue
        m = SERIES_NAME.search(name)
        plane, channel = (int(m.group(1)), int(m.group(2))) if m else (-1, 0)
        found.append(Series(name, plane, channel, int(g["data"].shape[0]),
                            _link_target(g, "imaging_plane")))
    next_plane = max((s.plane for s in found), default=-1) + 1
    for s in found:
        if s.plane < 0:
            s.plane, next_plane = next_plane, next_plane + 1
    return found


def _times(g: Any, n: int) -> np.ndarray:
    """Frame times (s) of a series: its timestamps, or starting_time + i / rate."""
    if "timestamps" in g:
        t = np.asarray(g["timestamps"][:n], dtype=np.float64)
        if len(t) < n:  # should not happen in a finished file; never fail over it
            step = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
            t = np.concatenate([t, (t[-1] if len(t) else 0.0) + step * np.arange(1, n - len(t) + 1)])
        return t
    if "starting_time" in g:
        st = g["starting_time"]
        rate = float(st.attrs.get("rate", 1.0)) or 1.0
        return float(st[()]) + np.arange(n, dtype=np.float64) / rate
    return np.arange(n, dtype=np.float64)


def sample_indices(n: int, cap: int = MAX_SAMPLED_FRAMES) -> np.ndarray:
    """At most ``cap`` evenly spaced frame indices, first and last included, increasing."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, min(n, cap)).round().astype(np.int64))


def _plane_image(f: Any, s: Series) -> PlaneImage:
    g = f[f"acquisition/{s.name}"]
    data = g["data"]
    n = s.frames
    idx = sample_indices(n)
    if not len(idx):
        return PlaneImage(s.plane, s.name, 0, None, 0, np.zeros(0), np.zeros(0))
    total = np.zeros(data.shape[1:], dtype=np.float64)
    means = np.empty(len(idx), dtype=np.float64)
    if len(idx) == n:  # every frame: read contiguous blocks (within READ_BYTES as float64)
        step = max(1, min(READ_BLOCK, READ_BYTES // (8 * max(1, int(np.prod(data.shape[1:]))))))
        for a in range(0, n, step):
            block = np.asarray(data[a:a + step], dtype=np.float64)
            total += block.sum(axis=0)
            means[a:a + len(block)] = block.mean(axis=(1, 2))
    else:  # evenly spaced single frames, in file order
        for k, i in enumerate(idx):
            frame = np.asarray(data[int(i)], dtype=np.float64)
            total += frame
            means[k] = frame.mean()
    times = _times(g, n)[idx]
    return PlaneImage(s.plane, s.name, n, total / len(idx), len(idx), times, means)


def outline(rows: np.ndarray, cols: np.ndarray) -> Outline:
    """The outline of one ROI's pixels: the 0.5 contour of its mask (contourpy, which matplotlib
    already depends on), in image coordinates (x = column, y = row)."""
    import contourpy

    if len(rows) == 0:
        return Outline(np.zeros((0, 2)), np.zeros(0, dtype=np.uint8))
    r0, c0 = int(rows.min()) - 1, int(cols.min()) - 1
    mask = np.zeros((int(rows.max()) - r0 + 2, int(cols.max()) - c0 + 2), dtype=np.float64)
    mask[rows - r0, cols - c0] = 1.0
    gen = contourpy.contour_generator(z=mask, line_type=contourpy.LineType.SeparateCode)
    found: Any = gen.lines(0.5)  # SeparateCode: (list of (n, 2) points, list of path codes)
    lines: list[np.ndarray] = list(found[0])
    codes: list[np.ndarray] = list(found[1])
    if not lines:
        return Outline(np.zeros((0, 2)), np.zeros(0, dtype=np.uint8))
    # One-pixel holes and islands (common in suite2p masks) would draw as dots: keep the rings
    # enclosing at least MIN_RING_AREA, and always the largest one.
    areas = [_ring_area(v) for v in lines]
    keep = [i for i, a in enumerate(areas) if a >= MIN_RING_AREA] or [int(np.argmax(areas))]
    verts = np.concatenate([lines[i] for i in keep]) + np.array([c0, r0], dtype=np.float64)
    return Outline(verts, np.concatenate([codes[i] for i in keep]).astype(np.uint8))


def _ring_area(v: np.ndarray) -> float:
    x, y = v[:, 0], v[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _segmentations(f: Any, series: list[Series]) -> tuple[list[Segmentation], dict[str, str]]:
    """suite2p's ROI tables (rig2nwb writes one PlaneSegmentation per plane, suffix _plane<p>
    when there are several) and, per table, its suffix."""
    import h5py

    base = "processing/ophys/ImageSegmentation"
    if base not in f:
        return [], {}
    by_plane_path = {s.imaging_plane: s for s in series}
    segs: list[Segmentation] = []
    suffixes: dict[str, str] = {}
    for name in sorted(f[base]):
        ps = f[f"{base}/{name}"]
        if not isinstance(ps, h5py.Group) or "pixel_mask" not in ps or "pixel_mask_index" not in ps:
            continue
        target = by_plane_path.get(_link_target(ps, "imaging_plane"))
        plane = target.plane if target else len(segs)
        pm = ps["pixel_mask"][:]
        ends = np.asarray(ps["pixel_mask_index"][:], dtype=np.int64)
        rows, cols = np.asarray(pm["x"], dtype=np.int64), np.asarray(pm["y"], dtype=np.int64)
        starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
        outlines = [outline(rows[a:b], cols[a:b]) for a, b in zip(starts, ends, strict=True)]
        iscell = np.ones(len(ends), dtype=bool)  # no (or a short) iscell column: all are ROIs
        if "iscell" in ps:
            flags = np.asarray(ps["iscell"][:], dtype=bool)[:len(ends)]
            iscell[:len(flags)] = flags
        suffix = name[len("PlaneSegmentation"):] if name.startswith("PlaneSegmentation") else ""
        images = f.get(f"processing/ophys/Backgrounds{suffix}")
        mean_img = (np.asarray(images["meanImg"][:], dtype=np.float64)
                    if images is not None and "meanImg" in images else None)
        segs.append(Segmentation(name, plane, outlines, iscell, mean_img))
        suffixes[name] = suffix
    return segs, suffixes


def _column_ranges(ds: Any) -> np.ndarray:
    """max - min of every column of a (time, ROI) dataset, ignoring NaN (-inf if none finite),
    read in column blocks so memory stays at frames x ROI_BLOCK values."""
    n = int(ds.shape[1])
    out = np.full(n, -np.inf)
    for a in range(0, n, ROI_BLOCK):
        block = np.asarray(ds[:, a:a + ROI_BLOCK], dtype=np.float64)
        finite = np.isfinite(block)
        hi = np.where(finite, block, -np.inf).max(axis=0, initial=-np.inf)
        lo = np.where(finite, block, np.inf).min(axis=0, initial=np.inf)
        ok = finite.any(axis=0)
        out[a:a + block.shape[1]] = np.where(ok, hi - lo, -np.inf)
    return out


def _dff_traces(f: Any, segs: list[Segmentation], suffixes: dict[str, str]) -> tuple[list[Trace], str]:
    """The TRACE_CELLS cells (iscell) with the largest dF/F range, over every plane."""
    candidates: list[tuple[float, int, Segmentation, Any, Any]] = []
    no_cells = not any(s.iscell.any() for s in segs)
    for seg in segs:
        g = f.get(f"processing/ophys/DfOverF/DfOverF{suffixes[seg.name]}")
        if g is None or "data" not in g or g["data"].ndim != 2:
            continue
        ds = g["data"]
        ranges = _column_ranges(ds)
        for roi, rng in enumerate(ranges):
            is_cell = roi < len(seg.iscell) and bool(seg.iscell[roi])
            if np.isfinite(rng) and (is_cell or no_cells):
                candidates.append((float(rng), roi, seg, ds, g))
    if not candidates:
        return [], ""
    candidates.sort(key=lambda c: (-c[0], c[2].plane, c[1]))
    traces = []
    for _, roi, seg, ds, g in candidates[:TRACE_CELLS]:
        values = np.asarray(ds[:, roi], dtype=np.float64)
        label = f"ROI {roi}" if len(segs) == 1 else f"plane {seg.plane} ROI {roi}"
        traces.append(Trace(label, _times(g, len(values)), values))
    note = "no ROI is marked as a cell: largest dF/F ranges among all ROIs" if no_cells else ""
    return traces, note


def _timing(f: Any, s: Series) -> Timing:
    g = f[f"acquisition/{s.name}"]
    n = s.frames
    if "timestamps" not in g and "starting_time" in g:
        rate = float(g["starting_time"].attrs.get("rate", 0.0))
        return Timing(s.name, n, None, rate, n / rate if rate > 0 else 0.0)
    t = _times(g, n)
    intervals = np.diff(t)
    step = float(np.median(intervals)) if len(intervals) else 0.0
    duration = float(t[-1] - t[0]) + step if n else 0.0
    return Timing(s.name, n, intervals, None, duration)


def _trial_onsets(f: Any) -> np.ndarray | None:
    g = f.get("intervals/trials")
    if g is None:
        return None
    for column in ("stim_on", "start_time"):
        if column in g:
            return np.asarray(g[column][:], dtype=np.float64)
    return None


def read_summary(nwb_path: Path) -> SummaryData:
    """Everything the picture shows, read with h5py (Blosc filters registered first)."""
    import h5py
    import hdf5plugin  # noqa: F401  (files may be blosc-compressed)

    with h5py.File(nwb_path, "r") as f:
        series = _series(f)
        segs, suffixes = _segmentations(f, series)
        # Per plane, the functional series: the one suite2p segmented, else the lowest channel.
        segmented = {s.imaging_plane for s in series} & {
            _link_target(f[f"processing/ophys/ImageSegmentation/{name}"], "imaging_plane")
            for name in suffixes}
        functional: dict[int, Series] = {}
        for s in sorted(series, key=lambda s: (s.imaging_plane not in segmented, s.channel)):
            functional.setdefault(s.plane, s)
        planes = sorted(functional)
        shown = [functional[p] for p in planes[:MAX_PLANES]]
        data = SummaryData(
            file_name=Path(nwb_path).name,
            subject=_text(f, "general/subject/subject_id"),
            session=_text(f, "general/session_id"),
            start_time=_text(f, "session_start_time"),
            series=series,
            images=[_plane_image(f, s) for s in shown],
            planes_total=len(planes),
            segmentations=[s for s in segs if s.plane in {x.plane for x in shown}],
            trial_onsets=_trial_onsets(f),
            timing=_timing(f, shown[0]) if shown else None,
        )
        data.traces, data.traces_note = _dff_traces(f, segs, suffixes)
    return data
