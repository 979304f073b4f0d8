"""ScanImage acquisition metadata: what a rig TIFF says about rates, channels, planes and pixels.

ScanImage 3.x writes a ``state.*`` text header into every page's ImageDescription. ScanImage 2016
and later write the frame-invariant ``SI.*`` header into the BigTIFF file header (repeated in each
page's Software tag), the ROI groups as JSON (Artist tag), and per-frame data (``frameNumbers``,
``frameTimestamps_sec``, ``epoch``) into each page's ImageDescription. tifffile's parsers do the
reading; this module turns their output into typed values, defensively: a missing or oddly typed
key gives None or a default, never an error. Headers state intent and are sometimes wrong about
the pages (see ``warnings``): the pages and the per-frame timestamps are the truth.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from rig2nwb.errors import TiffProblem
from rig2nwb.rig.safeopen import FileId
from rig2nwb.rig.tiffs import open_tiff, os_problem
from rig2nwb.states import Problem

RATE_TOLERANCE = 0.05  # relative difference between scanFrameRate and measured frame times
PROBE_PAGES = 8  # pages whose per-frame data are read to measure the frame period


@dataclass(frozen=True)
class ScanImageInfo:
    version: str  # '2021', '2020.1.4', '3.8', '3.8.1'
    frame_rate: float | None  # Hz, as the header states it
    volume_rate: float | None  # Hz, volumetric acquisitions only
    channels_saved: tuple[int, ...]  # 1-based
    n_slices: int
    frames_per_slice: int
    flyback_frames: int  # flyback frames stored in the file per volume
    fastz_enabled: bool
    discard_flyback: bool  # as the header states it (the file may still hold them)
    zoom: float | None
    line_period_s: float | None
    pixel_size_um: tuple[float, float] | None  # (row, col)
    z_positions_um: tuple[float, ...]  # one per slice
    pmt_gains: tuple[float, ...]
    laser_power_percent: tuple[float, ...]
    acquisition_start: datetime | None  # naive local time
    header: dict[str, Any]  # frame-invariant metadata, strict-JSON-serializable
    header_text: str
    pages: int
    page_shape: tuple[int, int]
    roi_groups: dict[str, Any] | None = None  # SI 2016+ RoiGroups JSON
    warnings: tuple[str, ...] = ()  # where the header disagrees with the pages or itself


@dataclass(frozen=True)
class _Raw:  # what is read from the file; parsed afterwards, outside the I/O error handling
    pages: int
    page_shape: tuple[int, int]
    software: str
    descriptions: tuple[str, ...]  # of the first PROBE_PAGES pages
    frame_data: dict[str, Any] | None
    roi_groups: dict[str, Any] | None


def read_scanimage(path: Path, *, root: Path | None = None,
                   expect: FileId | None = None) -> ScanImageInfo | None:
    """None for a TIFF that is not ScanImage. Raises TiffProblem for unreadable files."""
    with _open(path, root, expect) as tf:
        first, n = tf.pages.first, len(tf.pages)
        if not first.is_scanimage:  # the page's own test: the file's is switched off (open_tiff)
            return None
        meta = _file_metadata(tf)  # {} for SI 3.x and classic TIFFs (no BigTIFF header)
        raw = _Raw(n, (int(first.shape[-2]), int(first.shape[-1])), first.software,
                   tuple(_description(tf, i) for i in range(min(n, PROBE_PAGES))),
                   meta.get("FrameData"), meta.get("RoiGroups"))
    return _parse_si3(raw) if raw.descriptions[0].startswith("state.") else _parse_si(raw)


def frame_timestamps(path: Path, *, root: Path | None = None) -> np.ndarray | None:
    """Per-page ``frameTimestamps_sec`` (float64 s), NaN for a page without one; None when no page
    has one (ScanImage 3.x, or not ScanImage)."""
    return _per_page(path, "frameTimestamps_sec", np.float64, math.nan, root)


def frame_numbers(path: Path, *, root: Path | None = None) -> np.ndarray | None:
    """Per-page ``frameNumbers`` (int64; the pages of several channels share a number), -1 for a
    page without one; None when no page has one."""
    return _per_page(path, "frameNumbers", np.int64, -1, root)


@contextmanager
def _open(path: Path, root: Path | None = None,
          expect: FileId | None = None) -> Iterator[tifffile.TiffFile]:
    """The TIFF opened for streaming (no TiffPage objects kept); failures as TiffProblem."""
    try:
        with open_tiff(path, root=root, expect=expect) as tf:
            tf.pages.cache = False
            if len(tf.pages) == 0:  # tifffile only warns when the first IFD offset is invalid
                raise TiffProblem(Problem.NO_PAGES, f"{path.name}: TIFF holds no image pages")
            yield tf
    except TiffProblem:
        raise
    except OSError as exc:
        raise os_problem(path, exc) from exc
    except Exception as exc:  # tifffile raises many exception types for damaged files
        raise TiffProblem(Problem.NOT_TIFF, f"{path.name}: not a readable TIFF ({exc})") from exc


def _file_metadata(tf: tifffile.TiffFile) -> dict[str, Any]:
    """The frame-invariant SI header and RoiGroups JSON stored after the BigTIFF header (what
    ``TiffFile.scanimage_metadata`` returns, read directly since open_tiff turns that off)."""
    try:
        frame_data, roi_data, version = tifffile.read_scanimage_metadata(tf.filehandle)
    except (TypeError, ValueError):
        return {}
    return {"version": version, "FrameData": frame_data, **roi_data}


def _description(tf: tifffile.TiffFile, i: int) -> str:
    page = tf.pages[i]  # a full TiffPage (useframes is off); a TiffFrame would carry no tags
    return page.description if isinstance(page, tifffile.TiffPage) else ""


def frame_data(path: Path, *, root: Path | None = None,
               expect: FileId | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(frame_numbers(path), frame_timestamps(path)) in one pass over the page headers."""
    num = re.compile(r"^frameNumbers\s*=\s*([-+.\deE]+)\s*$", re.MULTILINE)
    ts = re.compile(r"^frameTimestamps_sec\s*=\s*([-+.\deE]+)\s*$", re.MULTILINE)
    with _open(path, root, expect) as tf:
        n = len(tf.pages)
        numbers, stamps = np.full(n, -1, dtype=np.int64), np.full(n, math.nan)
        for i in range(n):
            text = _description(tf, i)
            if m := num.search(text):
                numbers[i] = int(float(m.group(1)))
            if m := ts.search(text):
                stamps[i] = float(m.group(1))
    return (numbers if (numbers >= 0).any() else None,
            stamps if np.isfinite(stamps).any() else None)


def _per_page(path: Path, key: str, dtype: type[np.generic], fill: float,
              root: Path | None = None) -> np.ndarray | None:
    # A regex, not matlabstr2py: the per-frame description is a flat 'key = value' list, and the
    # regex costs ~3 us a page where matlabstr2py costs ~60 (parsing the page itself ~80).
    pattern = re.compile(rf"^{key}\s*=\s*([-+.\deE]+)\s*$", re.MULTILINE)
    with _open(path, root) as tf:
        out = np.full(len(tf.pages), fill, dtype=dtype)
        found = False
        for i in range(len(out)):
            if m := pattern.search(_description(tf, i)):
                out[i], found = float(m.group(1)), True
    return out if found else None


def _parse_si(raw: _Raw) -> ScanImageInfo:
    text = raw.software if raw.software.startswith("SI.") else ""
    h = raw.frame_data or _matlab_dict(text or raw.descriptions[0])
    h = {k.removeprefix("scanimage."): v for k, v in h.items()}  # SI 2015 key style
    frame_rate = _float(h.get("SI.hRoiManager.scanFrameRate"))
    fastz = _bool(h.get("SI.hFastZ.enable"))
    discard = _bool(h.get("SI.hFastZ.discardFlybackFrames"))
    n_slices, per_slice, flyback = 1, max(1, _int(h.get("SI.hStackManager.framesPerSlice"), 1)), 0
    if _bool(h.get("SI.hStackManager.enable"), default=True):  # the key is absent before SI 2020
        # actualNumSlices (SI 2020+) also counts arbitrary-z stacks; numSlices before that
        n_slices = max(1, _int(h.get("SI.hStackManager.actualNumSlices",
                                     h.get("SI.hStackManager.numSlices")), 1))
    if fastz:
        # What the file holds is the header's own numFramesPerVolumeWithFlyback: SI 2021 stored
        # the flyback frames although discardFlybackFrames was true.
        with_fb = _int(h.get("SI.hStackManager.numFramesPerVolumeWithFlyback"), -1)
        without = _int(h.get("SI.hStackManager.numFramesPerVolume"), -1)
        flyback = with_fb - without if with_fb >= without >= 0 else max(
            0, _int(h.get("SI.hFastZ.numDiscardFlybackFrames"), 0))
    zs = _floats(h.get("SI.hStackManager.zs"))
    if per_slice > 1 and len(zs) == n_slices * per_slice:
        zs = zs[::per_slice]  # SI 2023 lists one z per frame of a slow stack, not one per slice
    warnings = []
    if discard and flyback:
        warnings.append(f"discardFlybackFrames is true but {flyback} flyback frames per volume "
                        "are stored (numFramesPerVolumeWithFlyback)")
    slow_stack = n_slices > 1 and not fastz
    if slow_stack:
        warnings.append("slow (motor) stack: scanVolumeRate ignores the moves between slices; "
                        "use the per-frame timestamps")
    if frame_rate and not (slow_stack and per_slice < 2):  # not across a motor move
        period = _measured_period(raw.descriptions)
        if period and abs(period * frame_rate - 1) > RATE_TOLERANCE:
            warnings.append(f"per-frame timestamps step {period * 1e3:.3f} ms ({1 / period:.4g} "
                            f"Hz) but scanFrameRate says {frame_rate:.4g} Hz: trust the timestamps")
    roi_groups = _jsonable(raw.roi_groups) if raw.roi_groups else None
    return ScanImageInfo(
        version=_version([h.get(f"SI.VERSION_{p}") for p in ("MAJOR", "MINOR", "UPDATE")]),
        frame_rate=frame_rate,
        volume_rate=_float(h.get("SI.hRoiManager.scanVolumeRate")) if n_slices > 1 else None,
        channels_saved=tuple(sorted({int(c) for c in _floats(h.get("SI.hChannels.channelSave"))})),
        n_slices=n_slices, frames_per_slice=per_slice, flyback_frames=flyback,
        fastz_enabled=fastz, discard_flyback=discard,
        zoom=_float(h.get("SI.hRoiManager.scanZoomFactor")),
        line_period_s=_float(h.get("SI.hRoiManager.linePeriod")),
        pixel_size_um=_pixel_size(h.get("SI.hRoiManager.imagingFovUm"), raw.page_shape, roi_groups),
        z_positions_um=zs, pmt_gains=_floats(h.get("SI.hPmts.gains")),
        laser_power_percent=_floats(h.get("SI.hBeams.powers")),
        acquisition_start=_epoch(_matlab_dict(raw.descriptions[0]).get("epoch")),
        header=_jsonable(h), header_text=text, pages=raw.pages, page_shape=raw.page_shape,
        roi_groups=roi_groups, warnings=tuple(warnings))


def _parse_si3(raw: _Raw) -> ScanImageInfo:
    text = raw.descriptions[0]
    h = {k: v for k, v in _matlab_dict(text).items() if k.startswith("state.")}
    channels = tuple(sorted(int(m.group(1)) for k, v in h.items()
                            if (m := re.fullmatch(r"state\.acq\.savingChannel(\d+)", k)) and _bool(v)))
    n_slices = max(1, _int(h.get("state.acq.numberOfZSlices"), 1))
    per_slice = max(1, _int(h.get("state.acq.numberOfFrames"), 1))  # frames taken at each slice
    ms_per_line = _float(h.get("state.acq.msPerLine"))
    version = re.search(r"state\.software\.version\s*=\s*'?([\w.]+)", text)  # '3.80' stays so
    warnings = []
    expected = per_slice * n_slices * max(1, len(channels))
    chunked = _float(h.get("state.acq.framesPerFile")) is not None  # Inf (not chunked) is None
    if raw.pages != expected and not chunked:
        warnings.append(f"header says {per_slice} frames x {n_slices} slices x {len(channels)} "
                        f"channels = {expected} pages but the file holds {raw.pages}: trust the pages")
    return ScanImageInfo(
        version=_version([version.group(1) if version else None, h.get("state.software.minorRev")]),
        frame_rate=_float(h.get("state.acq.frameRate")), volume_rate=None,
        channels_saved=channels, n_slices=n_slices, frames_per_slice=per_slice, flyback_frames=0,
        fastz_enabled=False, discard_flyback=False, zoom=_float(h.get("state.acq.zoomFactor")),
        line_period_s=ms_per_line / 1000 if ms_per_line is not None else None,
        pixel_size_um=None,  # ScanImage 3.x headers carry no micrometre calibration
        z_positions_um=(), pmt_gains=(), laser_power_percent=(),  # not in 3.x headers
        acquisition_start=_si3_time(h.get("state.internal.triggerTimeString")),
        header=_jsonable(h), header_text=text, pages=raw.pages, page_shape=raw.page_shape,
        warnings=tuple(warnings))


def _measured_period(descriptions: tuple[str, ...]) -> float | None:
    """Seconds per frame from the first pages' per-frame data (channels share a frame number)."""
    first: tuple[float, float] | None = None
    for d in map(_matlab_dict, descriptions):
        n, t = _float(d.get("frameNumbers")), _float(d.get("frameTimestamps_sec"))
        if n is None or t is None:
            return None
        if first is None:
            first = (n, t)
        elif n != first[0]:
            return (t - first[1]) / (n - first[0]) or None
    return None


def _pixel_size(fov: Any, shape: tuple[int, int],
                roi_groups: dict[str, Any] | None) -> tuple[float, float] | None:
    """(row, col) µm per pixel from the imaging FOV corners [[x, y], ...] (x along a line).
    None for multi-ROI scans: their pages stitch several scanfields and fly-to lines."""
    rois = ((roi_groups or {}).get("imagingRoiGroup") or {}).get("rois")
    if isinstance(rois, list) and len(rois) > 1:
        return None
    try:
        xs, ys = [float(p[0]) for p in fov], [float(p[1]) for p in fov]
    except (TypeError, ValueError, IndexError):
        return None
    if len(xs) < 2 or not all(math.isfinite(v) for v in xs + ys):
        return None
    width, height = max(xs) - min(xs), max(ys) - min(ys)
    return (height / shape[0], width / shape[1]) if width > 0 and height > 0 else None


def _version(parts: list[Any]) -> str:
    """'2021' for 2021.0.0, '2020.1.4'; SI3 version + minorRev: '3.8', '3.8.1'."""
    out = [str(p).strip("'") for p in parts if p is not None and p != ""]
    while len(out) > 1 and out[-1] in ("0", "0.0"):
        out.pop()
    return ".".join(out) or "unknown"


def _epoch(v: Any) -> datetime | None:
    """ScanImage 'epoch' [Y M D h m s.fff]: the acquisition start, local time."""
    nums = _floats(v)
    if len(nums) != 6:
        return None
    y, mo, d, hh, mi, s = nums
    try:
        return datetime(int(y), int(mo), int(d), int(hh), int(mi), int(s),
                        min(999_999, round((s - int(s)) * 1e6)))
    except ValueError:
        return None


def _si3_time(v: Any) -> datetime | None:
    """ScanImage 3 '10/9/2017 16:57:07.967' (month first, as in '7/30/2014 21:10:00.731')."""
    for fmt in ("%m/%d/%Y %H:%M:%S.%f", "%m/%d/%Y %H:%M:%S"):
        try:
            return datetime.strptime(str(v).strip(), fmt)
        except ValueError:
            continue
    return None


def _matlab_value(v: Any) -> Any:
    """A MATLAB-style string ('[1 4]', 'true', '30') parsed; anything else unchanged."""
    if isinstance(v, str) and v.strip():
        try:
            return tifffile.matlabstr2py(v)
        except Exception:  # matlabstr2py has no error contract for malformed text
            return v
    return v


def _matlab_dict(text: str) -> dict[str, Any]:
    d = _matlab_value(text)
    return d if isinstance(d, dict) else {}


def _float(v: Any) -> float | None:
    """A finite number, unwrapping one-element lists and MATLAB strings; otherwise None."""
    nums = _floats(v)
    return nums[0] if len(nums) == 1 else None


def _int(v: Any, default: int) -> int:
    f = _float(v)
    return int(f) if f is not None and f == int(f) else default


def _bool(v: Any, default: bool = False) -> bool:
    v = _matlab_value(v)
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    if isinstance(v, bool | int | float) and not (isinstance(v, float) and math.isnan(v)):
        return bool(v)
    return default


def _floats(v: Any) -> tuple[float, ...]:
    """Every finite number in a value: scalars, (nested) lists, or strings like '[1 4]'."""
    v = _matlab_value(v)
    if isinstance(v, list | tuple | np.ndarray):
        return tuple(x for item in v for x in _floats(item))
    if isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool):
        return (float(v),) if math.isfinite(v) else ()
    return ()


def _jsonable(v: Any) -> Any:
    """Plain JSON types: numpy values converted; NaN and infinities as the strings MATLAB writes
    ('NaN', 'Inf', '-Inf'), since strict JSON has no such numbers."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Inf" if v > 0 else "-Inf")
    return v if v is None or isinstance(v, bool | int | float | str) else str(v)
