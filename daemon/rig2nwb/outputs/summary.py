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
from pathlib import Path
from typing import Any

import numpy as np

from rig2nwb.outputs.summarydata import (
    PlaneImage,
    Segmentation,
    SummaryData,
    Timing,
    read_summary,
)

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


# --- what is read from the file -------------------------------------------------------------


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
    if data.rig:
        who = f"{data.rig}: {who}"  # a lab server serves several rigs
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


def render_both(nwb_path: Path, *, rig: str = "") -> tuple[bytes, bytes | None]:
    """The summary picture and a thumbnail of the first plane's mean image (at most
    THUMB_SIDE pixels a side, readable at the size the status page shows it; None when the
    session has no frames)."""
    from rig2nwb.outputs.preview import encode_png, shrink, to_uint8

    data = read_summary(nwb_path)
    data.rig = rig
    thumb = None
    if data.images and data.images[0].mean is not None:
        img = data.images[0]
        assert img.mean is not None
        thumb = encode_png(to_uint8(shrink(img.mean, THUMB_SIDE)),
                           f"rig2nwb thumbnail: mean of {img.sampled} frames of {img.series}")
    return render_png(draw_summary(data)), thumb


THUMB_SIDE = 160
