"""NWB files as h5py reads them (frames, and frame times the way NWB defines them), and a small
valid NWB file written with pynwb alone (never by rig2nwb's writer)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np

SERIES = "acquisition/TwoPhotonSeries"


def nwb_frames(path: Path, series: str = "TwoPhotonSeries") -> np.ndarray:
    with h5py.File(path, "r") as f:
        return np.asarray(f[f"acquisition/{series}/data"][:])


def nwb_timestamps(path: Path, series: str = "TwoPhotonSeries") -> np.ndarray:
    """Frame times as NWB defines them: the timestamps dataset, or starting_time + i / rate."""
    with h5py.File(path, "r") as f:
        g = f[f"acquisition/{series}"]
        if "timestamps" in g:
            return np.asarray(g["timestamps"][:])
        start = g["starting_time"]
        return float(start[()]) + np.arange(g["data"].shape[0]) / float(start.attrs["rate"])


def write_nwb(path: Path, *, species: str = "Mus musculus", frames: int = 40, compress: bool = False) -> Path:
    """A complete NWB file written by pynwb: a 16x16 int16 TwoPhotonSeries of ``frames`` frames
    with irregular timestamps, four trials, DANDI-complete subject; Blosc-compressed if
    ``compress``."""
    from hdmf.backends.hdf5 import H5DataIO
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.file import Subject
    from pynwb.ophys import OpticalChannel, TwoPhotonSeries

    nwb = NWBFile(session_description="test session", identifier=str(uuid.uuid4()),
                  session_start_time=datetime(2025, 3, 1, 10, 0, tzinfo=UTC), session_id="s1",
                  experimenter=["Doe, Jane"], lab="Lab", institution="Inst",
                  experiment_description="tests", keywords=["test"])
    nwb.subject = Subject(subject_id="m1", species=species, sex="U", age="P90D", description="a mouse")
    dev = nwb.create_device(name="Microscope", description="two-photon rig")
    ch = OpticalChannel(name="Green", description="green channel", emission_lambda=510.0)
    plane = nwb.create_imaging_plane(name="ImagingPlane", optical_channel=ch, description="plane", device=dev,
                                     excitation_lambda=920.0, indicator="GCaMP6f", location="VISp")
    rng = np.random.default_rng(0)
    data: Any = rng.integers(0, 1000, size=(frames, 16, 16)).astype(np.int16)
    if compress:
        data = H5DataIO(data, chunks=(1, 16, 16), allow_plugin_filters=True,
                        **dict(hdf5plugin.Blosc(cname="lz4", clevel=5)))
    ts = np.cumsum(rng.uniform(0.030, 0.035, frames))
    nwb.add_acquisition(TwoPhotonSeries(name="TwoPhotonSeries", description="frames", data=data,
                                        imaging_plane=plane, unit="n.a.", timestamps=ts))
    nwb.add_trial_column("contrast", "stimulus contrast")
    for i in range(4):
        nwb.add_trial(start_time=0.2 * i, stop_time=0.2 * i + 0.1, contrast=0.5 * i)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path
