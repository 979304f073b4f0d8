"""Real rig files from ../shared/fixtures, converted as plain page sequences (the rig-formats stage
de-interleaves planes and channels later). Skipped with a reason when the fixtures are absent.

The rig folder here is the shared fixtures folder itself: rig2nwb only ever reads it, and the
tests check that every file is byte-identical afterwards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Lab, nwb_frames, shared_fixture, tiff_pages, tree_checksums


def _convert_real(make_lab, root: Path, frames: str, session: str) -> tuple[Lab, Path]:  # type: ignore[no-untyped-def]
    lab: Lab = make_lab(rig={"root": str(root), "frames": frames, "subject": "fixture",
                             "scan_file": "", "trial_file": ""})
    before = tree_checksums(root / session)
    proc = lab.run_cli("convert", str(root / session), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert tree_checksums(root / session) == before, "rig files were modified"
    return lab, lab.out / f"sub-fixture_ses-{session}.nwb"


def test_scanimage_bigtiff_run_split_over_ten_files(make_lab) -> None:  # type: ignore[no-untyped-def]
    root = shared_fixture("scanimage")
    session = "volumetric_single_channel_multi_file"
    _, nwb = _convert_real(make_lab, root, "{session}/*.tif", session)
    files = sorted((root / session).glob("*.tif"))
    assert len(files) == 10
    expected = np.concatenate([tiff_pages(p) for p in files])  # _00001 ... _00010
    got = nwb_frames(nwb)
    assert got.shape == expected.shape == (1600, 20, 20)
    assert np.array_equal(got, expected)


def test_zlib_compressed_rig_tiffs(make_lab) -> None:  # type: ignore[no-untyped-def]
    root = shared_fixture("suite2p")
    _, nwb = _convert_real(make_lab, root, "{session}/raw/*.tif", "twochan")
    files = sorted((root / "twochan" / "raw").glob("*.tif"))
    expected = np.concatenate([tiff_pages(p) for p in files])
    got = nwb_frames(nwb)
    assert got.shape == expected.shape == (1000, 128, 128)  # 2 TIFFs x 500 pages
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("name", ["scanimage_20220923_noroi.tif",
                                  "sample_scanimage_version_3_8.tiff"])
def test_single_scanimage_files(make_lab, tmp_path: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    src = shared_fixture("scanimage", name)
    # These lie loose in the fixtures folder: link them into a session folder of a private rig
    # root (a symlink inside the rig folder that stays inside it is followed).
    root = tmp_path / "rig"
    (root / "sess").mkdir(parents=True)
    (root / "sess" / name).symlink_to(src)
    lab: Lab = make_lab(rig={"root": str(root), "frames": "{session}/*.tif*",
                             "subject": "fixture", "scan_file": "", "trial_file": ""})
    proc = lab.run_cli("convert", str(root / "sess"), "--no-progress")
    # The link points outside rig.root: rig2nwb refuses to follow it (security), so convert
    # finds nothing; a copy inside the root converts.
    assert proc.returncode == 1 and "no TIFFs" in proc.stderr
    (root / "sess" / name).unlink()
    (root / "sess" / name).write_bytes(src.read_bytes())
    proc = lab.run_cli("convert", str(root / "sess"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(nwb_frames(lab.out / "sub-fixture_ses-sess.nwb"), tiff_pages(src))
