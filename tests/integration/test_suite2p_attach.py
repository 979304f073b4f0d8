"""suite2p results attached to the session's NWB file, checked against the fixtures' ground truth
and against the suite2p arrays as numpy itself loads them (never against rig2nwb's reader)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from rig2nwb.testing.labs import Lab
from rig2nwb.testing.nwbfiles import nwb_timestamps
from rig2nwb.testing.suite2p_folders import raw_npy
from rig2nwb.testing.suite2p_sessions import SESSION, SUBJECT, attach_cli, make_session


@dataclass
class Attached:
    lab: Lab
    fixture: Path
    s2p: Path  # the suite2p folder the daemon reads (a copy of the fixture's)
    nwb: Path
    attach_out: str


# Uncompressed, and gzip: gzip traces are created empty by hdmf and filled with chunks compressed
# on a thread pool (chunkwriter), a separate write path.
@pytest.fixture(scope="module", params=["none", "gzip"])
def twoplane(tmp_path_factory: pytest.TempPathFactory,
             request: pytest.FixtureRequest) -> Iterator[Attached]:
    lab, fixture, s2p = make_session(tmp_path_factory.mktemp("twoplane"), "twoplane",
                                     compression=request.param, planes=2)
    res = attach_cli(lab)
    assert res.returncode == 0, res.stderr
    yield Attached(lab, fixture, s2p, lab.nwb(SESSION, SUBJECT), res.stdout)


@pytest.fixture(scope="module")
def twochan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attached]:
    # The default compression (Blosc, a plugin filter) here; the other fixture is uncompressed.
    lab, fixture, s2p = make_session(tmp_path_factory.mktemp("twochan"), "twochan",
                                     compression="blosc-lz4", channels=2)
    res = attach_cli(lab)
    assert res.returncode == 0, res.stderr
    yield Attached(lab, fixture, s2p, lab.nwb(SESSION, SUBJECT), res.stdout)


def mask_centroids(f: h5py.File, table: str) -> list[np.ndarray]:
    """Weighted (x, y) centroid of every ROI's pixel mask, read with h5py from the file."""
    g = f[table]
    pm = g["pixel_mask"][:]
    ends = g["pixel_mask_index"][:]
    out, start = [], 0
    for end in ends:
        m = pm[start:end]
        w = m["weight"].astype(float)
        out.append(np.array([np.average(m["x"], weights=w), np.average(m["y"], weights=w)]))
        start = end
    return out


# --- orientation ---------------------------------------------------------------------------


@pytest.mark.parametrize("plane", [0, 1])
def test_masks_land_on_ground_truth_cells_in_the_stored_movie(twoplane: Attached, plane: int) -> None:
    gt = np.load(twoplane.fixture / "ground_truth.npz")
    centres = gt["centers"][gt["cell_plane"] == plane]  # (row, col) in the raw frames
    with h5py.File(twoplane.nwb, "r") as f:
        movie_mean = f[f"acquisition/TwoPhotonSeries_plane{plane}_ch1/data"][:].mean(axis=0)
        table = f"processing/ophys/ImageSegmentation/PlaneSegmentation_plane{plane}"
        cents = mask_centroids(f, table)
        pm = f[table]["pixel_mask"][:]
        ends = f[table]["pixel_mask_index"][:]
    # Every ground-truth cell has an ROI whose mask centre (x, y) sits on it...
    dists = [min(np.hypot(*(c - centre)) for c in cents) for centre in centres]
    assert max(dists) < 3.0, dists
    # ...while reading the masks the other way round would miss most cells (the test has teeth).
    swapped = [min(np.hypot(*(c[::-1] - centre)) for c in cents) for centre in centres]
    assert np.median(swapped) > 10
    # And the movie is bright under each mask: mask pixels index data[t, x, y] of the movie.
    background = np.median(movie_mean)
    start = 0
    brighter = 0
    for end in ends:
        m = pm[start:end]
        start = end
        brighter += movie_mean[m["x"], m["y"]].mean() > background
    assert brighter >= 0.9 * len(ends)


def test_images_are_in_movie_coordinates(twoplane: Attached) -> None:
    ops = raw_npy(twoplane.fixture / "suite2p" / "plane0" / "ops.npy")
    with h5py.File(twoplane.nwb, "r") as f:
        bg = f["processing/ophys/Backgrounds_plane0"]
        mean_img = bg["meanImg"][:]
        vcorr = bg["Vcorr"][:]
        movie_mean = f["acquisition/TwoPhotonSeries_plane0_ch1/data"][:].mean(axis=0)
    np.testing.assert_allclose(mean_img, ops["meanImg"], rtol=1e-6)
    # suite2p's mean image is of the registered movie: it must correlate with the raw mean
    # in the same orientation (and not transposed).
    r = np.corrcoef(mean_img.ravel(), movie_mean.ravel())[0, 1]
    rt = np.corrcoef(mean_img.T.ravel(), movie_mean.ravel())[0, 1]
    assert r > 0.9 and r > rt + 0.2
    (y0, y1), (x0, x1) = ops["yrange"], ops["xrange"]
    np.testing.assert_allclose(vcorr[y0:y1, x0:x1], ops["Vcorr"], rtol=1e-6)
    outside = np.ones(vcorr.shape, bool)
    outside[y0:y1, x0:x1] = False
    assert np.isnan(vcorr[outside]).all()


# --- traces, ids, timing -----------------------------------------------------------------


@pytest.mark.parametrize("plane", [0, 1])
def test_traces_equal_suite2p_arrays_and_frame_times(twoplane: Attached, plane: int) -> None:
    src = twoplane.fixture / "suite2p" / f"plane{plane}"
    series = f"TwoPhotonSeries_plane{plane}_ch1"
    frame_times = nwb_timestamps(twoplane.nwb, series)
    with h5py.File(twoplane.nwb, "r") as f:
        raw_frames = f[f"acquisition/{series}/data"].shape[0]
        mod = f["processing/ophys"]
        for container, name, file in [("Fluorescence", "RoiResponseSeries", "F.npy"),
                                      ("Neuropil", "Neuropil", "Fneu.npy"),
                                      ("Deconvolved", "Deconvolved", "spks.npy")]:
            g = mod[f"{container}/{name}_plane{plane}"]
            wanted = twoplane.lab.config().output.compression
            assert g["data"].compression == (None if wanted == "none" else wanted)
            expected = raw_npy(src / file)
            np.testing.assert_array_equal(g["data"][:], expected.T)
            assert g["data"].shape[0] == raw_frames
            if "timestamps" in g:
                np.testing.assert_array_equal(g["timestamps"][:], frame_times)
            else:
                st = g["starting_time"]
                got = st[()] + np.arange(g["data"].shape[0]) / st.attrs["rate"]
                np.testing.assert_allclose(got, frame_times, rtol=0, atol=1e-9)
        ps = mod[f"ImageSegmentation/PlaneSegmentation_plane{plane}"]
        iscell = raw_npy(src / "iscell.npy")
        np.testing.assert_array_equal(ps["id"][:], np.arange(len(iscell)))
        np.testing.assert_array_equal(ps["iscell"][:], iscell[:, 0].astype(bool))
        np.testing.assert_array_equal(ps["iscell_probability"][:], iscell[:, 1])
        # The segmentation belongs to its own plane and series.
        assert ps.get("imaging_plane", getlink=True).path.endswith(f"ImagingPlane_plane{plane}_ch1")
        stat = raw_npy(src / "stat.npy")
        ends = ps["pixel_mask_index"][:]
        assert len(ends) == len(stat)
        pm = ps["pixel_mask"][:]
        k = len(stat) // 2
        start = ends[k - 1] if k else 0
        np.testing.assert_array_equal(pm["x"][start:ends[k]], stat[k]["ypix"])
        np.testing.assert_array_equal(pm["y"][start:ends[k]], stat[k]["xpix"])


def test_dff_tracks_ground_truth(twoplane: Attached) -> None:
    gt = np.load(twoplane.fixture / "ground_truth.npz")
    with h5py.File(twoplane.nwb, "r") as f:
        for plane in (0, 1):
            dff = f[f"processing/ophys/DfOverF/DfOverF_plane{plane}/data"][:]
            cents = mask_centroids(f, f"processing/ophys/ImageSegmentation/PlaneSegmentation_plane{plane}")
            idx = np.flatnonzero(gt["cell_plane"] == plane)
            corrs = []
            for i in idx:
                roi = int(np.argmin([np.hypot(*(c - gt["centers"][i])) for c in cents]))
                corrs.append(np.corrcoef(dff[:, roi], gt["dff"][i])[0, 1])
            assert np.isfinite(dff).all()
            assert np.median(corrs) > 0.85, corrs


def test_motion_offsets_are_time_series_of_the_plane(twoplane: Attached) -> None:
    reg = raw_npy(twoplane.fixture / "suite2p" / "plane0" / "ops.npy")
    with h5py.File(twoplane.nwb, "r") as f:
        g = f["processing/ophys/MotionOffsets_plane0"]
        np.testing.assert_array_equal(g["data"][:, 0], reg["yoff"])
        np.testing.assert_array_equal(g["data"][:, 1], reg["xoff"])
        if "xoff1" in reg:
            nr = f["processing/ophys/NonrigidMotionOffsets_plane0/data"][:]
            np.testing.assert_array_equal(nr[:, :, 1], reg["xoff1"])


def test_file_validates_and_combined_is_not_written_twice(twoplane: Attached) -> None:
    from pynwb import NWBHDF5IO, validate

    errors = validate(path=str(twoplane.nwb))
    assert not errors, errors
    from nwbinspector import Importance, inspect_nwbfile

    critical = [m for m in inspect_nwbfile(nwbfile_path=str(twoplane.nwb))
                if m.importance == Importance.CRITICAL]
    assert not critical, critical
    with NWBHDF5IO(str(twoplane.nwb), "r") as io:
        nwb = io.read()
        segs = nwb.processing["ophys"]["ImageSegmentation"].plane_segmentations
        assert sorted(segs) == ["PlaneSegmentation_plane0", "PlaneSegmentation_plane1"]
        n_rois = [len(raw_npy(twoplane.fixture / "suite2p" / f"plane{p}" / "iscell.npy"))
                  for p in (0, 1)]
        assert [len(segs[f"PlaneSegmentation_plane{p}"]) for p in (0, 1)] == n_rois
    assert "checked: valid; nwbinspector: 0 critical" in twoplane.attach_out, twoplane.attach_out
    total = sum(n_rois)
    assert f"{total} ROIs" in twoplane.attach_out


def test_two_channels_red_cells_and_second_channel(twochan: Attached) -> None:
    src = twochan.fixture / "suite2p" / "plane0"
    gt = np.load(twochan.fixture / "ground_truth.npz")
    with h5py.File(twochan.nwb, "r") as f:
        mod = f["processing/ophys"]
        ps = mod["ImageSegmentation/PlaneSegmentation"]
        red = raw_npy(src / "redcell.npy")
        np.testing.assert_array_equal(ps["redcell"][:], red[:, 0].astype(bool))
        np.testing.assert_array_equal(ps["redcell_probability"][:], red[:, 1])
        assert ps.get("imaging_plane", getlink=True).path.endswith("ImagingPlane_plane0_ch1")
        np.testing.assert_array_equal(mod["Fluorescence/RoiResponseSeries_chan2/data"][:],
                                      raw_npy(src / "F_chan2.npy").T)
        np.testing.assert_array_equal(mod["Fluorescence/RoiResponseSeries/data"][:],
                                      raw_npy(src / "F.npy").T)
        assert "meanImg_chan2" in mod["Backgrounds"]
        cents = mask_centroids(f, "processing/ophys/ImageSegmentation/PlaneSegmentation")
        reds = ps["redcell"][:]
    # Each red ground-truth cell's ROI is flagged red by suite2p, and the flag sits on that ROI.
    hits = []
    for centre, is_red in zip(gt["centers"], gt["red_labels"], strict=True):
        roi = int(np.argmin([np.hypot(*(c - centre)) for c in cents]))
        hits.append(reds[roi] == is_red)
    assert all(hits)  # suite2p found all 6 red cells and no others (evaluation.json)
