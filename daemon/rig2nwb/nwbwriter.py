"""Writing the NWB file: create it once with pynwb, then append frames through one h5py handle.

Facts this module is built on (measured, see DESIGN.md):
- pynwb rebuilds the whole object tree on every open, so appends go through plain h5py on a
  handle kept open for the session; ``data`` and ``timestamps`` are extended together.
- ``flush()`` after every batch keeps a SIGKILLed file consistent; ``flush()`` does not reach the
  disk, so ``sync()`` (flush + fsync) runs before the ledger counts anything as committed.
- The two datasets can end at different lengths after a crash and frames allocated but never
  written read back as zeros: the ledger's count, not the dataset shape, says what is real.
- The file is created under a temporary name and renamed into place, so a crash during creation
  never leaves a half-built NWB file under the real name.
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import h5py
import hdf5plugin
import numpy as np

from rig2nwb.config import Config

SERIES_PATH = "acquisition/TwoPhotonSeries"
ORIENTATION = (
    "data[t, i, j] is pixel (row i, column j) of TIFF page t, stored bit-identical to the TIFF, "
    "frames in acquisition order. The NWB dimension labels (frames, x, y) therefore mean "
    "(frames, image row, image column) here; masks and images in this file use the same "
    "(row, column) convention."
)


class NwbDamaged(Exception):
    """The NWB file cannot be opened or lacks the series; it must be rebuilt from the TIFFs."""


def compression_args(cfg: Config) -> dict[str, Any]:
    """H5DataIO / h5py keyword arguments for the configured compression."""
    level = cfg.output.compression_level
    match cfg.output.compression:
        case "none":
            return {}
        case "gzip":
            return {"compression": "gzip", "compression_opts": 4 if level is None else level}
        case "lzf":
            return {"compression": "lzf"}
        case "blosc-lz4":
            return _blosc("lz4", 5 if level is None else level)
        case "blosc-zstd":
            return _blosc("zstd", 1 if level is None else level)
    raise AssertionError(cfg.output.compression)  # pragma: no cover - Literal is exhaustive


def _blosc(cname: Literal["lz4", "zstd"], level: int) -> dict[str, Any]:
    blosc = hdf5plugin.Blosc(cname=cname, clevel=level, shuffle=hdf5plugin.Blosc.BITSHUFFLE)
    return {**dict(blosc), "allow_plugin_filters": True}


@dataclass(frozen=True)
class NewFile:
    path: Path
    identifier: str
    subject: str
    session: str
    start_time: datetime
    start_source: str
    frame_shape: tuple[int, int]
    dtype: str


def create_nwb(cfg: Config, spec: NewFile) -> None:
    """Create the NWB file with all metadata and an empty, extendable TwoPhotonSeries."""
    # pynwb is imported here, not at module level: it costs ~1 s and the CLI's quick commands
    # (status, check-config) never need it.
    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.file import Subject
    from pynwb.ophys import OpticalChannel, TwoPhotonSeries

    s, im = cfg.session, cfg.imaging
    nwb = NWBFile(
        session_description=s.description,
        identifier=spec.identifier,
        session_start_time=spec.start_time,
        session_id=spec.session,
        experimenter=list(s.experimenter) or None,
        lab=s.lab or None,
        institution=s.institution or None,
        experiment_description=s.experiment_description or None,
        notes=f"session_start_time taken from {spec.start_source}. Written by rig2nwb.",
        source_script="rig2nwb",
        source_script_file_name="rig2nwb",
    )
    sub = cfg.subject
    nwb.subject = Subject(
        subject_id=spec.subject, species=sub.species, sex=sub.sex, age=sub.age or None,
        genotype=sub.genotype or None, strain=sub.strain or None,
        description=sub.description or None,
    )
    dev = cfg.device
    model = nwb.create_device_model(name=dev.model, manufacturer=dev.manufacturer,
                                    description=dev.description)
    device = nwb.create_device(name=dev.name, description=dev.description, model=model)
    channel = OpticalChannel(name="OpticalChannel", description=im.channel_description,
                             emission_lambda=im.emission_lambda)
    plane_kwargs: dict[str, Any] = {}
    if im.grid_spacing_um:
        plane_kwargs = {"grid_spacing": list(im.grid_spacing_um), "grid_spacing_unit": "micrometers"}
    plane = nwb.create_imaging_plane(
        name="ImagingPlane", optical_channel=channel, imaging_rate=im.frame_rate,
        description=im.plane_description, device=device,
        excitation_lambda=im.excitation_lambda, indicator=im.indicator, location=im.location,
        **plane_kwargs,
    )
    rows, cols = spec.frame_shape
    chunk = min(cfg.append.chunk_frames, cfg.append.batch_frames)
    with warnings.catch_warnings():
        # hdmf warns that plugin filters need plugins to read: documented for users already.
        warnings.filterwarnings("ignore", message=".*may not be available on all installations")
        data = H5DataIO(
            data=np.empty((0, rows, cols), dtype=spec.dtype), maxshape=(None, rows, cols),
            chunks=(chunk, rows, cols), **compression_args(cfg),
        )
    stamps = H5DataIO(data=np.empty((0,), dtype="f8"), maxshape=(None,), chunks=(8192,))
    series = TwoPhotonSeries(
        name="TwoPhotonSeries", imaging_plane=plane, data=data, timestamps=stamps,
        unit="n.a.", description=ORIENTATION, comments=(
            f"timestamps: nominal {im.frame_rate} Hz until measured frame onsets are known"
        ),
    )
    nwb.add_acquisition(series)

    spec.path.parent.mkdir(parents=True, exist_ok=True)
    partial = creating_path(spec.path)
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    with NWBHDF5IO(str(partial), "w") as io:
        io.write(nwb)
    _fsync_path(partial)
    os.replace(partial, spec.path)
    _fsync_path(spec.path.parent)


def creating_path(path: Path) -> Path:
    """Where a new NWB file is built before it is renamed into place (ends in .nwb: pynwb warns
    otherwise; starts with '~' so nobody mistakes it for a finished file)."""
    return path.with_name(f"~{path.stem}.creating.nwb")


def describe_compression(ds: Any) -> str:
    """A person-readable name of a dataset's compression filter."""
    filters = dict(ds._filters) if hasattr(ds, "_filters") else {}
    if str(hdf5plugin.Blosc.filter_id) in filters:
        return "blosc"
    for name in ("gzip", "lzf"):
        if name in filters:
            return name
    return ", ".join(filters) or "none"


def new_identifier() -> str:
    return str(uuid.uuid4())


class SeriesAppender:
    """One open h5py handle on a session's NWB file; the only writer of that file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            # "r+", not "a": a missing file must say so, not be created empty.
            self._f = h5py.File(path, "r+")
        except OSError as exc:
            if exc.errno is not None:
                raise  # missing, locked, no permission...: the file itself may be fine
            raise NwbDamaged(f"{path.name}: cannot be opened as HDF5 ({exc})") from exc
        try:
            self.data = self._f[f"{SERIES_PATH}/data"]
            self.timestamps = self._f[f"{SERIES_PATH}/timestamps"]
        except KeyError as exc:
            self._f.close()  # nothing was written through this handle: closing is safe
            raise NwbDamaged(f"{path.name}: has no {SERIES_PATH} data/timestamps") from exc

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (int(self.data.shape[1]), int(self.data.shape[2]))

    @property
    def dtype(self) -> str:
        return str(self.data.dtype)

    def lengths(self) -> tuple[int, int]:
        return int(self.data.shape[0]), int(self.timestamps.shape[0])

    def trim(self, n: int) -> None:
        """Cut both datasets to ``n`` frames (drops anything the ledger never counted)."""
        self.data.resize(n, axis=0)
        self.timestamps.resize(n, axis=0)

    def write(self, start: int, frames: np.ndarray, stamps: np.ndarray) -> None:
        end = start + frames.shape[0]
        if self.data.shape[0] < end:
            self.data.resize(end, axis=0)
        if self.timestamps.shape[0] < end:
            self.timestamps.resize(end, axis=0)
        self.data[start:end] = frames
        self.timestamps[start:end] = stamps

    def set_timestamps(self, stamps: np.ndarray, note: str) -> None:
        """Replace the timestamps of the first ``len(stamps)`` frames; ``note`` goes into the
        series' comments (which source the times come from)."""
        self.timestamps[: len(stamps)] = stamps
        self._f[SERIES_PATH].attrs["comments"] = note

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.data[start:stop])

    def flush(self) -> None:
        self._f.flush()

    def sync(self) -> None:
        """Flush HDF5's buffers and fsync the file: after this the frames survive power loss."""
        self._f.flush()
        os.fsync(self._f.id.get_vfd_handle())

    def close(self) -> None:
        self._f.close()


def is_lock_error(exc: OSError) -> bool:
    """HDF5's file lock is held by another process (a reader, or a second writer)."""
    text = str(exc).lower()
    return "unable to lock" in text or "resource temporarily unavailable" in text or (
        exc.errno == 11
    )


def _fsync_path(path: Path) -> None:
    # Directories cannot be opened for fsync on Windows; the rename is durable enough there.
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except (PermissionError, IsADirectoryError):
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
