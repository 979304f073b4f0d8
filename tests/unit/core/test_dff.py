"""dF/F baseline against traces whose true baseline and transients are known by construction."""

from __future__ import annotations

import numpy as np

from rig2nwb.core.dff import BaselineSettings, baseline, dff_block


def settings(**kw: float) -> BaselineSettings:
    base = {"neuropil_coefficient": 0.7, "percentile": 8.0, "window_seconds": 60.0,
            "min_baseline": 1.0, "rate_hz": 30.0}
    base.update(kw)
    return BaselineSettings(**base)  # type: ignore[arg-type]


def test_sparse_transients_on_a_drifting_baseline() -> None:
    """F = F0(t) * (1 + transients) + c * Fneu: dF/F must recover the transients and F0."""
    rng = np.random.default_rng(1)
    t = 30 * 600  # 10 minutes at 30 Hz
    n = 6
    time = np.arange(t) / 30.0
    f0 = (200 + 40 * np.sin(2 * np.pi * time / 1800.0))[None, :] * np.linspace(0.5, 1.5, n)[:, None]
    true = np.zeros((n, t))
    kernel = np.exp(-np.arange(90) / 21.0)  # 0.7 s decay
    for i in range(n):
        for onset in rng.choice(t - 100, size=25, replace=False):
            true[i, onset:onset + 90] += 1.5 * kernel
    fneu = rng.normal(50, 1, (n, t))
    f = f0 * (1 + true) + 0.7 * fneu
    out, clamped = dff_block(f.astype(np.float32), fneu.astype(np.float32), settings())
    assert clamped == 0
    assert out.shape == (n, t) and out.dtype == np.float32
    # The baseline sits on F0 (the 8th percentile of a mostly quiet trace is close to it)...
    fb = baseline((f - 0.7 * fneu).astype(np.float32), settings())
    assert np.median(np.abs(fb / f0 - 1)) < 0.03
    # ...so dF/F follows the true transients.
    for i in range(n):
        assert np.corrcoef(out[i], true[i])[0, 1] > 0.97
        peaks = out[i][true[i] > 1.4]
        assert abs(np.median(peaks) - np.median(true[i][true[i] > 1.4])) < 0.15


def test_low_baseline_is_clamped_and_counted() -> None:
    t = 3000
    f = np.full((3, t), 100.0, dtype=np.float32)
    fneu = np.zeros((3, t), dtype=np.float32)
    fneu[1] = 100 / 0.7  # neuropil subtraction drives this ROI's Fc to 0
    fneu[2] = 99.5 / 0.7
    out, clamped = dff_block(f, fneu, settings())
    assert clamped == 2
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0], 0.0, atol=1e-5)


def test_short_recordings_and_single_bins() -> None:
    for t in (1, 2, 5, 61, 1799, 1801):
        f = np.linspace(100, 110, t, dtype=np.float32)[None, :].repeat(2, axis=0)
        out, _ = dff_block(f, np.zeros_like(f), settings())
        assert out.shape == (2, t)
        assert np.isfinite(out).all()
        # A monotonic ramp within one window: F0 is at or below the trace, never above its max.
        assert (out > -0.11).all() and (out < 0.11).all()
