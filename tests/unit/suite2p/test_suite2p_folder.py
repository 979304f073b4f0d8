"""rig2nwb.suite2p.folder: suite2p output folders (1.x and 0.14 style) load with the values numpy
itself reads from the same files, and every inconsistency is a Suite2pProblem naming its file.

Expectations come from np.load(allow_pickle=True) of the files in the folder under test, from the
fixtures' own records (ops_used.json, evaluation.json, ground_truth.npz) and from sizes the tests
construct, never from rig2nwb.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rig2nwb.errors import Suite2pProblem
from rig2nwb.suite2p.folder import Suite2pPlane, load_plane
from rig2nwb.suite2p.listing import (
    OPS_SETS,
    REQUIRED_FILES,
    find_planes,
    fingerprint,
    missing_files,
)
from rig2nwb.testing.paths import shared_fixture
from rig2nwb.testing.suite2p_folders import (
    ELSEWHERE,
    make_014_folder,
    make_synthetic_folder,
    np_item,
    object_array_pickle,
    save_dict,
    synthetic_crop,
    write_malicious_npy,
)

OPS_ENTRY = "ops.npy (or db.npy, settings.npy, reg_outputs.npy, detect_outputs.npy)"


def fixture_folder(name: str, style: str, tmp_path: Path) -> Path:
    src = shared_fixture("suite2p", name, "suite2p")
    return src if style == "1.x" else make_014_folder(src, tmp_path / f"{name}_014")


def sources(plane_dir: Path) -> dict[str, Any]:
    """Where the test expects each item (numpy's own reading): the flat 0.14 ops, or 1.x's
    reg_outputs (registered images, crop, shifts) and detect_outputs (Vcorr, max_proj)."""
    if (plane_dir / "reg_outputs.npy").exists():
        return {**np_item(plane_dir / "detect_outputs.npy"), **np_item(plane_dir / "reg_outputs.npy")}
    return dict(np_item(plane_dir / "ops.npy"))


def check_against_numpy(plane: Suite2pPlane, plane_dir: Path) -> None:
    for name, arr in [("F", plane.F), ("Fneu", plane.Fneu), ("spks", plane.spks)]:
        expected = np.load(plane_dir / f"{name}.npy")
        assert isinstance(arr, np.memmap) and not arr.flags.writeable, name
        assert arr.dtype == np.float32 and np.array_equal(arr, expected), name
    assert plane.nframes == np.load(plane_dir / "F.npy").shape[1]
    assert np.array_equal(plane.iscell, np.load(plane_dir / "iscell.npy"))
    stat = np.load(plane_dir / "stat.npy", allow_pickle=True)
    assert len(plane.ypix) == len(plane.xpix) == len(plane.lam) == len(stat)
    for i, roi in enumerate(stat):
        assert np.array_equal(plane.ypix[i], roi["ypix"]) and plane.ypix[i].dtype == np.int64
        assert np.array_equal(plane.xpix[i], roi["xpix"]) and plane.xpix[i].dtype == np.int64
        assert np.array_equal(plane.lam[i], roi["lam"]) and plane.lam[i].dtype == np.float32
    src = sources(plane_dir)
    (y0, y1), (x0, x1) = src["yrange"], src["xrange"]
    assert plane.crop == (y0, y1, x0, x1)
    inside = np.zeros((plane.Ly, plane.Lx), bool)
    inside[y0:y1, x0:x1] = True
    for key in ("meanImg", "meanImgE", "meanImg_chan2"):
        if key in src:
            assert np.array_equal(plane.images[key], src[key].astype(np.float32)), key
    for key in ("Vcorr", "max_proj"):
        img = plane.images[key]
        assert img.dtype == np.float32 and img.shape == (plane.Ly, plane.Lx)
        assert np.array_equal(np.isnan(img), ~inside), key
        assert np.array_equal(img[y0:y1, x0:x1], src[key].astype(np.float32)), key
    for key in ("yoff", "xoff", "corrXY", "yoff1", "xoff1", "corrXY1"):
        assert np.array_equal(plane.offsets[key], src[key]), key


@pytest.mark.parametrize("style", ["1.x", "0.14"])
@pytest.mark.parametrize("name", ["twoplane", "twochan"])
def test_fixture_planes_load_like_numpy(tmp_path: Path, name: str, style: str) -> None:
    folder = fixture_folder(name, style, tmp_path)
    root = folder.parent if style == "1.x" else shared_fixture("suite2p", name)
    truth = json.loads((root / "ground_truth_summary.json").read_text())
    used = json.loads((root / "ops_used.json").read_text())
    evaluation = json.loads((root / "evaluation.json").read_text())
    planes = find_planes(folder)
    assert planes == [(i, folder / f"plane{i}") for i in range(truth["nplanes"])]
    for index, plane_dir in planes:
        assert missing_files(plane_dir) == []
        plane = load_plane(index, plane_dir)
        assert (plane.index, plane.folder, plane.style) == (index, plane_dir, style)
        assert (plane.Ly, plane.Lx, plane.nframes) == (truth["Ly"], truth["Lx"], truth["nframes"])
        assert plane.F.shape[0] == evaluation["planes"][f"plane{index}"]["n_rois"]
        assert plane.fs == used["settings_passed_to_run_s2p"]["fs"]
        passed = used["settings_passed_to_run_s2p"]
        assert plane.neuropil_coefficient == passed["extraction"]["neuropil_coefficient"]
        assert plane.neuropil_coefficient == 0.7
        assert plane.nchannels == used["db_passed_to_run_s2p"]["nchannels"] == truth["nchannels"]
        assert plane.functional_chan == used["db_passed_to_run_s2p"]["functional_chan"] == 1
        assert plane.settings["fs"] == plane.fs and plane.settings["neuropil_coefficient"] == 0.7
        assert plane.settings["suite2p_version"] == ("1.1.0" if style == "1.x" else "0.14.3")
        json.dumps(plane.settings)
        check_against_numpy(plane, plane_dir)
        assert plane.warnings == []
        if name == "twochan":
            assert plane.redcell is not None and plane.F_chan2 is not None and plane.Fneu_chan2 is not None
            assert np.array_equal(plane.redcell, np.load(plane_dir / "redcell.npy"))
            red = evaluation["planes"]["plane0"]["redcell"]["n_pred_red"]
            assert np.count_nonzero(plane.redcell[:, 0]) == red == 6
            assert np.array_equal(plane.F_chan2, np.load(plane_dir / "F_chan2.npy"))
            assert np.array_equal(plane.Fneu_chan2, np.load(plane_dir / "Fneu_chan2.npy"))
            assert set(plane.images) == {"meanImg", "meanImgE", "Vcorr", "max_proj", "meanImg_chan2"}
        else:
            assert plane.redcell is None and plane.F_chan2 is None and plane.Fneu_chan2 is None
            assert set(plane.images) == {"meanImg", "meanImgE", "Vcorr", "max_proj"}


def test_combined_and_other_folders_are_not_planes(tmp_path: Path) -> None:
    twoplane = shared_fixture("suite2p", "twoplane", "suite2p")
    assert (twoplane / "combined").is_dir()
    assert [i for i, _ in find_planes(twoplane)] == [0, 1]
    for name in ("plane10", "plane2", "combined", "plane01", "planeX", "Plane3", "reg_tif"):
        (tmp_path / name).mkdir()
    (tmp_path / "plane4").write_text("a file, not a folder")
    assert find_planes(tmp_path) == [(2, tmp_path / "plane2"), (10, tmp_path / "plane10")]
    assert find_planes(tmp_path / "absent") == []
    assert find_planes(tmp_path / "planeX") == []


def test_cropped_images_sit_where_the_cells_are() -> None:
    """Vcorr and max_proj placed in the crop line up with the ground-truth footprints exactly as
    the full-frame meanImg does (same best shift): the crop offset is applied the right way."""
    for name, index in [("twochan", 0), ("twoplane", 0), ("twoplane", 1)]:
        root = shared_fixture("suite2p", name)
        truth = np.load(root / "ground_truth.npz")
        cells = truth["footprints"][truth["cell_plane"] == index].sum(axis=0)
        plane = load_plane(index, root / "suite2p" / f"plane{index}")

        def best_shift(img: np.ndarray, cells: np.ndarray = cells) -> tuple[int, int]:
            ok = np.isfinite(img)
            scores = {(dy, dx): np.corrcoef(np.roll(cells, (dy, dx), axis=(0, 1))[ok], img[ok])[0, 1]
                      for dy in range(-4, 5) for dx in range(-4, 5)}
            return max(scores, key=lambda k: scores[k])

        reference = best_shift(plane.images["meanImg"])
        assert abs(reference[0]) <= 1 and abs(reference[1]) <= 1
        assert best_shift(plane.images["Vcorr"]) == reference
        assert best_shift(plane.images["max_proj"]) == reference


# --- folder facts -------------------------------------------------------------------------------


def copy_plane(src_plane: Path, dst_folder: Path) -> Path:
    dst = dst_folder / src_plane.name
    shutil.copytree(src_plane, dst)
    for name in ("db.npy", "settings.npy"):  # 1.x's top-level copies
        if (src_plane.parent / name).exists():
            shutil.copy2(src_plane.parent / name, dst_folder / name)
    return dst


def test_missing_files(tmp_path: Path) -> None:
    plane = copy_plane(shared_fixture("suite2p", "twochan", "suite2p", "plane0"), tmp_path)
    assert missing_files(plane) == []
    (plane / "F.npy").unlink()
    (plane / "iscell.npy").unlink()
    assert missing_files(plane) == ["F.npy", "iscell.npy"]
    (plane / "reg_outputs.npy").unlink()
    assert missing_files(plane) == ["F.npy", "iscell.npy"]  # ops.npy still there
    (plane / "ops.npy").unlink()
    assert missing_files(plane) == ["F.npy", "iscell.npy", OPS_ENTRY]
    with pytest.raises(Suite2pProblem) as info:
        load_plane(0, plane)
    assert info.value.file == plane / "F.npy" and str(info.value).startswith(f"{plane / 'F.npy'}: ")
    empty = tmp_path / "plane9"
    empty.mkdir()
    assert missing_files(empty) == [*REQUIRED_FILES, OPS_ENTRY]
    assert OPS_SETS == (("ops.npy",), ("db.npy", "settings.npy", "reg_outputs.npy", "detect_outputs.npy"))


def test_1x_settings_and_db_may_sit_next_to_the_planes(tmp_path: Path) -> None:
    plane = copy_plane(shared_fixture("suite2p", "twochan", "suite2p", "plane0"), tmp_path)
    for name in ("ops.npy", "settings.npy", "db.npy"):
        (plane / name).unlink()
    assert missing_files(plane) == []
    loaded = load_plane(0, plane)
    assert loaded.style == "1.x" and loaded.neuropil_coefficient == 0.7 and loaded.fs == 30.0
    assert (loaded.Ly, loaded.Lx) == np_item(plane / "reg_outputs.npy")["meanImg"].shape
    (tmp_path / "settings.npy").unlink()
    assert missing_files(plane) == [OPS_ENTRY]


def test_1x_plane_with_only_the_merged_ops(tmp_path: Path) -> None:
    """A 1.x plane folder whose db/settings/reg/detect files are gone: the merged ops.npy (nested
    settings) serves instead."""
    src = shared_fixture("suite2p", "twochan", "suite2p", "plane0")
    plane = tmp_path / "plane0"
    shutil.copytree(src, plane)
    for name in OPS_SETS[1]:
        (plane / name).unlink()
    loaded = load_plane(0, plane)
    ops = np_item(plane / "ops.npy")
    assert loaded.style == "1.x" and loaded.neuropil_coefficient == ops["extraction"]["neuropil_coefficient"]
    assert (loaded.fs, loaded.nchannels, loaded.functional_chan) == (ops["fs"], ops["nchannels"], 1)
    assert loaded.settings["date_proc"] == ops["date_proc"].isoformat()
    check_against_numpy(loaded, plane)


def test_fingerprint(tmp_path: Path) -> None:
    folder = make_synthetic_folder(tmp_path / "suite2p", n_rois=5, n_frames=20, Ly=16, Lx=20, nplanes=2,
                                   style="1.x")
    (folder / "combined").mkdir()
    np.save(folder / "combined" / "F.npy", np.zeros((2, 2)))
    (folder / "run.log").write_text("not an .npy at the top")
    (folder / "plane0" / "reg_tif").mkdir()
    (folder / "plane0" / "data.bin").write_bytes(b"\0" * 10)
    expected = []
    for path in [*folder.glob("*.npy"), *folder.glob("plane*/*")]:
        if path.is_file():
            st = path.stat()
            expected.append((path.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns))
    fp = fingerprint(folder)
    assert fp == tuple(sorted(expected))
    names = [row[0] for row in fp]
    assert "plane0/data.bin" in names and "settings.npy" in names and "plane1/F.npy" in names
    assert not any(n.startswith("combined") or n == "run.log" or n == "plane0/reg_tif" for n in names)
    (folder / "plane1" / "spks.npy").unlink()
    assert {row[0] for row in fingerprint(folder)} == set(names) - {"plane1/spks.npy"}
    np.save(folder / "plane0" / "iscell.npy", np.zeros((6, 2)))
    assert dict((n, s) for n, s, _ in fingerprint(folder))["plane0/iscell.npy"] == \
        (folder / "plane0" / "iscell.npy").stat().st_size
    assert fingerprint(tmp_path / "absent") == ()


def test_fingerprint_skips_a_file_that_vanishes_while_listed(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_synthetic_folder(tmp_path / "suite2p", n_rois=2, n_frames=5, Ly=8, Lx=8)
    real_scandir = os.scandir

    class Vanishing:  # a directory entry whose file is deleted between listing and lstat
        def __init__(self, entry: Any) -> None:
            self.entry, self.name = entry, entry.name

        def stat(self, *args: Any, **kw: Any) -> Any:
            if self.name == "Fneu.npy":
                raise FileNotFoundError(self.name)
            return self.entry.stat(*args, **kw)

    class Listing:
        def __init__(self, *args: Any) -> None:
            self.inner = real_scandir(*args)

        def __enter__(self) -> Any:
            return (Vanishing(e) for e in self.inner)

        def __exit__(self, *exc: Any) -> None:
            self.inner.close()

    monkeypatch.setattr(os, "scandir", Listing)  # what rigfs lists folders with
    names = [row[0] for row in fingerprint(folder)]
    assert "plane0/Fneu.npy" not in names and "plane0/F.npy" in names


# --- synthetic folders: both styles, ops paths ignored, memory --------------------------------------


@pytest.mark.parametrize("style", ["0.14", "1.x"])
def test_synthetic_folders(tmp_path: Path, style: str) -> None:
    folder = make_synthetic_folder(tmp_path / "suite2p", n_rois=7, n_frames=40, Ly=24, Lx=30, nplanes=3,
                                   seed=5, style=style)
    planes = find_planes(folder)
    assert [i for i, _ in planes] == [0, 1, 2]
    yrange, xrange = synthetic_crop(24, 30)
    for index, plane_dir in planes:
        plane = load_plane(index, plane_dir)
        assert (plane.style, plane.Ly, plane.Lx, plane.nframes, plane.F.shape) == (style, 24, 30, 40, (7, 40))
        assert (plane.fs, plane.neuropil_coefficient) == (30.0, 0.7)
        assert (plane.nchannels, plane.functional_chan) == (1, 1)
        assert plane.crop == (*yrange, *xrange)
        check_against_numpy(plane, plane_dir)
        assert plane.warnings == []


def test_paths_stored_in_ops_are_ignored(tmp_path: Path) -> None:
    """The ops of one folder point at another existing suite2p folder with other data: what is
    loaded is still the folder's own files."""
    decoy = make_synthetic_folder(tmp_path / "decoy", n_rois=3, n_frames=10, Ly=12, Lx=12, seed=1)
    folder = make_synthetic_folder(tmp_path / "real", n_rois=4, n_frames=11, Ly=12, Lx=12, seed=2)
    ops = np_item(folder / "plane0" / "ops.npy")
    assert ops["save_path"].startswith(ELSEWHERE)
    ops.update(save_path=str(decoy / "plane0"), reg_file=str(decoy / "plane0" / "data.bin"),
               ops_path=str(decoy / "plane0" / "ops.npy"), save_path0=str(decoy.parent), save_folder="decoy")
    save_dict(folder / "plane0" / "ops.npy", ops)
    plane = load_plane(0, folder / "plane0")
    assert plane.F.shape == (4, 11)
    check_against_numpy(plane, folder / "plane0")


def test_memory_stays_bounded_for_a_long_recording(tmp_path: Path) -> None:
    """1000 ROIs x 50,000 frames: each trace file is 200 MB; loading allocates a small part of it."""
    folder = make_synthetic_folder(tmp_path / "suite2p", n_rois=1000, n_frames=50_000, Ly=64, Lx=64)
    assert (folder / "plane0" / "F.npy").stat().st_size > 200_000_000
    tracemalloc.start()
    try:
        plane = load_plane(0, folder / "plane0")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plane.F.shape == (1000, 50_000) and isinstance(plane.F, np.memmap)
    assert peak < 40_000_000, f"peak {peak / 1e6:.0f} MB"
    rows = np.load(folder / "plane0" / "F.npy", mmap_mode="r")[[0, 999]]
    assert np.array_equal(plane.F[[0, 999]], rows)


# --- problems, each naming its file ----------------------------------------------------------------


@pytest.fixture
def synthetic_plane(tmp_path: Path) -> Path:
    return make_synthetic_folder(tmp_path / "suite2p", n_rois=6, n_frames=30, Ly=20, Lx=25, seed=3) / "plane0"


def problem(plane_dir: Path) -> Suite2pProblem:
    with pytest.raises(Suite2pProblem) as info:
        load_plane(0, plane_dir)
    exc = info.value
    assert str(exc) == f"{exc.file}: {exc.message}"
    return exc


def test_traces_with_other_frame_count(synthetic_plane: Path) -> None:
    np.save(synthetic_plane / "Fneu.npy", np.zeros((6, 29), np.float32))
    exc = problem(synthetic_plane)
    assert exc.file == synthetic_plane / "Fneu.npy"
    assert "(6, 29)" in exc.message and "(6, 30)" in exc.message and "F.npy" in exc.message


@pytest.mark.parametrize("name", ["spks.npy", "F_chan2.npy", "Fneu_chan2.npy"])
def test_other_traces_with_other_shape(synthetic_plane: Path, name: str) -> None:
    np.save(synthetic_plane / name, np.zeros((5, 30), np.float32))
    exc = problem(synthetic_plane)
    assert exc.file == synthetic_plane / name and "(5, 30)" in exc.message


def test_one_dimensional_traces(synthetic_plane: Path) -> None:
    np.save(synthetic_plane / "F.npy", np.zeros(30, np.float32))
    assert problem(synthetic_plane).file == synthetic_plane / "F.npy"


@pytest.mark.parametrize(("name", "shape"), [("iscell.npy", (5, 2)), ("iscell.npy", (6,)),
                                             ("redcell.npy", (7, 2)), ("redcell.npy", (6, 3))])
def test_classification_with_other_roi_count(synthetic_plane: Path, name: str,
                                             shape: tuple[int, ...]) -> None:
    np.save(synthetic_plane / name, np.zeros(shape))
    exc = problem(synthetic_plane)
    assert exc.file == synthetic_plane / name and str(shape) in exc.message and "6" in exc.message


def _stat(plane_dir: Path) -> list[dict[str, Any]]:
    return list(np.load(plane_dir / "stat.npy", allow_pickle=True))


def _save_stat(plane_dir: Path, stat: list[dict[str, Any]]) -> None:
    arr = np.empty(len(stat), dtype=object)
    arr[:] = stat
    np.save(plane_dir / "stat.npy", arr, allow_pickle=True)


def test_stat_with_other_roi_count(synthetic_plane: Path) -> None:
    _save_stat(synthetic_plane, _stat(synthetic_plane)[:5])
    exc = problem(synthetic_plane)
    assert exc.file == synthetic_plane / "stat.npy" and "5" in exc.message and "6" in exc.message


@pytest.mark.parametrize(("key", "value", "shown"), [("ypix", 20, "y=20"), ("xpix", 25, "x=25"),
                                                     ("ypix", -1, "y=-1"), ("xpix", 1000, "x=1000")])
def test_pixel_outside_the_frame(synthetic_plane: Path, key: str, value: int, shown: str) -> None:
    stat = _stat(synthetic_plane)
    stat[3][key] = stat[3][key].copy()
    stat[3][key][1] = value
    _save_stat(synthetic_plane, stat)
    exc = problem(synthetic_plane)
    assert exc.file == synthetic_plane / "stat.npy"
    assert "ROI 3" in exc.message and shown in exc.message and "20 x 25" in exc.message


@pytest.mark.parametrize("change", ["short xpix", "short lam", "no ypix", "not a dict"])
def test_malformed_stat_entries(synthetic_plane: Path, change: str) -> None:
    stat: list[Any] = _stat(synthetic_plane)
    if change == "short xpix":
        stat[2]["xpix"] = stat[2]["xpix"][:-1]
    elif change == "short lam":
        stat[2]["lam"] = stat[2]["lam"][:-1]
    elif change == "no ypix":
        del stat[2]["ypix"]
    else:
        stat[2] = [1, 2]
    _save_stat(synthetic_plane, stat)
    exc = problem(synthetic_plane)
    assert exc.file == synthetic_plane / "stat.npy" and "ROI 2" in exc.message


def test_missing_lam_means_equal_weights(synthetic_plane: Path) -> None:
    stat = _stat(synthetic_plane)
    del stat[1]["lam"]
    _save_stat(synthetic_plane, stat)
    plane = load_plane(0, synthetic_plane)
    assert np.array_equal(plane.lam[1], np.ones(len(stat[1]["ypix"]), np.float32))


@pytest.mark.parametrize("name", ["F.npy", "spks.npy", "stat.npy", "iscell.npy", "ops.npy"])
def test_truncated_file(synthetic_plane: Path, name: str) -> None:
    path = synthetic_plane / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    exc = problem(synthetic_plane)
    assert exc.file == path


def test_nan_and_inf_are_counted(synthetic_plane: Path) -> None:
    F = np.load(synthetic_plane / "F.npy")
    F[1, :3] = np.nan
    F[4, 7] = np.inf
    F[4, 8] = -np.inf
    np.save(synthetic_plane / "F.npy", F)
    plane = load_plane(0, synthetic_plane)
    [warning] = [w for w in plane.warnings if "F.npy" in w]
    assert str(synthetic_plane / "F.npy") in warning
    assert "3 NaN" in warning and "2 infinite" in warning and "2 of 6 ROIs" in warning


def test_offsets_and_images_of_wrong_size_are_left_out(synthetic_plane: Path) -> None:
    ops = np_item(synthetic_plane / "ops.npy")
    ops["yoff"] = ops["yoff"][:-1]
    ops["Vcorr"] = np.zeros((3, 3))
    ops["meanImgE"] = np.zeros((20, 24))
    del ops["max_proj"]
    save_dict(synthetic_plane / "ops.npy", ops)
    plane = load_plane(0, synthetic_plane)
    assert "yoff" not in plane.offsets and "xoff" in plane.offsets
    assert set(plane.images) == {"meanImg"}
    for word in ("yoff", "Vcorr", "meanImgE", "max_proj"):
        assert any(word in w and "plane0" in w for w in plane.warnings), word


def test_frame_size_taken_from_the_mean_image(synthetic_plane: Path) -> None:
    ops = np_item(synthetic_plane / "ops.npy")
    del ops["Ly"], ops["Lx"]
    save_dict(synthetic_plane / "ops.npy", ops)
    assert (load_plane(0, synthetic_plane).Ly, load_plane(0, synthetic_plane).Lx) == (20, 25)
    del ops["meanImg"]
    save_dict(synthetic_plane / "ops.npy", ops)
    assert "Ly" in problem(synthetic_plane).message


def test_ops_that_is_not_a_dict(synthetic_plane: Path) -> None:
    np.save(synthetic_plane / "ops.npy", np.zeros(3))
    assert problem(synthetic_plane).file == synthetic_plane / "ops.npy"


# --- malicious files --------------------------------------------------------------------------------


class Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return subprocess.call, (["touch", str(self.marker)],)


@pytest.mark.parametrize("name", ["stat.npy", "ops.npy"])
def test_malicious_file_is_a_problem_and_nothing_runs(synthetic_plane: Path, tmp_path: Path,
                                                       name: str) -> None:
    marker = tmp_path / "marker"
    if name == "stat.npy":
        stat: list[Any] = _stat(synthetic_plane)
        stat[4] = {**stat[4], "lam": Touch(marker)}
        arr = np.empty(len(stat), dtype=object)  # a list of dicts, as suite2p saves stat
        arr[:] = stat
        write_malicious_npy(synthetic_plane / name, pickle.dumps(arr, protocol=4), shape=(len(stat),))
    else:
        ops = np_item(synthetic_plane / "ops.npy")
        write_malicious_npy(synthetic_plane / name, object_array_pickle({**ops, "Vcorr": Touch(marker)}))
    exc = problem(synthetic_plane)
    assert exc.file == synthetic_plane / name
    assert "refused to load" in exc.message and "subprocess.call" in exc.message
    assert not marker.exists()


def test_malicious_fallback_ops_in_a_1x_folder_is_still_refused(tmp_path: Path) -> None:
    folder = make_synthetic_folder(tmp_path / "suite2p", n_rois=2, n_frames=5, Ly=8, Lx=8, style="1.x")
    plane = folder / "plane0"
    marker = tmp_path / "marker"
    write_malicious_npy(plane / "ops.npy", object_array_pickle({"date_proc": Touch(marker)}))
    exc = problem(plane)
    assert exc.file == plane / "ops.npy" and "refused to load" in exc.message
    assert not marker.exists()
    (plane / "ops.npy").write_bytes(b"damaged")  # merely damaged: the 1.x files suffice
    loaded = load_plane(0, plane)
    assert any(str(plane / "ops.npy") in w for w in loaded.warnings)
