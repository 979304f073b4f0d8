"""core.timing: when frame times may be stored as a rate (within 1 us of float32 rate form)."""

from __future__ import annotations

import numpy as np

from rig2nwb.core.diskspace import has_room
from rig2nwb.core.timing import regular_rate, series_rate


def test_even_times_are_a_rate_and_jittered_ones_are_not() -> None:
    assert regular_rate(np.arange(1000) / 32.0) == 32.0
    jitter = np.arange(1000) / 32.0 + np.tile([0.0, 2e-6], 500)
    assert regular_rate(jitter) is None
    assert regular_rate(np.array([1.0])) is None  # one frame: no rate
    assert regular_rate(np.array([1.0, 1.0])) is None  # no time passes


def test_a_series_rate_is_its_own_mean_rate_when_not_regular() -> None:
    t = np.array([0.0, 0.1, 0.25, 0.3])  # 3 intervals in 0.3 s
    assert series_rate(t, None) == 3 / 0.3
    assert series_rate(t, 12.5) == 12.5  # a regular rate wins
    assert series_rate(np.array([2.0]), None) is None


def test_disk_room_keeps_the_reserve() -> None:
    assert has_room(free=1_500, reserve=1_000, needed=500)
    assert not has_room(free=1_499, reserve=1_000, needed=500)
    assert has_room(free=None, reserve=1_000, needed=10**12)  # unknown: the write will tell
