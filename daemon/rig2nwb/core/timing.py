"""Frame times, pure: when evenly spaced times may be stored as a rate."""

from __future__ import annotations

import numpy as np

REGULAR_TOLERANCE_S = 1e-6


def regular_rate(t: np.ndarray) -> float | None:
    """The rate of evenly spaced times, else None: the times must come back within 1 us from
    what NWB stores for them, ``starting_time + i / rate`` with the rate as float32 (the schema's
    type: a 29.97 Hz session of 36,000 frames would be up to 27.5 us off if only the float64
    line were checked). Measured onsets jitter by far more, so they stay timestamps."""
    if len(t) < 2:
        return None
    step = (float(t[-1]) - float(t[0])) / (len(t) - 1)
    if step <= 0:
        return None
    rate = float(np.float32(1.0 / step))
    stored = float(t[0]) + np.arange(len(t)) / rate
    return rate if float(np.max(np.abs(t - stored))) <= REGULAR_TOLERANCE_S else None


def series_rate(t: np.ndarray, regular: float | None) -> float | None:
    """A series' own imaging rate: the stored one when regular, else the mean of its frame
    times (a slow stack's header rate ignores the moves between slices; a measured clock
    differs from the nominal one in the 4th digit). None for fewer than two distinct times."""
    if len(t) < 2 or not t[-1] > t[0]:
        return None
    return regular if regular is not None else (len(t) - 1) / float(t[-1] - t[0])
