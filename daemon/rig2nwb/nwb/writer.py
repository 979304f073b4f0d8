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
import json
import os
import uuid
import warnings
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import h5py
import hdf5plugin
import numpy as np

from rig2nwb.config.schema import Config, TrialsConfig
from rig2nwb.core.pagelayout import PageLayout, SeriesSpec
from rig2nwb.errors import NwbDamaged, NwbExists
from rig2nwb.fsutil import fsync_path
from rig2nwb.nwb import chunks as chunkwriter
from rig2nwb.rig.labfiles import TrialTable
from rig2nwb.rig.scanimage import ScanImageInfo
from rig2nwb.rig.sidecars import SessionMetadata

ORIENTATION = (
    "data[t, i, j] is pixel (row i, column j) of TIFF page t, stored bit-identical to the TIFF, "
    "frames in acquisition order. The NWB dimension labels (frames, x, y) therefore mean "
    "(frames, image row, image column) here; masks and images in this file use the same "
    "(row, column) convention."
)


def existing_identifier(path: Path) -> str | None:
    """The NWB identifier of the file at ``path`` ("" for a file that is not a readable NWB
    file), or None when there is no file at all."""
    if not os.path.lexists(path):
        return None
    try:
        with h5py.File(path, "r", locking=False) as f:
            value = f.get("identifier")
            if value is None:
                return ""
            raw = value[()]
            return raw.decode() if isinstance(raw, bytes) else str(raw)
    except (OSError, ValueError, UnicodeDecodeError):
        return ""


DEFAULT_GZIP_LEVEL = 1  # with shuffle: the best ratio and the fastest (docs/conversion.md, "Compression")
STANDARD: dict[str, Any] = {"compression": "gzip", "compression_opts": DEFAULT_GZIP_LEVEL,
                            "shuffle": True}
TIME_CHUNK = 8192  # timestamps per chunk (64 KB)


def compression_args(cfg: Config) -> dict[str, Any]:
    """H5DataIO / h5py keyword arguments for the configured compression of the large datasets
    (frames, suite2p traces)."""
    level = cfg.output.compression_level
    match cfg.output.compression:
        case "none":
            return {}
        case "gzip":
            return {"compression": "gzip",
                    "compression_opts": DEFAULT_GZIP_LEVEL if level is None else level,
                    "shuffle": cfg.output.shuffle}
        case "lzf":
            return {"compression": "lzf"}
        case "blosc-lz4":
            return _blosc("lz4", 5 if level is None else level)
        case "blosc-zstd":
            return _blosc("zstd", 1 if level is None else level)
    raise AssertionError(cfg.output.compression)  # pragma: no cover - Literal is exhaustive


def standard_args(cfg: Config) -> dict[str, Any]:
    """Keyword arguments for every other dataset rig2nwb writes (timestamps, pixel masks,
    images, offsets): the filters built into every HDF5 (shuffle + deflate), also when the
    frames are blosc by choice, so that those open in any reader; none when compression is
    off."""
    if cfg.output.compression == "none":
        return {}
    level = cfg.output.compression_level if cfg.output.compression == "gzip" else None
    return {"compression": "gzip",
            "compression_opts": DEFAULT_GZIP_LEVEL if level is None else level, "shuffle": True}


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
    layout: PageLayout
    meta: SessionMetadata
    scanimage: ScanImageInfo | None = None
    header_file: str = ""  # name of the TIFF whose ScanImage header is stored


def create_nwb(cfg: Config, spec: NewFile, *, replace_own: bool = False) -> None:
    """Create the NWB file with all metadata and one empty, extendable TwoPhotonSeries per plane
    and channel (see pagelayout). A file already under the name is never replaced (NwbExists)
    unless ``replace_own``: the caller checked it is this session's own unfinished creation."""
    # pynwb is imported here, not at module level: it costs ~1 s and the CLI's quick commands
    # (status, check-config) never need it.
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.file import Subject

    s, sub, dev = spec.meta.session, spec.meta.subject, spec.meta.device
    notes = f"session_start_time taken from {spec.start_source}. Written by rig2nwb."
    if spec.scanimage is not None:
        si = spec.scanimage
        header = si.header_text if si.version.startswith("3") else json.dumps(si.header, indent=1)
        notes += (f"\n\nScanImage {si.version} header of {spec.header_file} (frame-invariant "
                  f"metadata of the acquisition):\n{header}")
    nwb = NWBFile(
        session_description=s.description,
        identifier=spec.identifier,
        session_start_time=spec.start_time,
        session_id=spec.session,
        experimenter=list(s.experimenter) or None,
        lab=s.lab or None,
        institution=s.institution or None,
        experiment_description=s.experiment_description or None,
        keywords=list(s.keywords) or None,
        protocol=s.protocol or None,
        related_publications=list(s.related_publications) or None,
        notes=notes,
        source_script="rig2nwb",
        source_script_file_name="rig2nwb",
    )
    nwb.subject = Subject(
        subject_id=spec.subject, species=sub.species, sex=sub.sex, age=sub.age or None,
        date_of_birth=_aware(sub.date_of_birth, cfg) if sub.date_of_birth else None,
        weight=sub.weight or None, genotype=sub.genotype or None, strain=sub.strain or None,
        description=sub.description or None,
    )
    description = dev.description
    if spec.scanimage is not None:
        description += f"; acquisition software: ScanImage {spec.scanimage.version}"
    model = nwb.create_device_model(name=dev.model, manufacturer=dev.manufacturer,
                                    description=description)
    device = nwb.create_device(name=dev.name, description=description, model=model)
    for series in spec.layout.series:
        _add_series(nwb, cfg, spec, series, device)

    spec.path.parent.mkdir(parents=True, exist_ok=True)
    partial = creating_path(spec.path)
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    with NWBHDF5IO(str(partial), "w") as io:
        io.write(nwb)
    fsync_path(partial)
    if replace_own:
        os.replace(partial, spec.path)
    else:
        _publish_new(partial, spec.path)
    fsync_path(spec.path.parent)


def _publish_new(partial: Path, path: Path) -> None:
    """Rename ``partial`` to ``path`` only if nothing is there: a hard link fails when the name
    is taken (where links are not supported, as on some shares, a check just before the rename
    leaves a window of microseconds)."""
    try:
        os.link(partial, path)
    except FileExistsError:
        partial.unlink()
        raise NwbExists(f"{path.name} appeared in {path.parent} while it was being created; "
                        "it is not replaced") from None
    except OSError:
        if os.path.lexists(path):
            partial.unlink()
            raise NwbExists(f"{path.name} already exists in {path.parent}; it is not "
                            "replaced") from None
        os.replace(partial, path)
        return
    partial.unlink()


def _add_series(nwb: Any, cfg: Config, spec: NewFile, series: SeriesSpec, device: Any) -> None:
    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from pynwb.ophys import OpticalChannel, TwoPhotonSeries

    im, layout, si = spec.meta.imaging, spec.layout, spec.scanimage
    multi = len(layout.series) > 1
    info = im.channel_info.get(str(series.channel))
    channel = OpticalChannel(
        name=series.channel_name,
        description=(info.description if info and info.description else im.channel_description
                     + (f" (channel {series.channel})" if layout.n_channels > 1 else "")),
        emission_lambda=info.emission_lambda if info and info.emission_lambda else im.emission_lambda)
    plane_kwargs: dict[str, Any] = {}
    pixel = si.pixel_size_um if si is not None and si.pixel_size_um else (
        tuple(im.grid_spacing_um) if im.grid_spacing_um else None)
    if pixel:
        plane_kwargs.update(grid_spacing=list(pixel), grid_spacing_unit="micrometers")
    depths = si.z_positions_um if si is not None and si.z_positions_um else tuple(im.plane_depths_um)
    z = depths[series.plane] if series.plane < len(depths) else None
    if z is not None:
        plane_kwargs.update(origin_coords=[0.0, 0.0, float(z)], origin_coords_unit="micrometers")
    where = [f"plane {series.plane} of {layout.planes}"] if layout.planes > 1 else []
    if z is not None:
        where.append(f"z = {z:g} um" + (" (ScanImage stage/fastZ position)" if si else ""))
    if layout.n_channels > 1:
        where.append(f"channel {series.channel}")
    plane = nwb.create_imaging_plane(
        name=series.plane_name, optical_channel=channel, imaging_rate=layout.series_rate,
        description=im.plane_description + (f" ({', '.join(where)})" if where else ""),
        device=device, excitation_lambda=im.excitation_lambda,
        indicator=info.indicator if info and info.indicator else im.indicator,
        location=im.location, **plane_kwargs)
    rows, cols = spec.frame_shape
    chunk = min(cfg.append.chunk_frames, cfg.append.batch_frames)
    with warnings.catch_warnings():
        # hdmf warns that plugin filters need plugins to read: documented for users already.
        warnings.filterwarnings("ignore", message=".*may not be available on all installations")
        data = H5DataIO(
            data=np.empty((0, rows, cols), dtype=spec.dtype), maxshape=(None, rows, cols),
            chunks=(chunk, rows, cols), **compression_args(cfg),
        )
    stamps = H5DataIO(data=np.empty((0,), dtype="f8"), maxshape=(None,), chunks=(TIME_CHUNK,),
                      **standard_args(cfg))
    extra: dict[str, Any] = {}
    if si is not None:
        if si.line_period_s:
            extra["scan_line_rate"] = 1.0 / si.line_period_s
        if pixel:
            extra["field_of_view"] = [rows * pixel[0] * 1e-6, cols * pixel[1] * 1e-6]
        if series.channel - 1 < len(si.pmt_gains):
            extra["pmt_gain"] = float(si.pmt_gains[series.channel - 1])
    text = ORIENTATION
    if multi:
        text += (f" This series holds {', '.join(where)} of an acquisition of "
                 f"{layout.describe()}; pages were de-interleaved into one series per plane and "
                 "channel.")
    elif layout.flyback_frames:
        text += f" Flyback frames ({layout.flyback_frames} per volume) were dropped."
    tps = TwoPhotonSeries(
        name=series.name, imaging_plane=plane, data=data, timestamps=stamps,
        unit="n.a.", description=text, comments=(
            f"timestamps: nominal {layout.series_rate:.6g} Hz until measured frame times are known"
        ), **extra,
    )
    nwb.add_acquisition(tps)


def _aware(d: date, cfg: Config) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=cfg.tz)


def creating_path(path: Path) -> Path:
    """Where a new NWB file is built before it is renamed into place (ends in .nwb: pynwb warns
    otherwise; starts with '~' so nobody mistakes it for a finished file)."""
    return path.with_name(f"~{path.stem}.creating.nwb")


def describe_compression(ds: Any) -> str:
    """A person-readable name of a dataset's compression filter."""
    filters = dict(ds._filters) if hasattr(ds, "_filters") else {}
    if str(hdf5plugin.Blosc.filter_id) in filters:
        return "blosc"
    if "gzip" in filters:
        level = filters["gzip"]
        shuffle = " + shuffle" if "shuffle" in filters else ""
        return f"gzip {level}{shuffle}" if isinstance(level, int) else f"gzip{shuffle}"
    if "lzf" in filters:
        return "lzf"
    return ", ".join(filters) or "none"


def new_identifier() -> str:
    return str(uuid.uuid4())


class SessionAppender:
    """One open h5py handle on a session's NWB file; the only writer of that file.

    Positions are pages of the session's page stream (see pagelayout): the appender splits each
    batch of pages into the series they belong to."""

    def __init__(self, path: Path, layout: PageLayout, compress_threads: int = 1,
                 stamp_args: dict[str, Any] | None = None) -> None:
        self.path = path
        self.layout = layout
        # filters of timestamps datasets made again (restore_timestamps): the file's rule
        self.stamp_args = STANDARD if stamp_args is None else stamp_args
        try:
            # "r+", not "a": a missing file must say so, not be created empty.
            self._f = h5py.File(path, "r+")
        except OSError as exc:
            if exc.errno is not None:
                raise  # missing, locked, no permission...: the file itself may be fine
            raise NwbDamaged(f"{path.name}: cannot be opened as HDF5 ({exc})") from exc
        try:
            self.groups = [self._f[s.path] for s in layout.series]
            self.data = [g["data"] for g in self.groups]
            for g in self.groups:
                if "timestamps" not in g and "starting_time" not in g:
                    raise KeyError("timestamps")
            # gzip series: chunks compressed on several cores and written directly.
            self._direct = [chunkwriter.for_dataset(d, compress_threads) for d in self.data]
        except KeyError as exc:
            self._f.close()  # nothing was written through this handle: closing is safe
            names = ", ".join(s.name for s in layout.series)
            raise NwbDamaged(f"{path.name}: lacks the data or timestamps of {names}") from exc

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (int(self.data[0].shape[1]), int(self.data[0].shape[2]))

    def _stamps(self, s: int) -> Any:
        return self.groups[s]["timestamps"]

    def lengths(self) -> list[tuple[int, int]]:
        """(data frames, timestamps) of each series; a series in rate form counts its data."""
        out = []
        for s, g in enumerate(self.groups):
            n = int(self.data[s].shape[0])
            out.append((n, int(g["timestamps"].shape[0]) if "timestamps" in g else n))
        return out

    def pages_held(self) -> int:
        """The longest page stream every series can vouch for (for repair after a crash)."""
        held = []
        for s, (n_data, n_ts) in enumerate(self.lengths()):
            held.append(self.layout.page_of(s, min(n_data, n_ts)))
        return min(held)

    def expected(self, pages: int) -> list[int]:
        return [self.layout.count(s, pages) for s in range(len(self.groups))]

    def trim(self, pages: int) -> None:
        """Cut every series to its frames among the first ``pages`` pages of the stream."""
        for s, n in enumerate(self.expected(pages)):
            self.data[s].resize(n, axis=0)
            if "timestamps" in self.groups[s]:
                self._stamps(s).resize(n, axis=0)

    def write(self, start: int, pages: np.ndarray, times: np.ndarray) -> None:
        """Pages ``start ..`` of the stream, with their times (seconds), into their series."""
        for s, k0, pos in self.layout.split(start, pages.shape[0]):
            data, stamps = self.data[s], self._stamps(s)
            end = k0 + pos.size
            if data.shape[0] < end:
                data.resize(end, axis=0)
            if stamps.shape[0] < end:
                stamps.resize(end, axis=0)
            # One series: no copy.
            self._put(s, k0, pages if pos.size == pages.shape[0] else pages[pos])
            stamps[k0:end] = times[pos]

    def _put(self, s: int, k0: int, frames: np.ndarray) -> None:
        data, direct, end = self.data[s], self._direct[s], k0 + frames.shape[0]
        if direct is None:
            data[k0:end] = frames
            return
        first, last = direct.aligned(k0, end)
        if first >= last:  # no whole chunk: HDF5 merges the partial one as usual
            data[k0:end] = frames
            return
        if k0 < first:
            data[k0:first] = frames[: first - k0]
        direct.write(first, frames[first - k0: last - k0])
        if last < end:
            data[last:end] = frames[last - k0:]

    def read_page(self, page: int) -> np.ndarray | None:
        """The stored frame of one stream page (None for a flyback page)."""
        where = self.layout.locate(page)
        if where is None:
            return None
        s, k = where
        return np.asarray(self.data[s][k]) if k < self.data[s].shape[0] else None

    def timestamps(self, s: int) -> np.ndarray:
        g = self.groups[s]
        if "timestamps" in g:
            return np.asarray(g["timestamps"][:])
        start = g["starting_time"]
        n = int(self.data[s].shape[0])
        return float(start[()]) + np.arange(n) / float(start.attrs["rate"])

    def set_timestamps(self, s: int, stamps: np.ndarray, note: str) -> None:
        """Replace the timestamps of series ``s`` (as many as it has frames); ``note`` goes into
        its comments (which source the times come from)."""
        self.restore_timestamps()
        self._stamps(s)[: len(stamps)] = stamps
        self.groups[s].attrs["comments"] = note

    def use_rate(self, s: int, start: float, rate: float, note: str) -> None:
        """Store series ``s``'s times as starting_time + rate (NWB's form for regular sampling).
        The starting_time is written before the timestamps are removed, so a crash in between
        leaves a file that restore_timestamps() can still open and fix."""
        g = self.groups[s]
        if "starting_time" in g:
            del g["starting_time"]
        st = g.create_dataset("starting_time", data=np.float64(start))
        st.attrs["rate"] = np.float32(rate)
        st.attrs["unit"] = "seconds"
        if "timestamps" in g:
            del g["timestamps"]
        g.attrs["comments"] = note

    def restore_timestamps(self) -> None:
        """Bring back timestamps datasets for series stored in rate form, so frames can be
        appended again (a finished session that got a new file, a crash during finalize)."""
        for s, g in enumerate(self.groups):
            if "timestamps" in g:
                if "starting_time" in g:
                    del g["starting_time"]  # a crash between creating one and deleting the other
                continue
            values = self.timestamps(s)
            ds = g.create_dataset("timestamps", data=values, maxshape=(None,),
                                  chunks=(TIME_CHUNK,), **self.stamp_args)
            ds.attrs["interval"] = np.int32(1)
            ds.attrs["unit"] = "seconds"
            del g["starting_time"]

    def set_imaging_rate(self, s: int, rate: float) -> None:
        """Correct the ImagingPlane's imaging_rate of series ``s`` (a slow stack's real rate
        is only known from its frame times)."""
        self._f[f"general/optophysiology/{self.layout.series[s].plane_name}/imaging_rate"][()] = rate

    def drop_group(self, path: str) -> bool:
        """Remove a group written by an earlier finalize (it is written again)."""
        if path in self._f:
            del self._f[path]
            return True
        return False

    def flush(self) -> None:
        self._f.flush()

    def sync(self) -> None:
        """Flush HDF5's buffers and fsync the file: after this the frames survive power loss."""
        self._f.flush()
        os.fsync(self._f.id.get_vfd_handle())

    def close(self) -> None:
        self._f.close()


def write_trials(path: Path, table: TrialTable, cfg: TrialsConfig, source: str) -> None:
    """Add the trials table with pynwb (the file must not be open elsewhere in this process)."""
    from pynwb import NWBHDF5IO
    from pynwb.epoch import TimeIntervals

    trials = TimeIntervals(name="trials", description=(
        f"Stimulus trials from {source}: start_time = stim_on - {cfg.pad_before_ms:g} ms "
        f"(not before 0, the session start), stop_time = stim_off + {cfg.pad_after_ms:g} ms."))
    trials.add_column("stim_on", "stimulus onset, in seconds on the session clock")
    trials.add_column("stim_off", "stimulus offset (stim_on + stim_dur), in seconds")
    for name in table.columns:
        info = cfg.column_info.get(name)
        text = info.description if info else f"column {name!r} of the trial file"
        trials.add_column(name, text + (f", in {info.unit}" if info and info.unit else ""))
    for i in range(len(table)):
        trials.add_interval(start_time=float(table.start_time[i]),
                            stop_time=float(table.stop_time[i]), stim_on=float(table.stim_on[i]),
                            stim_off=float(table.stim_off[i]),
                            **{k: float(v[i]) for k, v in table.columns.items()})
    with NWBHDF5IO(str(path), "a") as io:
        nwb = io.read()
        nwb.trials = trials
        io.write(nwb)


def is_lock_error(exc: OSError) -> bool:
    """HDF5's file lock is held by another process (a reader, or a second writer)."""
    text = str(exc).lower()
    return "unable to lock" in text or "resource temporarily unavailable" in text or (
        exc.errno == 11
    )
