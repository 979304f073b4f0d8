"""The status page and `rig2nwb status --json` after the real service ran a session: the page a
daemon leaves behind shows the session finished, with its frames and pictures.

The other status tests, which fill the ledger directly, are in tests/unit/outputs/test_status.py.
"""

from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

import pytest

from rig2nwb.config.paths import status_html, status_json
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.services import finished, run_service
from rig2nwb.testing.simrig import MovieSpec, SimSession
from rig2nwb.testing.status_pages import XHTML, parse_page, session_rows, text_of


def test_daemon_run_leaves_a_page_showing_the_session_finished(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab: Lab = make_lab(imaging={"frame_rate": 20.0})
    folder = lab.session_dir()
    sim = SimSession(
        tiff_paths=[folder / f"s1_{i:05d}.tif" for i in range(1, 3)], frames_per_file=12,
        movie=MovieSpec(shape=(32, 40), rate=20.0, n_cells=3, seed=3),
        scan_path=lab.root / "m1/txt/s1_scan.txt", trial_path=lab.root / "m1/txt/s1_trial.txt",
        realtime=False)
    sim.write()
    run_service(lab, finished("s1"), timeout=90)
    cfg = lab.config()
    data = json.loads(status_json(cfg).read_text(encoding="utf-8"))
    assert data["daemon"] == "stopped"
    [row] = data["sessions"]
    assert (row["subject"], row["session"], row["state"]) == ("m1", "s1", "finished")
    assert row["frames"] == 24 and row["nwb_path"] == str(lab.nwb())
    assert row["rate_hz"] == pytest.approx(20.0)  # plain TIFFs: imaging.frame_rate
    doc = parse_page(status_html(cfg))
    rows = session_rows(doc)
    assert set(rows) == {"s1"} and "finished" in text_of(rows["s1"])
    for el in rows["s1"].iter(f"{XHTML}img"):  # whatever picture the daemon made, it exists
        assert (status_html(cfg).parent / unquote(urlsplit(el.get("src") or "").path)).is_file()
    assert "24" in text_of(rows["s1"])
