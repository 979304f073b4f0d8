"""What one TIFF says about its acquisition: page layout, per-page times, header warnings.

ScanImage files describe themselves (channels saved, slices, flyback, rate, per-frame timestamps);
plain TIFFs are page sequences laid out as ``[imaging]`` in config.toml says. Where a ScanImage
header disagrees with the pages, the pages win and the disagreement is returned as a warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rig2nwb.config.schema import Config
from rig2nwb.core.pagelayout import PageLayout
from rig2nwb.errors import TiffProblem
from rig2nwb.rig.safeopen import FileId
from rig2nwb.rig.scanimage import RATE_TOLERANCE, ScanImageInfo, frame_data, read_scanimage
from rig2nwb.states import Problem

# What a header may claim before the file is refused (nothing is allocated or looped over for a
# claim beyond these): ScanImage saves at most 4 channels; fast-z volumes have tens of planes.
MAX_PLANES = 128
MAX_CHANNELS = 8
MAX_FRAMES_PER_SLICE = 10_000
MAX_FLYBACK_FRAMES = 128
MAX_FRAME_RATE_HZ = 100_000.0  # resonant scanners: ~30 kHz line rates, frames far below


@dataclass(frozen=True)
class FileAcquisition:
    layout: PageLayout
    scanimage: ScanImageInfo | None
    page_times: np.ndarray | None  # seconds from the acquisition start, per page; NaN = unknown
    warnings: tuple[str, ...]  # without the file name: the same for every file of a run


def read_acquisition(path: Path, cfg: Config, *, root: Path | None = None,
                     expect: FileId | None = None) -> FileAcquisition:
    """The acquisition facts of one complete TIFF.

    Raises TiffProblem when the file cannot be read or its header claims what cannot be
    (more planes or channels than any rig has, a layout that cannot exist)."""
    si = read_scanimage(path, root=root, expect=expect)
    if si is None:
        im = cfg.imaging
        return FileAcquisition(PageLayout(
            channels=tuple(range(1, im.channels + 1)), planes=im.planes,
            frames_per_slice=1, flyback_frames=im.flyback_frames, frame_rate=im.frame_rate,
            source="config.toml [imaging]"), None, None, ())
    warnings = [f"ScanImage header: {w}" for w in si.warnings]
    _check_claims(path, si)
    numbers, times = frame_data(path, root=root, expect=expect)
    bad_times = _times_problem(numbers, times)
    if bad_times is not None:
        warnings.append(f"the pages' frameTimestamps_sec {bad_times}: nominal times are used")
        times = None
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
        stated = "" if si.frame_rate is None else f" (it says {si.frame_rate!r} Hz)"
        warnings.append(f"no usable frame rate in the ScanImage header{stated} or its pages; "
                        f"using imaging.frame_rate = {rate:g} Hz from config.toml")
    try:
        layout = PageLayout(channels=channels, planes=planes, frames_per_slice=per_slice,
                            flyback_frames=flyback, frame_rate=rate,
                            source=f"ScanImage {si.version} header of {path.name}")
    except ValueError as exc:
        raise TiffProblem(Problem.BAD_HEADER, f"{path.name}: the ScanImage header describes a page "
                          f"layout that cannot exist ({exc}); not appended") from None
    return FileAcquisition(layout, si, times, tuple(warnings))


def _check_claims(path: Path, si: ScanImageInfo) -> None:
    """Refuse a header whose numbers no rig produces, before anything is built from them (a
    10 KB file claiming 200,000 slices must not make 200,000 series)."""
    claims = (("slices", si.n_slices, MAX_PLANES), ("channels", len(si.channels_saved), MAX_CHANNELS),
              ("frames per slice", si.frames_per_slice, MAX_FRAMES_PER_SLICE),
              ("flyback frames per volume", si.flyback_frames, MAX_FLYBACK_FRAMES))
    for what, value, most in claims:
        if value > most:
            raise TiffProblem(Problem.BAD_HEADER, f"{path.name}: the ScanImage header claims {value:,} "
                              f"{what}, more than the {most:,} rig2nwb accepts; not appended")
    if any(c < 1 or c > 64 for c in si.channels_saved):
        raise TiffProblem(Problem.BAD_HEADER, f"{path.name}: the ScanImage header saves channel(s) "
                          f"{list(si.channels_saved)[:8]}, not channel numbers; not appended")


def _usable_rate(rate: float | None) -> float | None:
    """A frame rate a layout can use: positive and finite (a header's 0 or NaN is no rate)."""
    if rate is None or not math.isfinite(rate) or not 0 < rate <= MAX_FRAME_RATE_HZ:
        return None
    return rate


def _frame_rate(si: ScanImageInfo, measured: float | None) -> float | None:
    """The header's scanFrameRate unless the per-frame timestamps contradict it (then they win;
    the reader already warned). Slow stacks pause between slices, so only the header counts."""
    stated, measured = _usable_rate(si.frame_rate), _usable_rate(measured)
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


def _times_problem(numbers: np.ndarray | None, times: np.ndarray | None) -> str | None:
    """Why a file's per-frame times cannot be frame times (None: they can): they must increase
    from one frame to the next (pages of one frame, its channels, share a time)."""
    if times is None:
        return None
    ok = np.isfinite(times) if numbers is None else (numbers >= 0) & np.isfinite(times)
    t = times[ok]
    n = numbers[ok] if numbers is not None else np.arange(len(t))
    if len(t) < 2:
        return None
    step_n, step_t = np.diff(n), np.diff(t)
    bad = np.flatnonzero((step_n > 0) & (step_t <= 0))
    if bad.size == 0:
        return None
    k = int(bad[0])
    return (f"do not increase (frame {int(n[k + 1])} at {float(t[k + 1]):g} s after frame "
            f"{int(n[k])} at {float(t[k]):g} s)")


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
