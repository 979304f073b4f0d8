"""Measured frame onsets from the lab's scan file replace the nominal timestamps at finalize."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from rig2nwb.testing.figures import record
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.nwbfiles import nwb_frames, nwb_timestamps
from rig2nwb.testing.tiffs import random_frames

N = 18  # frames: 10 + 8


def _session(lab: Lab, onsets_ms: list[float] | str) -> np.ndarray:
    a, b = random_frames(10, seed=1), random_frames(8, seed=2)
    lab.tiff("x_00001.tif", a)
    lab.tiff("x_00002.tif", b)
    txt = lab.root / "m1" / "txt"
    txt.mkdir(parents=True, exist_ok=True)
    text = onsets_ms if isinstance(onsets_ms, str) else " ".join(f"{v:.3f}" for v in onsets_ms)
    (txt / "s1_scan.txt").write_text(text + "\r\n")  # written on a Windows stimulus PC
    (txt / "s1_trial.txt").write_text("100 50 0 0.04 0 90\n")
    return np.concatenate([a, b])


def _convert(lab: Lab) -> dict[str, object]:
    proc = lab.run_cli("convert", str(lab.session_dir()), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return json.loads(lab.run_cli("status", "--json").stdout)[0]  # type: ignore[no-any-return]


def _record(case: str, row: dict[str, object], fragment: str) -> None:
    hits = [p for p in row["problems"] if fragment in p]  # type: ignore[attr-defined]
    record("bad_input", case=case, handled=bool(hits), detail=hits[0] if hits else str(row["problems"]))


def _jittered(n: int) -> list[float]:
    rng = np.random.default_rng(5)
    return list(np.arange(n) * 33.37 + 12.0 + rng.uniform(-0.4, 0.4, n))


def test_measured_onsets_become_the_timestamps(lab: Lab) -> None:
    onsets = _jittered(N)
    frames = _session(lab, onsets)
    row = _convert(lab)
    assert np.array_equal(nwb_frames(lab.nwb()), frames)  # frames untouched
    np.testing.assert_allclose(nwb_timestamps(lab.nwb()), np.round(onsets, 3) / 1000, atol=1e-9)
    with h5py.File(lab.nwb(), "r") as f:
        assert "s1_scan.txt" in f["acquisition/TwoPhotonSeries"].attrs["comments"]
    assert row["timestamps"] == "measured frame onsets from s1_scan.txt"
    assert row["problems"] == []


def test_fewer_onsets_than_frames_keeps_nominal_and_says_so(lab: Lab) -> None:
    _session(lab, _jittered(N - 1))
    row = _convert(lab)
    _record("scan_file_fewer_onsets_than_frames", row, f"s1_scan.txt: {N - 1} frame onsets for {N}")
    np.testing.assert_allclose(nwb_timestamps(lab.nwb()), np.arange(N) / 30.0)
    assert row["timestamps"].startswith("nominal 30 Hz")
    assert any(f"s1_scan.txt: {N - 1} frame onsets for {N} frames; timestamps stay as acquired" in p
               for p in row["problems"])  # type: ignore[attr-defined]


@pytest.mark.parametrize("policy", ["keep_nominal", "drop_extra_onsets"])
def test_extra_onsets_follow_the_configured_policy(make_lab, policy: str) -> None:  # type: ignore[no-untyped-def]
    lab: Lab = make_lab(scan={"on_mismatch": policy})
    onsets = _jittered(N + 2)
    _session(lab, onsets)
    row = _convert(lab)
    _record(f"scan_file_extra_onsets_{policy}", row, f"{N + 2} frame onsets for {N} frames")
    stamps = nwb_timestamps(lab.nwb())
    if policy == "drop_extra_onsets":
        np.testing.assert_allclose(stamps, np.round(onsets[:N], 3) / 1000, atol=1e-9)
        assert any("the last 2 onsets were dropped" in p for p in row["problems"])  # type: ignore[attr-defined]
    else:
        np.testing.assert_allclose(stamps, np.arange(N) / 30.0)
        assert any(f"{N + 2} frame onsets for {N} frames" in p for p in row["problems"])  # type: ignore[attr-defined]


def test_malformed_scan_file_leaves_frames_and_nominal_times(lab: Lab) -> None:
    frames = _session(lab, "0 33.3 x66 100")
    row = _convert(lab)
    _record("scan_file_not_a_number_end_to_end", row, "s1_scan.txt, line 1: onset 3: 'x66'")
    assert np.array_equal(nwb_frames(lab.nwb()), frames)
    np.testing.assert_allclose(nwb_timestamps(lab.nwb()), np.arange(N) / 30.0)
    assert any("s1_scan.txt, line 1: onset 3: 'x66' is not a number" in p
               for p in row["problems"])  # type: ignore[attr-defined]
