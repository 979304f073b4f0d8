"""Pages the whole lab can read, kept true by one-shot commands, saying what an experimenter asks;
one-shot commands notify only when asked; and two small truths about rates.

Modes come from os.stat, the page from a strict HTML5 parse, notifications from a real local HTTP
receiver, rates from the NWB file as h5py reads it against the formula NWB readers use.
"""

from __future__ import annotations

import html
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import html5lib
import numpy as np
import pytest

from rig2nwb.core.timing import regular_rate
from rig2nwb.testing.configs import append_config
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.receivers import HttpReceiver
from rig2nwb.testing.suite2p_folders import make_synthetic_folder
from rig2nwb.testing.tiffs import random_frames, write_tiff
from rig2nwb.testing.waits import wait_for

SHAPE = (24, 32)


def page_lab(tmp_path: Path, **overrides: dict[str, Any]) -> Lab:
    sections: dict[str, dict[str, Any]] = {
        "rig": {"frames": "{subject}/{session}/*.tif", "scan_file": "{subject}/{session}/scan.txt",
                "trial_file": "{subject}/{session}/trial.txt"},
        "status": {"summary_picture": True, "page": True},
        "suite2p": {"settle_seconds": 0},
    }
    for name, values in overrides.items():
        sections.setdefault(name, {}).update(values)
    return Lab(tmp_path, **sections)


def write_session(lab: Lab, session: str = "s1", frames: int = 60) -> Path:
    folder = lab.root / "m1" / session
    write_tiff(folder / "a_00001.tif", random_frames(frames, SHAPE, seed=1))
    (folder / "scan.txt").write_text(" ".join(repr(i * 1000.0 / 30.0) for i in range(frames)))
    # three trials, stim_on / stim_dur in ms
    (folder / "trial.txt").write_text("600 100 0 0.04 0 90\n1000 100 0 0.08 0 180\n1400 100 0 0.04 0 0\n")
    return folder


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run_with_umask(lab: Lab, umask: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rig2nwb", *args, "--config", str(lab.config_path)],
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: os.umask(umask))


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o027, 0o640)])
def test_pages_and_pictures_get_the_umask_mode_like_the_nwb_file(tmp_path: Path, umask: int,
                                                                 expected: int) -> None:
    lab = page_lab(tmp_path)
    folder = write_session(lab)
    out = run_with_umask(lab, umask, "convert", str(folder))
    assert out.returncode == 0, out.stderr
    files = [lab.out / "rig2nwb-status.html", lab.out / "rig2nwb-status.json",
             *sorted((lab.out / "rig2nwb-status").glob("*.png"))]
    assert any(p.name.endswith(".summary.png") for p in files)
    assert any(p.name.endswith(".thumb.png") for p in files)
    assert {p.name: mode_of(p) for p in files} == {p.name: expected for p in files}
    assert mode_of(lab.out / "sub-m1_ses-s1.nwb") == expected


def _page(lab: Lab) -> str:
    text = (lab.out / "rig2nwb-status.html").read_text(encoding="utf-8")
    html5lib.HTMLParser(strict=True).parse(text)  # raises on any parse error
    return text


def test_convert_and_attach_alone_keep_the_page_true(tmp_path: Path) -> None:
    lab = page_lab(tmp_path, notify={"link_prefix": "https://lab.example.org/nwb"})
    folder = write_session(lab)
    assert lab.run_cli("convert", str(folder)).returncode == 0
    page = _page(lab)
    data = json.loads((lab.out / "rig2nwb-status.json").read_text())
    row = data["sessions"][0]
    assert (row["session"], row["state"], row["trials"]) == ("s1", "finished", 3)
    assert row["duration_s"] == pytest.approx(60 / 30.0, abs=1e-6)  # first to last frame + one
    assert "3 trials" in page and "2.0 s" in page
    assert "timestamps: measured frame onsets from scan.txt" in page
    start = row["start_time"]
    assert html.escape(start.replace("T", " ")[:19]) in page  # the start, shown in the rig's zone
    # NWB path through notify.link_prefix, as a link
    assert '<a href="https://lab.example.org/nwb/sub-m1_ses-s1.nwb">' in page
    # the thumbnail is the mean image, linking the full summary picture
    thumb = re.search(r'<a href="([^"]+\.summary\.png)\?v=\d+"[^>]*><img class="thumb" src="([^"]+)"',
                      page)
    assert thumb is not None and thumb.group(2).split("?")[0].endswith(".thumb.png")
    # the check line opens to what each violation says
    assert "<details><summary>" in page and "<ul class=\"checks\"><li>" in page
    for message in row["validation_messages"][:3]:
        assert html.escape(message[:60]) in html.unescape(page) or message[:40] in html.unescape(page)
    # attach alone: the page shows the suite2p results
    make_synthetic_folder(folder / "suite2p", n_rois=5, n_frames=60, Ly=SHAPE[0], Lx=SHAPE[1])
    out = lab.run_cli("attach", str(folder))
    assert out.returncode == 0, out.stderr
    row = json.loads((lab.out / "rig2nwb-status.json").read_text())["sessions"][0]
    assert row["suite2p"]["state"] == "attached" and row["suite2p"]["rois"] == 5
    assert "/5 cells" in _page(lab)


def test_acquiring_session_shows_elapsed_time_and_last_frame(tmp_path: Path) -> None:
    lab = page_lab(tmp_path, completion={"session_idle_seconds": 3600},
                   status={"page_interval_seconds": 0.5})
    folder = lab.root / "m1" / "s1"
    write_tiff(folder / "a_00001.tif", random_frames(10, SHAPE, seed=1))
    write_tiff(folder / "a_00002.tif", random_frames(10, SHAPE, seed=2))
    daemon = lab.start_daemon()
    try:
        def acquiring_shown() -> bool:
            p = lab.out / "rig2nwb-status.html"
            return p.exists() and "acquiring for" in p.read_text()
        wait_for(acquiring_shown, timeout=60, what="the page to show the acquiring session")
        page = _page(lab)
        assert re.search(r"acquiring for [0-9.]+ (s|min)", page)
        assert re.search(r"last frame [0-9.]+ (s|min)[^<]* ago", page)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)


def test_one_shot_commands_notify_only_when_asked(tmp_path: Path) -> None:
    http = HttpReceiver()
    try:
        lab = page_lab(tmp_path, notify={"attempts": 2, "retry_delays_seconds": [0.1],
                                         "timeout_seconds": 5, "stop_flush_seconds": 10})
        append_config(lab.config_path, {"notify.targets": [{"url": http.url("/hook?token=${RIG_TOKEN}")}]})
        env = {k: v for k, v in os.environ.items() if k != "RIG_TOKEN"}
        folder = write_session(lab)
        # without --notify: no secret needed, nothing sent
        out = subprocess.run([sys.executable, "-m", "rig2nwb", "convert", str(folder), "--config",
                              str(lab.config_path)], capture_output=True, text=True, env=env,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        assert http.posts == []
        # a second session, with --notify and the secret: the converted message goes out
        folder2 = write_session(lab, "s2")
        out = subprocess.run([sys.executable, "-m", "rig2nwb", "convert", str(folder2), "--notify",
                              "--config", str(lab.config_path)], capture_output=True, text=True,
                             env={**env, "RIG_TOKEN": "t0ken"}, timeout=300)
        assert out.returncode == 0, out.stderr
        titles = [p.title for p in http.posts]
        assert any("ses-s2 converted" in t for t in titles), titles
        assert not any("ses-s1" in t for t in titles)
        # --notify without the secret: refused in one line, as a configuration error
        out = subprocess.run([sys.executable, "-m", "rig2nwb", "convert", str(folder), "--notify",
                              "--config", str(lab.config_path)], capture_output=True, text=True,
                             env=env, timeout=300)
        assert out.returncode == 2 and "${RIG_TOKEN} is not set" in out.stderr
        # a daemon started later sends neither session's messages again
        daemon = subprocess.Popen([sys.executable, "-m", "rig2nwb", "run", "--config",
                                   str(lab.config_path)], env={**env, "RIG_TOKEN": "t0ken"},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: any("started" in p.title for p in http.posts), timeout=60,
                     what="the daemon's start message")
            time.sleep(2)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
        converted = [p.title for p in http.posts if "converted" in p.title]
        assert converted == [t for t in titles if "converted" in t], converted
    finally:
        http.close()


def test_regular_times_become_a_rate_only_when_readers_get_them_back_within_1_us() -> None:
    """NWB stores the rate as float32; a reader computes starting_time + i / rate."""
    def reader_error(t: np.ndarray, rate: float) -> float:
        back = t[0] + np.arange(len(t)) / float(np.float32(rate))
        return float(np.max(np.abs(back - t)))

    t = np.arange(36_000) / 29.97  # a 29.97 Hz session of 20 minutes
    assert reader_error(t, 29.97) > 1e-6  # what storing it as a rate would cost
    assert regular_rate(t) is None  # so the timestamps are kept
    short = np.arange(300) / 29.97
    rate = regular_rate(short)
    assert rate is not None and reader_error(short, rate) <= 1e-6
    assert regular_rate(np.arange(36_000) / 32.0) == 32.0  # exact in float32: a rate


def test_imaging_rate_is_the_series_own_rate(tmp_path: Path) -> None:
    """ImagingPlane.imaging_rate equals the rate the series stores (measured), not the
    nominal one of the config."""
    lab = page_lab(tmp_path, imaging={"frame_rate": 32.745375}, status={"summary_picture": False})
    folder = lab.root / "m1" / "s1"
    write_tiff(folder / "a_00001.tif", random_frames(40, SHAPE, seed=1))
    measured = 32.748466
    (folder / "scan.txt").write_text(" ".join(repr(i * 1000.0 / measured) for i in range(40)))
    (folder / "trial.txt").write_text("600 100 0 0.04 0 90\n")
    assert lab.run_cli("convert", str(folder)).returncode == 0
    with h5py.File(lab.out / "sub-m1_ses-s1.nwb", "r") as f:
        g = f["acquisition/TwoPhotonSeries"]
        stored = float(g["starting_time"].attrs["rate"]) if "starting_time" in g else (
            (g["timestamps"].shape[0] - 1) / float(g["timestamps"][-1] - g["timestamps"][0]))
        imaging = float(f["general/optophysiology/ImagingPlane/imaging_rate"][()])
    assert stored == pytest.approx(measured, rel=1e-6)
    assert np.float32(imaging) == np.float32(stored)
