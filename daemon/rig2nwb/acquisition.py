"""What one TIFF says about its acquisition: page layout, per-page times, header warnings.

ScanImage files describe themselves (channels saved, slices, flyback, rate, per-frame timestamps);
plain TIFFs are page sequences laid out as ``[imaging]`` in config.toml says. Where a ScanImage
header disagrees with the pages, the pages win and the disagreement is returned as a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rig2nwb.config import Config
from rig2nwb.pagelayout import PageLayout
from rig2nwb.scanimage import RATE_TOLERANCE, ScanImageInfo, frame_data, read_scanimage


@dataclass(frozen=True)
class FileAcquisition:
    layout: PageLayout
    scanimage: ScanImageInfo | None
    page_times: np.ndarray | None  # seconds from the acquisition start, per page; NaN = unknown
    warnings: tuple[str, ...]  # without the file name: the same for every file of a run


def read_acquisition(path: Path, cfg: Config) -> FileAcquisition:
    """The acquisition facts of one complete TIFF.

    Raises TiffProblem (from the ScanImage reader) when the file cannot be read."""
    si = read_scanimage(path)
    if si is None:
        im = cfg.imaging
        return FileAcquisition(PageLayout(
            channels=tuple(range(1, im.channels + 1)), planes=im.planes,
            frames_per_slice=1, flyback_frames=im.flyback_frames, frame_rate=im.frame_rate,
            source="config.toml [imaging]"), None, None, ())
    warnings = [f"ScanImage header: {w}" for w in si.warnings]
    numbers, times = frame_data(path)
    channels = si.channels_saved or (1,)
    per_frame = _pages_per_frame(numbers)
    if per_frame is not None and per_frame != len(channels):
        warnings.append(f"the ScanImage header saves channel(s) {list(channels)} but the pages hold "
                        f"{per_frame} page(s) per frame number: trusting the pages")
        channels = channels[:per_frame] if per_frame < len(channels) else tuple(
            range(1, per_frame + 1))
    planes, per_slice, flyback = si.n_slices, si.frames_per_slice, si.flyback_frames
    if planes == 1 and flyback == 0:
        per_slice = 1  # one plane: every frame is the next frame of its series, whatever the stack
    rate = _frame_rate(si, _measured_rate(numbers, times))
    if rate is None:
        rate = cfg.imaging.frame_rate
        warnings.append(f"no frame rate in the ScanImage header or its pages; using "
                        f"imaging.frame_rate = {rate:g} Hz from config.toml")
    layout = PageLayout(channels=channels, planes=planes, frames_per_slice=per_slice,
                        flyback_frames=flyback, frame_rate=rate,
                        source=f"ScanImage {si.version} header of {path.name}")
    return FileAcquisition(layout, si, times, tuple(warnings))


def _frame_rate(si: ScanImageInfo, measured: float | None) -> float | None:
    """The header's scanFrameRate unless the per-frame timestamps contradict it (then they win;
    the reader already warned). Slow stacks pause between slices, so only the header counts."""
    stated = si.frame_rate
    if measured is None or (si.n_slices > 1 and not si.fastz_enabled):
        return stated
    if stated is None or abs(measured / stated - 1) > RATE_TOLERANCE:
        return measured
    return stated


def _pages_per_frame(numbers: np.ndarray | None) -> int | None:
    """How many pages share the first frame number (one per saved channel)."""
    if numbers is None or numbers[0] < 0:
        return None
    n = int(np.argmax(numbers != numbers[0])) if (numbers != numbers[0]).any() else len(numbers)
    return n if n < len(numbers) else None  # a one-frame file proves nothing


def _measured_rate(numbers: np.ndarray | None, times: np.ndarray | None) -> float | None:
    """Scan frames per second from the per-frame timestamps (median step between frames)."""
    if numbers is None or times is None:
        return None
    ok = (numbers >= 0) & np.isfinite(times)
    if ok.sum() < 2:
        return None
    n, t = numbers[ok], times[ok]
    first = np.concatenate(([True], n[1:] != n[:-1]))  # one entry per frame
    n, t = n[first], t[first]
    if len(n) < 2:
        return None
    steps = np.diff(t) / np.diff(n)
    steps = steps[steps > 0]
    if steps.size == 0:
        return None
    return float(1.0 / np.median(steps))
