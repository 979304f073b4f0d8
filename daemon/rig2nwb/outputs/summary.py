"""The summary picture of a finished session: one PNG a person can glance at.

Four things, read straight from the NWB file with h5py (pynwb would rebuild the whole object
tree, which costs seconds on a big file and tells us nothing more):

1. the mean image of each plane's functional series (at most ``MAX_PLANES`` planes), from at most
   ``MAX_SAMPLED_FRAMES`` evenly spaced frames read in frame order (memory and time stay bounded
   whatever the session's length);
2. the suite2p ROI outlines over suite2p's mean image, cells and not-cells in two colours, or the
   plain mean image with "no suite2p results yet";
3. dF/F of the ``TRACE_CELLS`` cells with the largest dF/F range, stacked, or the mean
   fluorescence of the whole frame over time without suite2p; trial onsets as vertical lines;
4. the frame-interval jitter of the first series (a histogram of interval - median), or a note
   that the times are stored as a regular rate.

``build_figure(path)`` returns the matplotlib ``Figure`` (the tests look into its axes);
``render_summary(path)`` returns PNG bytes. No pyplot: its global state is not thread-safe and
this also runs inside the validation child. Panels are tagged for tests and tools:
axes labels ``mean-plane<p>``, ``rois-plane<p>``, ``traces``, ``jitter``; artist gids
``roi-cells``, ``roi-other``, ``trial-onsets``, ``jitter-hist``.

Orientation: ``data[t, row, column]``; pixel masks are (x = row, y = column), see suite2p_nwb.
Images are shown with rows down, as the TIFF pages are.
"""

from __future__ import annotations

import io
import itertools
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
PLOT_POINTS = 3000  # a longer trace is drawn as its min/max envelope of this many points
FIG_SIZE = (16.0, 10.0)
DPI = 100
CELL_COLOUR = "#ffb000"  # amber and blue: distinguishable with the common colour blindnesses
OTHER_COLOUR = "#3d9bff"
TRACE_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf")
ONSET_COLOUR = "#9a9a9a"
HIST_COLOUR = "#4c72b0"
N_GREY = 192  # grey levels of the PNG palette; the other 64 entries are the picture's colours
GREY_TOLERANCE = 12  # max - min of R, G, B up to which a pixel counts as grey
MIN_RING_AREA = 1.5  # px^2; a one-pixel hole or island encloses 0.5
SERIES_NAME = re.compile(r"_plane(\d+)_ch(\d+)$")


# --- what is read from the file -------------------------------------------------------------


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


# --- drawing ----------------------------------------------------------------------------------


def _contrast(img: np.ndarray) -> tuple[float, float]:
    finite = img[np.isfinite(img)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [1.0, 99.5]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _show(ax: Any, img: np.ndarray) -> None:
    """A grey image with percentile contrast (the data stay as they are; vmin/vmax stretch).
    Shown larger than it is, pixels are repeated ("nearest"): smoothing them would invent
    detail and triple the PNG's size; shown smaller, it is antialiased."""
    box = ax.get_window_extent()
    upsampled = max(img.shape) <= min(box.width, box.height)
    lo, hi = _contrast(img)
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi,
              interpolation="nearest" if upsampled else "antialiased")


def _bare(ax: Any, *, frame: bool = True) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if not frame:
        for spine in ax.spines.values():
            spine.set_visible(False)


def _note(ax: Any, text: str, *, boxed: bool = False, size: float = 12) -> None:
    box = {"boxstyle": "round,pad=0.4", "facecolor": "white", "alpha": 0.8, "edgecolor": "none"}
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=size,
            color="#333333", bbox=box if boxed else None, wrap=True)


def _envelope(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A long trace as the min and max of PLOT_POINTS / 2 bins (peaks survive, the PNG stays
    small and quick to draw)."""
    if len(y) <= PLOT_POINTS:
        return t, y
    bins = PLOT_POINTS // 2
    edges = np.linspace(0, len(y), bins + 1).astype(np.int64)
    tt, yy = [], []
    for a, b in itertools.pairwise(edges):
        seg = y[a:b]
        if not np.isfinite(seg).any():
            tt += [t[a], t[b - 1]]
            yy += [np.nan, np.nan]
            continue
        i, j = int(np.nanargmin(seg)), int(np.nanargmax(seg))
        first, second = sorted((i, j))
        tt += [t[a + first], t[a + second]]
        yy += [seg[first], seg[second]]
    return np.asarray(tt), np.asarray(yy)


def _draw_mean(ax: Any, img: PlaneImage, size: float) -> None:
    ax.set_label(f"mean-plane{img.plane}")
    _bare(ax)
    if img.mean is None:
        _note(ax, "no frames")
        ax.set_title(f"plane {img.plane}: {img.series}", fontsize=size)
        return
    _show(ax, img.mean)
    how = f"all {img.frames:,} frames" if img.sampled == img.frames else (
        f"{img.sampled} of {img.frames:,} frames")
    ax.set_title(f"mean image, plane {img.plane} ({how})\n{img.series}", fontsize=size)


def _draw_rois(ax: Any, img: PlaneImage, seg: Segmentation | None, size: float) -> None:
    from matplotlib.collections import PathCollection
    from matplotlib.lines import Line2D
    from matplotlib.path import Path as MplPath

    ax.set_label(f"rois-plane{img.plane}")
    _bare(ax)
    base = seg.mean_img if seg is not None and seg.mean_img is not None else img.mean
    if base is not None:
        _show(ax, base)
    if seg is None:
        ax.set_title(f"ROIs, plane {img.plane}", fontsize=size)
        _note(ax, "no suite2p results yet", boxed=True, size=size + 2)
        return
    n, cells = len(seg.outlines), int(np.count_nonzero(seg.iscell))
    for gid, colour, width, chosen in (("roi-other", OTHER_COLOUR, 0.7, ~seg.iscell),
                                       ("roi-cells", CELL_COLOUR, 1.0, seg.iscell)):
        paths = [MplPath(o.vertices, o.codes) if len(o.vertices) else MplPath(np.zeros((1, 2)))
                 for o, keep in zip(seg.outlines, chosen, strict=True) if keep]
        coll = PathCollection(paths, facecolors="none", edgecolors=colour, linewidths=width,
                              alpha=0.95 if gid == "roi-cells" else 0.8)
        coll.set_gid(gid)
        ax.add_collection(coll, autolim=False)
    where = "suite2p meanImg" if seg.mean_img is not None else "mean image"
    ax.set_title(f"{cells} cells / {n} ROIs, plane {img.plane}\n(on {where})", fontsize=size)
    handles = [Line2D([], [], color=CELL_COLOUR, lw=2, label=f"cell ({cells})"),
               Line2D([], [], color=OTHER_COLOUR, lw=2, label=f"not cell ({n - cells})")]
    # Below the image, not on it: ROIs sit in every corner.
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8,
              frameon=False, handlelength=1.5, columnspacing=1.0)


def _draw_traces(ax: Any, data: SummaryData) -> None:
    ax.set_label("traces")
    ax.spines[["top", "right"]].set_visible(False)
    span: list[float] = []
    if data.traces:
        tr = data.traces
        spread = [np.nanpercentile(t.values, 99.5) - np.nanpercentile(t.values, 0.5)
                  for t in tr if np.isfinite(t.values).any()]
        step = 1.1 * max([s for s in spread if s > 0] or [1.0])
        ticks = []
        for i, t in enumerate(tr):
            offset = (len(tr) - 1 - i) * step  # the largest range on top
            x, y = _envelope(t.times, t.values)
            ax.plot(x, y + offset, lw=0.8, color=TRACE_COLOURS[i % len(TRACE_COLOURS)])
            ticks.append(offset)
            if len(t.times):
                span += [float(t.times[0]), float(t.times[-1])]
        ax.set_yticks(ticks, [t.label for t in tr], fontsize=8)
        ax.set_ylabel(f"dF/F (stacked, {step:.2g} apart)")
        title = f"dF/F of the {len(tr)} cells with the largest range"
        if data.traces_note:
            title = f"dF/F ({data.traces_note})"
    else:
        for i, img in enumerate(data.images):
            if not len(img.times):
                continue
            style = "-o" if len(img.times) == 1 else "-"
            ax.plot(img.times, img.frame_means, style, lw=0.9, ms=3,
                    color=TRACE_COLOURS[i % len(TRACE_COLOURS)],
                    label=f"plane {img.plane}" if len(data.images) > 1 else "_nolegend_")
            span += [float(img.times[0]), float(img.times[-1])]
        ax.set_ylabel("mean F of the frame (a.u.)")
        sampled = max((img.sampled for img in data.images), default=0)
        frames = max((img.frames for img in data.images), default=0)
        how = "every frame" if sampled == frames else f"{sampled} evenly spaced frames"
        title = f"mean F of the whole frame ({how}); no dF/F in the file"
    onsets = data.trial_onsets
    if onsets is not None and len(onsets):
        lines = ax.vlines(onsets, 0, 1, transform=ax.get_xaxis_transform(), colors=ONSET_COLOUR,
                          linewidths=0.7, zorder=0, label=f"trial onsets ({len(onsets)})")
        lines.set_gid("trial-onsets")
        span += [float(onsets.min()), float(onsets.max())]
    if onsets is None or not len(onsets):  # else the legend counts them
        title += "; no trials table" if onsets is None else "; trials table is empty"
    if span:
        lo, hi = min(span), max(span)
        pad = 0.01 * (hi - lo) if hi > lo else 0.5
        ax.set_xlim(lo - pad, hi + pad)
    else:
        _note(ax, "no frames")
    ax.set_xlabel("time (s, session clock)")
    ax.set_title(title, fontsize=10, loc="left")
    handles, _ = ax.get_legend_handles_labels()
    if handles:  # above the plot, right of the title: traces fill the whole height
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(handles), fontsize=8,
                  frameon=False, borderaxespad=0.2)


def _draw_jitter(ax: Any, timing: Timing | None) -> None:
    ax.set_label("jitter")
    ax.spines[["top", "right"]].set_visible(False)
    if timing is None:
        _bare(ax, frame=False)
        _note(ax, "no imaging series")
        return
    if timing.intervals is None:
        _bare(ax, frame=False)
        ax.set_title(f"frame intervals of {timing.series}", fontsize=10, loc="left")
        _note(ax, f"regular: stored as rate {timing.rate:.6g} Hz,\nno jitter")
        return
    iv = timing.intervals
    if len(iv) == 0:
        _bare(ax, frame=False)
        ax.set_title(f"frame intervals of {timing.series}", fontsize=10, loc="left")
        _note(ax, "1 frame: no intervals" if timing.frames == 1 else "no frames")
        return
    median = float(np.median(iv))
    dev_ms = (iv - median) * 1000.0
    gaps = int(np.count_nonzero(iv > 1.5 * median)) if median > 0 else 0
    core, outside = jitter_core(dev_ms)
    lo, hi = (float(core.min()), float(core.max())) if len(core) else (-0.5, 0.5)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(core, bins=60, range=(lo, hi))
    step = ax.stairs(counts, edges, fill=True, color=HIST_COLOUR)
    step.set_gid("jitter-hist")
    rate = f" = {1.0 / median:.4g} Hz" if median > 0 else ""
    ax.set_title(f"frame intervals of {timing.series}\nmedian {median * 1000:.4g} ms{rate}, "
                 f"std {dev_ms.std():.3g} ms, max |dev| {np.abs(dev_ms).max():.3g} ms,\n"
                 f"{gaps} gap(s) > 1.5x median", fontsize=10, loc="left")
    if len(outside):
        shown = ", ".join(f"{v:+.3g}" for v in np.sort(outside)[::-1][:4])
        more = ", ..." if len(outside) > 4 else ""
        ax.text(0.98, 0.97, f"{len(outside)} beyond the range shown:\n{shown}{more} ms",
                transform=ax.transAxes, ha="right", va="top", fontsize=9, color="#b00020")
    ax.set_xlabel("interval - median (ms)")
    ax.set_ylabel("intervals")


def jitter_core(dev_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(deviations in the histogram, those beyond it). A few gaps would stretch the axis so far
    that the jitter itself becomes one bar: the histogram spans 1.5x the 99.5th percentile of
    |deviation|, and what lies beyond is listed (when gaps are common, the percentile covers
    them and they are in the histogram)."""
    if not len(dev_ms):
        return dev_ms, dev_ms
    lim = 1.5 * float(np.percentile(np.abs(dev_ms), 99.5))
    inside = np.abs(dev_ms) <= lim
    return dev_ms[inside], dev_ms[~inside]


def _headline(data: SummaryData) -> tuple[str, str]:
    who = " / ".join(x for x in (data.subject, data.session) if x) or data.file_name
    frames = [s.frames for s in data.series]
    if not frames:
        count = "no imaging series"
    elif len(frames) == 1:
        count = f"{frames[0]:,} frames"
    elif len(set(frames)) == 1:
        count = f"{len(frames)} series x {frames[0]:,} frames"
    else:
        count = f"{len(frames)} series, {min(frames):,}-{max(frames):,} frames"
    parts = [f"start {data.start_time.replace('T', ' ')}" if data.start_time else "", count]
    if data.timing is not None and data.timing.duration > 0:
        d = data.timing.duration
        parts.append(f"{d / 60:.1f} min" if d >= 120 else f"{d:.1f} s")
    if data.planes_total > len(data.images):
        parts.append(f"showing {len(data.images)} of {data.planes_total} planes")
    parts.append(data.file_name)
    return who, "   |   ".join(p for p in parts if p)


def draw_summary(data: SummaryData) -> Any:
    """The summary Figure (matplotlib.figure.Figure, with an Agg canvas) of ``data``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIG_SIZE, dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    who, details = _headline(data)
    fig.text(0.02, 0.972, who, fontsize=16, fontweight="bold", va="center")
    fig.text(0.02, 0.942, details, fontsize=11, va="center", color="#333333")
    n_img = max(1, len(data.images))
    segs = {s.plane: s for s in data.segmentations}
    if n_img == 1:
        # One plane: [mean | ROIs | jitter] over a full-width trace panel (long time axis).
        top = fig.add_gridspec(1, 3, width_ratios=[1.0, 1.0, 1.05], left=0.03, right=0.985,
                               top=0.875, bottom=0.40, wspace=0.12)
        bottom = fig.add_gridspec(1, 1, left=0.085, right=0.985, top=0.31, bottom=0.065)
        jitter_at, traces_at = top[0, 2], bottom[0, 0]
    else:
        # The image row is as high as its square panels need: less with more planes.
        split = 0.52 if n_img == 2 else 0.62
        top = fig.add_gridspec(1, 2 * n_img, left=0.03, right=0.985, top=0.875, bottom=split,
                               wspace=0.06)
        bottom = fig.add_gridspec(1, 2, width_ratios=[2.2, 1.0], left=0.085, right=0.985,
                                  top=split - 0.09, bottom=0.065, wspace=0.16)
        jitter_at, traces_at = bottom[0, 1], bottom[0, 0]
    size = 10.0 if n_img <= 2 else 8.5  # six panels of ~240 px need smaller titles
    for i, img in enumerate(data.images):
        _draw_mean(fig.add_subplot(top[0, 2 * i]), img, size)
        _draw_rois(fig.add_subplot(top[0, 2 * i + 1]), img, segs.get(img.plane), size)
    if not data.images:
        ax = fig.add_subplot(top[0, :2])
        _bare(ax, frame=False)
        _note(ax, "no TwoPhotonSeries in this file")
    _draw_traces(fig.add_subplot(traces_at), data)
    _draw_jitter(fig.add_subplot(jitter_at), data.timing)
    return fig


def build_figure(nwb_path: Path) -> Any:
    """Read ``nwb_path`` and draw its summary Figure."""
    return draw_summary(read_summary(nwb_path))


def render_png(fig: Any) -> bytes:
    """PNG bytes of a Figure as an 8-bit palette image (about 2/3 of a full-colour PNG's size:
    the picture is grey images, text and a few line colours)."""
    from PIL import Image

    fig.canvas.draw()
    rgb = np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    index, palette = palettize(rgb)
    img = Image.frombytes("P", (rgb.shape[1], rgb.shape[0]), index.tobytes())
    img.putpalette(palette.astype(np.uint8).ravel().tolist())
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True, dpi=(DPI, DPI))
    return out.getvalue()


DESIGN_COLOURS = (CELL_COLOUR, OTHER_COLOUR, *TRACE_COLOURS, HIST_COLOUR)


def palettize(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index image, palette) for an RGB image: N_GREY exact grey levels for the grey pixels
    (images, text; off by at most half a level), the figure's own line colours exactly, and a
    median-cut palette of the other coloured pixels (blends of lines with their background), so
    that a few hundred pixels of ROI outline keep their colour. A median cut of the whole picture
    merged them into the greys and the trace colours around them (measured: the blue outlines
    became one dull blue, partly grey). Coloured pixels find their entry through a 5-bit-per-
    channel lookup table: bounded memory whatever the number of coloured pixels."""
    from PIL import Image

    a = rgb.astype(np.int16)
    colour = (a.max(axis=2) - a.min(axis=2)) > GREY_TOLERANCE
    levels = np.linspace(0.0, 255.0, N_GREY)
    palette = np.stack([np.rint(levels)] * 3, axis=1)
    index = np.rint(a.mean(axis=2) * ((N_GREY - 1) / 255.0)).astype(np.uint8)
    pixels = rgb[colour]
    if len(pixels):
        design = np.array([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in DESIGN_COLOURS],
                          dtype=np.float64)
        sub = Image.fromarray(np.ascontiguousarray(pixels.reshape(1, -1, 3)))
        q = sub.quantize(256 - N_GREY - len(design), method=Image.Quantize.MEDIANCUT,
                         dither=Image.Dither.NONE)
        used = np.unique(np.asarray(q))
        raw = np.asarray(q.getpalette() or [], dtype=np.float64).reshape(-1, 3)
        palette = np.concatenate([palette, design, raw[used[used < len(raw)]]])
        cells = (np.indices((32, 32, 32)).reshape(3, -1).T * 8 + 4).astype(np.float64)
        lut = np.empty(len(cells), dtype=np.uint8)
        sq = (palette**2).sum(axis=1)
        for c0 in range(0, len(cells), 4096):  # 4096 x 256 distances at a time
            block = cells[c0:c0 + 4096]
            lut[c0:c0 + 4096] = np.argmin(sq[None, :] - 2.0 * block @ palette.T, axis=1)
        c = pixels.astype(np.int64) >> 3
        index[colour] = lut[(c[:, 0] << 10) | (c[:, 1] << 5) | c[:, 2]]
    full = np.zeros((256, 3))
    full[:len(palette)] = palette
    return index, full


def render_summary(nwb_path: Path) -> bytes:
    """The summary picture of ``nwb_path`` as PNG bytes (about 1600 x 1000 pixels)."""
    return render_png(build_figure(nwb_path))


def render_both(nwb_path: Path) -> tuple[bytes, bytes | None]:
    """The summary picture and a thumbnail of the first plane's mean image (at most
    THUMB_SIDE pixels a side, readable at the size the status page shows it; None when the
    session has no frames)."""
    from rig2nwb.outputs.preview import encode_png, shrink, to_uint8

    data = read_summary(nwb_path)
    thumb = None
    if data.images and data.images[0].mean is not None:
        img = data.images[0]
        assert img.mean is not None
        thumb = encode_png(to_uint8(shrink(img.mean, THUMB_SIDE)),
                           f"rig2nwb thumbnail: mean of {img.sampled} frames of {img.series}")
    return render_png(draw_summary(data)), thumb


THUMB_SIDE = 160
