"""dF/F from suite2p traces, with a documented, configurable baseline.

    Fc  = F - c * Fneu                      (neuropil-corrected fluorescence)
    F0  = running percentile of Fc          (the baseline)
    dF/F = (Fc - F0) / max(F0, min_baseline)

The running percentile is taken over a sliding window (``window_seconds``, centred) of Fc after
averaging it in bins of 1/30 of the window (2 s for the default 60 s window), and linearly
interpolated back to every frame. Binning first smooths shot noise out of the low percentile,
the way suite2p's own baseline smooths before its min/max filter, and makes the baseline cost
one pass over the data instead of one sort per frame. Windows are shortened at the ends of the
recording. A baseline below ``min_baseline`` (over-subtracted neuropil can drive Fc to zero or
below) is clamped to it in the denominator, so no value is infinite; ``clamped_rois`` counts
the ROIs where that happened so the stage can say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BINS_PER_WINDOW = 30


@dataclass(frozen=True)
class BaselineSettings:
    neuropil_coefficient: float
    percentile: float
    window_seconds: float
    min_baseline: float
    rate_hz: float

    def describe(self) -> str:
        return (f"dF/F = (Fc - F0) / F0 with Fc = F - {self.neuropil_coefficient:g} * Fneu "
                f"(suite2p F and Fneu) and F0 the running {self.percentile:g}th percentile of Fc "
                f"over a centred {self.window_seconds:g} s window (Fc averaged in "
                f"{self.bin_frames} frame bins first, then linearly interpolated to every frame); "
                f"F0 below {self.min_baseline:g} is clamped to {self.min_baseline:g}.")

    @property
    def window_frames(self) -> int:
        return max(1, round(self.window_seconds * self.rate_hz))

    @property
    def bin_frames(self) -> int:
        return max(1, self.window_frames // BINS_PER_WINDOW)


def baseline(fc: np.ndarray, settings: BaselineSettings) -> np.ndarray:
    """F0 for each row of ``fc`` (ROIs x time), same shape, float32."""
    n_roi, t = fc.shape
    b = settings.bin_frames
    full = t // b
    n_bins = -(-t // b)
    binned = np.empty((n_roi, n_bins), dtype=np.float32)
    binned[:, :full] = fc[:, :full * b].reshape(n_roi, full, b).mean(axis=2)
    if n_bins > full:  # the last bin is partial: average what is there
        binned[:, full] = fc[:, full * b:].mean(axis=1)
    half = max(1, settings.window_frames // (2 * b))
    f0_bins = _running_percentile(binned.astype(np.float32), half, settings.percentile)
    centres = np.arange(n_bins) * b + (b - 1) / 2.0
    if n_bins * b > t:
        centres[-1] = (n_bins - 1) * b + (t - 1 - (n_bins - 1) * b) / 2.0
    return _interp_rows(f0_bins, centres, t)


def _running_percentile(x: np.ndarray, half: int, q: float) -> np.ndarray:
    """Percentile over a centred window of 2*half+1 columns, shortened at both ends."""
    n = x.shape[1]
    out = np.empty_like(x)
    width = 2 * half + 1
    if n >= width:
        # Interior: every full window at once (a strided view; np.percentile partitions it).
        windows = np.lib.stride_tricks.sliding_window_view(x, width, axis=1)
        out[:, half:n - half] = np.percentile(windows, q, axis=2)
    for i in [*range(min(half, n)), *range(max(half, n - half), n)]:
        out[:, i] = np.percentile(x[:, max(0, i - half):i + half + 1], q, axis=1)
    return out


def _interp_rows(values: np.ndarray, at: np.ndarray, t: int) -> np.ndarray:
    """Linear interpolation of every row of ``values`` (given at positions ``at``) to 0..t-1,
    constant beyond the first and last position."""
    x = np.arange(t, dtype=np.float64)
    if len(at) == 1:
        return np.repeat(values, t, axis=1)
    idx = np.clip(np.searchsorted(at, x, side="right") - 1, 0, len(at) - 2)
    frac = np.clip((x - at[idx]) / (at[idx + 1] - at[idx]), 0.0, 1.0).astype(np.float32)
    left = values[:, idx]
    out: np.ndarray = left + (values[:, idx + 1] - left) * frac
    return out


def dff_block(f: np.ndarray, fneu: np.ndarray, settings: BaselineSettings) -> tuple[np.ndarray, int]:
    """dF/F of a block of ROIs (ROIs x time) and how many of them needed the clamp."""
    fc = f.astype(np.float32) - np.float32(settings.neuropil_coefficient) * fneu.astype(np.float32)
    f0 = baseline(fc, settings)
    low = f0 < settings.min_baseline
    clamped = int(np.count_nonzero(low.any(axis=1)))
    denom = np.maximum(f0, np.float32(settings.min_baseline))
    out: np.ndarray = (fc - f0) / denom
    return out.astype(np.float32, copy=False), clamped
