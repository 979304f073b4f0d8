"""Read one suite2p output folder (the one holding plane0/, plane1/, ... and maybe combined/).

Files are found by the folder structure only. suite2p stores absolute paths in ops.npy/db.npy
(save_path, reg_file, file_list, ...), but they name the machine and mount that ran suite2p, so
they are never used to locate anything.

Two layouts exist in labs, and each plane folder is read as whichever it holds:

- 0.14 style: ``ops.npy`` is one flat dict with everything (Ly, Lx, fs, neucoeff, meanImg, Vcorr,
  yrange, yoff, ...).
- 1.x style: ``db.npy`` (data facts: Ly, Lx, nframes, nchannels, functional_chan, file_list and
  a pre-registration meanImg), ``settings.npy`` (nested settings: settings["extraction"]
  ["neuropil_coefficient"], fs, tau, diameter, version), ``reg_outputs.npy`` (registered meanImg,
  meanImgE, meanImg_chan2, yrange/xrange, yoff/xoff/corrXY, yoff1/xoff1/corrXY1) and
  ``detect_outputs.npy`` (Vcorr and max_proj on the crop). A merged ops.npy is optional; when
  present it is read last, for what the four files lack (date_proc). db.npy and settings.npy are
  also saved next to the plane folders and count when the plane folder lacks them.

Traces are memory-mapped, never read whole: a plane of 1000 ROIs x 50,000 frames is 200 MB per
trace file, and NaN counts are taken in blocks of ROIs.
"""

from __future__ import annotations

import datetime
import math
import os
import stat as stat_mode
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from rig2nwb.errors import Suite2pProblem
from rig2nwb.suite2p.listing import (
    OPS_SETS,
    REQUIRED_FILES,
    SHARED_OPS_FILES,
    RefusedFile,
    RigFiles,
    missing_files,
    ops_files,
    rig_files,
)

IMAGE_KEYS = ("meanImg", "meanImgE", "Vcorr", "max_proj", "meanImg_chan2")
CROPPED_IMAGES = ("Vcorr", "max_proj")  # suite2p computes these on the crop yrange/xrange
OFFSETS_1D = ("yoff", "xoff", "corrXY")
OFFSETS_2D = ("yoff1", "xoff1", "corrXY1")  # (T, nblocks), nonrigid registration

_SCAN_VALUES = 1 << 21  # values per block of the NaN scan: 8 MB of float32 (+ 2 masks)

# Facts for Suite2pPlane.settings: output name -> where to look (a key of the flat 0.14 ops, or
# a (section, key) of 1.x's nested settings), first found wins.
_SETTINGS: dict[str, tuple[str | tuple[str, str], ...]] = {
    "suite2p_version": ("version", "suite2p_version"),
    "date_proc": ("date_proc",),
    "fs": ("fs",),
    "tau": ("tau",),
    "diameter": ("diameter",),
    "neuropil_coefficient": (("extraction", "neuropil_coefficient"), "neucoeff"),
    "baseline": (("dcnv_preprocess", "baseline"), "baseline"),
    "win_baseline": (("dcnv_preprocess", "win_baseline"), "win_baseline"),
    "sig_baseline": (("dcnv_preprocess", "sig_baseline"), "sig_baseline"),
    "prctile_baseline": (("dcnv_preprocess", "prctile_baseline"), "prctile_baseline"),
    "nonrigid": (("registration", "nonrigid"), "nonrigid"),
    "detection_algorithm": (("detection", "algorithm"),),
    "sparse_mode": ("sparse_mode",),
    "anatomical_only": ("anatomical_only",),
    "nplanes": ("nplanes",),
    "nchannels": ("nchannels",),
    "functional_chan": ("functional_chan",),
}


@dataclass
class Suite2pPlane:
    index: int
    folder: Path
    style: str                    # "0.14" or "1.x"
    Ly: int
    Lx: int
    nframes: int                  # = F.shape[1]
    F: np.ndarray                 # (nROI, T), memory-mapped read-only
    Fneu: np.ndarray
    spks: np.ndarray
    F_chan2: np.ndarray | None
    Fneu_chan2: np.ndarray | None
    iscell: np.ndarray            # (nROI, 2): flag, probability
    redcell: np.ndarray | None    # (nROI, 2)
    ypix: list[np.ndarray]        # per ROI: row indices (int64)
    xpix: list[np.ndarray]        # per ROI: column indices (int64)
    lam: list[np.ndarray]         # per ROI: weights (float32)
    images: dict[str, np.ndarray]  # float32 (Ly, Lx); cropped images placed in the crop, NaN elsewhere
    crop: tuple[int, int, int, int] | None  # (y0, y1, x0, x1) from yrange/xrange
    offsets: dict[str, np.ndarray]  # yoff, xoff, corrXY (T,); yoff1, xoff1, corrXY1 (T, nblocks)
    fs: float | None
    neuropil_coefficient: float | None
    nchannels: int = 1
    functional_chan: int = 1      # 1-based
    settings: dict[str, Any] = field(default_factory=dict)  # flat, JSON-able facts for descriptions
    warnings: list[str] = field(default_factory=list)       # non-fatal oddities, each naming its file


# --- loading --------------------------------------------------------------------------------


class _Facts:
    """suite2p's dicts in priority order; a lookup returns the first value found and its file."""

    def __init__(self, sources: list[tuple[Path, dict[str, Any]]]) -> None:
        self.sources = sources

    def find(self, *keys: str | tuple[str, str]) -> tuple[Any, Path] | None:
        for path, d in self.sources:
            for key in keys:
                if isinstance(key, tuple):
                    section = d.get(key[0])
                    value = section.get(key[1]) if isinstance(section, dict) else None
                else:
                    value = d.get(key)
                if value is not None:
                    return value, path
        return None

    def names(self) -> str:
        return ", ".join(p.name for p, _ in self.sources)


def _read_facts(plane_dir: Path, warnings: list[str], reader: RigFiles) -> tuple[str, _Facts]:
    files = ops_files(plane_dir, reader)
    if files is None:
        raise Suite2pProblem(plane_dir / "ops.npy", f"missing: the plane folder has neither {OPS_SETS[0][0]} "
                                                    f"nor all of {', '.join(OPS_SETS[1])}")
    sources = [(path, reader.load_dict(path)) for path in files.values()]
    if "ops.npy" in files:
        ops = sources[0][1]
        # 1.x writes a merged ops.npy with its nested settings sections; 0.14's is flat.
        style = "1.x" if isinstance(ops.get("extraction"), dict) or "version" in ops else "0.14"
        extra = [plane_dir.parent / name for name in SHARED_OPS_FILES]
    else:
        style = "1.x"
        # Registered images in reg_outputs.npy win over db.npy's pre-registration meanImg.
        order = ("reg_outputs.npy", "detect_outputs.npy", "db.npy", "settings.npy")
        sources.sort(key=lambda s: order.index(s[0].name))
        extra = [plane_dir / "ops.npy"] + [plane_dir.parent / n for n in SHARED_OPS_FILES
                                           if files[n].parent == plane_dir]
    # Fallbacks only: a damaged one is a warning (an unsafe one is still refused loudly).
    for path in extra:
        if not reader.is_file(path):
            continue
        try:
            sources.append((path, reader.load_dict(path)))
        except RefusedFile:
            raise
        except Suite2pProblem as e:
            warnings.append(f"{e} (not used)")
    return style, _Facts(sources)


def _number(found: tuple[Any, Path] | None, what: str, warnings: list[str]) -> float | None:
    if found is None:
        return None
    value, path = found
    try:
        number = float(np.asarray(value).item())
    except (TypeError, ValueError):
        warnings.append(f"{path}: {what} is {value!r}, not a number (ignored)")
        return None
    if not math.isfinite(number):
        warnings.append(f"{path}: {what} is {number} (ignored)")
        return None
    return number


def _size(facts: _Facts, key: str, images_shape: tuple[int, ...] | None, axis: int,
          plane_dir: Path) -> int:
    found = facts.find(key)
    if found is None:
        if images_shape is None:
            raise Suite2pProblem(plane_dir, f"the frame size is unknown: no {key} in {facts.names()} and no "
                                            "meanImg to take it from")
        return images_shape[axis]
    value, path = found
    try:
        size = int(np.asarray(value).item())
    except (TypeError, ValueError):
        raise Suite2pProblem(path, f"{key} is {value!r}, not a frame size") from None
    if size <= 0 or size != np.asarray(value).item():
        raise Suite2pProblem(path, f"{key} is {value!r}, not a frame size")
    return size


def _traces(path: Path, reader: RigFiles, *, required: bool) -> np.ndarray | None:
    if not reader.is_file(path):
        if required:
            raise Suite2pProblem(path, "missing (suite2p may still be running)")
        return None
    arr = reader.load(path, mmap=True)
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise Suite2pProblem(path, f"holds a {arr.dtype} array of shape {arr.shape}, not (ROIs, frames) "
                                   "numbers")
    return arr


def read_rows(arr: np.ndarray, a: int, b: int) -> np.ndarray:
    """Rows a:b of a (ROI, time) array. For a memory-mapped .npy they are read with plain file
    reads: touching the map would keep every page read resident in this process (its RSS
    grows by the whole file), while a read leaves them to the page cache."""
    filename = getattr(arr, "filename", None)
    if isinstance(arr, np.memmap) and filename and arr.flags.c_contiguous and arr.ndim == 2:
        fh = _reopen_same(filename, getattr(arr, "rig_file", None))
        if fh is not None:
            row_bytes = arr.shape[1] * arr.dtype.itemsize
            with fh:
                fh.seek(arr.offset + a * row_bytes)
                out = np.fromfile(fh, dtype=arr.dtype, count=(b - a) * arr.shape[1])
            return out.reshape(b - a, arr.shape[1])
    return np.asarray(arr[a:b])


def _reopen_same(filename: str, origin: tuple[os.stat_result, int] | None) -> BinaryIO | None:
    """The mapped file opened again by name, only if it is still the very file that was mapped
    (no link followed, no FIFO waited on, same device and inode); None otherwise, and the caller
    reads through the map."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(
        os, "O_BINARY", 0)
    try:
        fd = os.open(filename, flags)
    except OSError:
        return None
    st = os.fstat(fd)
    if origin is None or (st.st_dev, st.st_ino) != (origin[0].st_dev, origin[0].st_ino) or (
            not stat_mode.S_ISREG(st.st_mode)):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def _nonfinite_warning(path: Path, arr: np.ndarray) -> str | None:
    """Count NaN and infinite values block by block, so only one block is ever in memory."""
    if arr.dtype.kind != "f" or arr.size == 0:
        return None
    rows = max(1, _SCAN_VALUES // max(1, arr.shape[1]))
    nans = infs = bad_rois = 0
    for start in range(0, arr.shape[0], rows):
        block = read_rows(arr, start, min(start + rows, arr.shape[0]))
        isnan = np.isnan(block)
        isinf = np.isinf(block)
        nans += int(isnan.sum())
        infs += int(isinf.sum())
        bad_rois += int(np.count_nonzero((isnan | isinf).any(axis=1)))
    if nans == 0 and infs == 0:
        return None
    return (f"{path}: {nans} NaN and {infs} infinite values, in {bad_rois} of {arr.shape[0]} ROIs "
            "(kept as they are)")


def _pairs(path: Path, n_rois: int, reader: RigFiles, *, required: bool) -> np.ndarray | None:
    """iscell.npy / redcell.npy: (nROI, 2) flag and probability."""
    if not reader.is_file(path):
        if required:
            raise Suite2pProblem(path, "missing (suite2p may still be running)")
        return None
    arr = reader.load(path)
    if arr.shape != (n_rois, 2) or arr.dtype.kind not in "fiub":
        raise Suite2pProblem(path, f"holds a {arr.dtype} array of shape {arr.shape}, expected ({n_rois}, 2) "
                                   f"for the {n_rois} ROIs of F.npy")
    return arr


def _pixels(path: Path, roi: int, key: str, value: Any) -> np.ndarray:
    arr = np.asarray(value).reshape(-1)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f" and bool(np.all(np.isfinite(arr))) and bool(np.all(arr == np.round(arr))):
        return arr.astype(np.int64)
    raise Suite2pProblem(path, f"ROI {roi}: {key} holds {arr.dtype} values, not pixel indices")


# Bytes each pixel-mask entry costs while the masks are built and written (y, x as int64,
# weight as float32, and the compound row hdmf writes): what the memory budget is checked with.
MASK_ENTRY_BYTES = 40


def _masks(path: Path, n_rois: int, Ly: int, Lx: int, warnings: list[str], reader: RigFiles,
           budget: int) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    stat = reader.load(path)
    if stat.ndim != 1 or len(stat) != n_rois:
        raise Suite2pProblem(path, f"holds {stat.shape[0] if stat.ndim else 0} ROIs (shape {stat.shape}) but "
                                   f"F.npy has {n_rois}")
    _check_mask_sizes(path, stat, Ly, Lx, budget)
    ypix: list[np.ndarray] = []
    xpix: list[np.ndarray] = []
    lam: list[np.ndarray] = []
    empty = []
    for i, roi in enumerate(stat):
        if not isinstance(roi, dict) or roi.get("ypix") is None or roi.get("xpix") is None:
            raise Suite2pProblem(path, f"ROI {i} has no ypix/xpix")
        y = _pixels(path, i, "ypix", roi["ypix"])
        x = _pixels(path, i, "xpix", roi["xpix"])
        if len(y) != len(x):
            raise Suite2pProblem(path, f"ROI {i} has {len(y)} ypix but {len(x)} xpix")
        w = np.ones(len(y), np.float32) if roi.get("lam") is None else \
            np.asarray(roi["lam"], dtype=np.float32).reshape(-1)
        if len(w) != len(y):
            raise Suite2pProblem(path, f"ROI {i} has {len(y)} pixels but {len(w)} lam weights")
        outside = (y < 0) | (y >= Ly) | (x < 0) | (x >= Lx)
        if outside.any():
            k = int(np.argmax(outside))
            raise Suite2pProblem(path, f"ROI {i} has pixel (y={y[k]}, x={x[k]}) outside the {Ly} x {Lx} "
                                       f"frame (rows 0..{Ly - 1}, columns 0..{Lx - 1})")
        if len(y) == 0:
            empty.append(i)
        ypix.append(y)
        xpix.append(x)
        lam.append(w)
    if empty:
        warnings.append(f"{path}: {len(empty)} ROI(s) without pixels: {empty[:10]}")
    return ypix, xpix, lam


def _crop(facts: _Facts, Ly: int, Lx: int, warnings: list[str]) -> tuple[int, int, int, int] | None:
    ys, xs = facts.find("yrange"), facts.find("xrange")
    if ys is None or xs is None:
        return None
    try:
        # suite2p itself indexes [yrange[0]:yrange[-1]].
        y0, y1 = (int(np.asarray(ys[0]).reshape(-1)[i]) for i in (0, -1))
        x0, x1 = (int(np.asarray(xs[0]).reshape(-1)[i]) for i in (0, -1))
    except (TypeError, ValueError, IndexError):
        warnings.append(f"{ys[1]}: yrange/xrange {ys[0]!r}/{xs[0]!r} are not ranges (crop unknown)")
        return None
    if not (0 <= y0 < y1 <= Ly and 0 <= x0 < x1 <= Lx):
        warnings.append(f"{ys[1]}: crop yrange={[y0, y1]}, xrange={[x0, x1]} is outside the {Ly} x {Lx} "
                        "frame (crop unknown)")
        return None
    return y0, y1, x0, x1


def _images(facts: _Facts, Ly: int, Lx: int, crop: tuple[int, int, int, int] | None,
            nchannels: int, plane_dir: Path, warnings: list[str]) -> dict[str, np.ndarray]:
    images: dict[str, np.ndarray] = {}
    crop_shape = (crop[1] - crop[0], crop[3] - crop[2]) if crop is not None else None
    for key in IMAGE_KEYS:
        found = facts.find(key)
        if found is None:
            if key != "meanImg_chan2" or nchannels > 1:
                warnings.append(f"{plane_dir}: no {key} in {facts.names()}")
            continue
        value, path = found
        img = np.asarray(value)
        if img.ndim != 2 or img.dtype.kind not in "fiub":
            warnings.append(f"{path}: {key} is a {img.dtype} array of shape {img.shape}, not an image "
                            "(left out)")
            continue
        if img.shape == (Ly, Lx):
            images[key] = img.astype(np.float32)
        elif key in CROPPED_IMAGES and crop is not None and img.shape == crop_shape:
            full = np.full((Ly, Lx), np.nan, dtype=np.float32)
            full[crop[0]:crop[1], crop[2]:crop[3]] = img
            images[key] = full
        else:
            crop_note = f" or the crop's {crop[1] - crop[0]} x {crop[3] - crop[2]}" \
                if key in CROPPED_IMAGES and crop is not None else ""
            warnings.append(f"{path}: {key} is {img.shape[0]} x {img.shape[1]}, not the frame's {Ly} x {Lx}"
                            f"{crop_note} (left out)")
    return images


def _offsets(facts: _Facts, nframes: int, warnings: list[str]) -> dict[str, np.ndarray]:
    offsets: dict[str, np.ndarray] = {}
    for key in OFFSETS_1D + OFFSETS_2D:
        found = facts.find(key)
        if found is None:
            continue
        value, path = found
        arr = np.asarray(value)
        ndim = 1 if key in OFFSETS_1D else 2
        if arr.ndim != ndim or arr.shape[0] != nframes or arr.dtype.kind not in "fiu":
            warnings.append(f"{path}: {key} has shape {arr.shape} ({arr.dtype}), expected {nframes} frames "
                            f"as in F.npy{'' if ndim == 1 else ' x blocks'} (left out)")
            continue
        offsets[key] = arr
    return offsets


def _jsonable(value: Any) -> Any:
    """A JSON-friendly copy of a small setting, or None when it is not one."""
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        value = value.item()
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        value = value.reshape(-1).tolist() if value.size <= 16 else None
    if isinstance(value, list | tuple) and len(value) <= 16:
        items = [_jsonable(v) for v in value]
        return items if all(v is not None for v in items) else None
    return None


def _settings(facts: _Facts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, keys in _SETTINGS.items():
        found = facts.find(*keys)
        if found is not None and (value := _jsonable(found[0])) is not None:
            out[name] = value
    return out


def _count(facts: _Facts, key: str, default: int, warnings: list[str]) -> int:
    found = facts.find(key)
    number = _number(found, key, warnings)
    if found is None or number is None:
        return default
    if number < 1 or number != int(number):
        warnings.append(f"{found[1]}: {key} is {number:g}, not a count (using {default})")
        return default
    return int(number)


def _check_mask_sizes(path: Path, stat: np.ndarray, Ly: int, Lx: int, budget: int) -> None:
    """Count the pixel-mask entries before anything is built from them: an ROI cannot have more
    pixels than the frame, and all of them together must fit the memory budget (a 12 MB
    stat.npy whose 2,000 ROIs share one pickled 1M-pixel array would need 22 GiB)."""
    area = Ly * Lx
    total = 0
    for i, roi in enumerate(stat):
        if not isinstance(roi, dict):
            continue  # said by the caller
        n = max((int(np.asarray(roi.get(k)).size) for k in ("ypix", "xpix", "lam")
                 if roi.get(k) is not None), default=0)
        if n > area:
            raise Suite2pProblem(path, f"ROI {i} has {n:,} pixels, more than the {Ly} x {Lx} "
                                       f"frame has ({area:,}); not loaded")
        total += n
    if total * MASK_ENTRY_BYTES > budget:
        raise Suite2pProblem(path, f"its {len(stat):,} ROIs have {total:,} pixel-mask entries in "
                                   f"all, about {total * MASK_ENTRY_BYTES / 2**30:.1f} GiB to "
                                   f"build, more than the memory budget (append.memory_mb = "
                                   f"{budget // 2**20}); not loaded")


def load_plane(index: int, plane_dir: Path, root: Path | None = None, *,
               budget: int = 256 * 2**20) -> Suite2pPlane:
    """Load and check one plane folder. Every problem is a Suite2pProblem naming the file (never
    a bare numpy or pickle error); an unsafe pickle is one too, with the refusal as message.
    ``root``: where links stop being followed (see RigFiles); ``budget``: bytes the pixel masks
    may take while being built."""
    reader = rig_files(plane_dir.parent, root)
    missing = missing_files(plane_dir, root)
    if missing:
        raise Suite2pProblem(plane_dir / missing[0], f"missing (suite2p may still be running); all missing: "
                                                     f"{', '.join(missing)}")
    warnings: list[str] = []
    style, facts = _read_facts(plane_dir, warnings, reader)

    F = _traces(plane_dir / "F.npy", reader, required=True)
    assert F is not None
    n_rois, nframes = F.shape
    traces: dict[str, np.ndarray | None] = {"F.npy": F}
    for name in ("Fneu.npy", "spks.npy", "F_chan2.npy", "Fneu_chan2.npy"):
        arr = _traces(plane_dir / name, reader, required=name in REQUIRED_FILES)
        if arr is not None and arr.shape != F.shape:
            raise Suite2pProblem(plane_dir / name,
                                 f"has shape {arr.shape} (ROIs, frames) but F.npy has {F.shape}")
        traces[name] = arr
    if (traces["F_chan2.npy"] is None) != (traces["Fneu_chan2.npy"] is None):
        have = "F_chan2.npy" if traces["F_chan2.npy"] is not None else "Fneu_chan2.npy"
        warnings.append(f"{plane_dir / have}: present without its partner "
                        f"{'Fneu_chan2.npy' if have == 'F_chan2.npy' else 'F_chan2.npy'}")

    iscell = _pairs(plane_dir / "iscell.npy", n_rois, reader, required=True)
    assert iscell is not None
    redcell = _pairs(plane_dir / "redcell.npy", n_rois, reader, required=False)

    image_shape = None
    mean = facts.find("meanImg")
    if mean is not None and np.asarray(mean[0]).ndim == 2:
        image_shape = np.asarray(mean[0]).shape
    Ly = _size(facts, "Ly", image_shape, 0, plane_dir)
    Lx = _size(facts, "Lx", image_shape, 1, plane_dir)
    ypix, xpix, lam = _masks(plane_dir / "stat.npy", n_rois, Ly, Lx, warnings, reader, budget)

    recorded = _number(facts.find("nframes"), "nframes", warnings)
    if recorded is not None and recorded != nframes:
        warnings.append(f"{plane_dir / 'F.npy'}: {nframes} frames, but suite2p recorded nframes={recorded:g}")
    for name, arr in traces.items():
        if arr is not None and (text := _nonfinite_warning(plane_dir / name, arr)) is not None:
            warnings.append(text)

    nchannels = _count(facts, "nchannels", 1, warnings)
    crop = _crop(facts, Ly, Lx, warnings)
    fs = _number(facts.find("fs"), "fs", warnings)
    return Suite2pPlane(
        index=index, folder=plane_dir, style=style, Ly=Ly, Lx=Lx, nframes=nframes,
        F=F, Fneu=_required(traces["Fneu.npy"]), spks=_required(traces["spks.npy"]),
        F_chan2=traces["F_chan2.npy"], Fneu_chan2=traces["Fneu_chan2.npy"],
        iscell=iscell, redcell=redcell, ypix=ypix, xpix=xpix, lam=lam,
        images=_images(facts, Ly, Lx, crop, nchannels, plane_dir, warnings), crop=crop,
        offsets=_offsets(facts, nframes, warnings),
        fs=fs if fs is not None and fs > 0 else None,
        neuropil_coefficient=_number(facts.find(("extraction", "neuropil_coefficient"), "neucoeff"),
                                     "neuropil coefficient", warnings),
        nchannels=nchannels, functional_chan=_count(facts, "functional_chan", 1, warnings),
        settings=_settings(facts), warnings=warnings,
    )


def _required(arr: np.ndarray | None) -> np.ndarray:
    assert arr is not None  # _traces(required=True) raises instead of returning None
    return arr
