"""suite2p output folders for the tests: 0.14-style copies of the real 1.x fixtures, deterministic
synthetic folders of any size, hand-written .npy pickles, and numpy's own reading of them.

Nothing here uses rig2nwb: the fixture files are read with numpy's own
``np.load(allow_pickle=True)`` (they are trusted test inputs) and folders are found by name.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np

TRACE_FILES = ("F.npy", "Fneu.npy", "spks.npy", "F_chan2.npy", "Fneu_chan2.npy")
COPIED_FILES = ("stat.npy", "iscell.npy", "redcell.npy", *TRACE_FILES)
ONE_X_FILES = ("db.npy", "settings.npy", "reg_outputs.npy", "detect_outputs.npy")

# suite2p 1.x nested settings -> the flat 0.14 ops key (the rest keep their names).
RENAMED = {("extraction", "neuropil_coefficient"): "neucoeff"}
# Paths in the synthetic ops, as suite2p writes them: of another machine. Never to be used.
ELSEWHERE = "/data/Imaging/elsewhere"


def raw_npy(path: Path) -> Any:
    """numpy's own loader: the independent expectation (the fixtures are trusted files)."""
    arr = np.load(path, allow_pickle=True)
    return arr.item() if arr.dtype == object and arr.ndim == 0 else arr


def np_item(path: Path) -> Any:
    """The dict in a trusted 0-d object .npy, as numpy itself loads it."""
    return np.load(path, allow_pickle=True).item()


def plane_dirs(suite2p: Path) -> list[Path]:
    return sorted((p for p in suite2p.glob("plane*") if p.is_dir()), key=lambda p: int(p.name[5:]))


def flat_ops_014(plane_dir: Path) -> dict[str, Any]:
    """One flat 0.14-style ops dict from a 1.x plane folder's db/settings/reg/detect files."""
    db = np_item(plane_dir / "db.npy")
    settings = np_item(plane_dir / "settings.npy")
    ops: dict[str, Any] = {k: v for k, v in db.items() if k != "file_list"}
    ops["filelist"] = list(db["file_list"])
    for key, value in settings.items():
        if isinstance(value, dict):
            sub: str
            for sub, v in value.items():
                if not isinstance(v, dict):
                    ops[RENAMED.get((key, sub), sub)] = v
        elif key != "version":  # 0.14 records suite2p_version instead
            ops[key] = value
    ops.update(np_item(plane_dir / "reg_outputs.npy"))  # the registered meanImg wins over db's
    ops.update(np_item(plane_dir / "detect_outputs.npy"))
    ops["suite2p_version"] = "0.14.3"
    ops["sparse_mode"] = settings["detection"]["algorithm"] == "sparsery"
    return ops


def make_014_folder(src_suite2p: Path, dst: Path) -> Path:
    """A 0.14-style copy of a 1.x suite2p folder: plane folders with one flat ops.npy (0.14 key
    names: filelist, neucoeff, ...) and the traces, stat, iscell, redcell copied; no db, settings,
    reg_outputs or detect_outputs anywhere."""
    dst.mkdir(parents=True, exist_ok=True)
    for plane_dir in plane_dirs(src_suite2p):
        out = dst / plane_dir.name
        out.mkdir(exist_ok=True)
        np.save(out / "ops.npy", np.array(flat_ops_014(plane_dir), dtype=object), allow_pickle=True)
        for name in COPIED_FILES:
            if (plane_dir / name).exists():
                shutil.copy2(plane_dir / name, out / name)
    return dst


def disk(cy: int, cx: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    inside = yy**2 + xx**2 <= r**2
    return (yy[inside] + cy).astype(np.int64), (xx[inside] + cx).astype(np.int64)


def synthetic_crop(Ly: int, Lx: int) -> tuple[list[int], list[int]]:
    """yrange, xrange of the synthetic folders: one row and two columns off each edge."""
    return [1, Ly - 1], [2, Lx - 2]


def _write_traces(path: Path, n_rois: int, n_frames: int, rng_seed: list[int], level: float,
                  spread: float) -> None:
    """A float32 (n_rois, n_frames) .npy written in row blocks of ~16 MB (never whole in RAM)."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_rois, n_frames))
    rows = max(1, (1 << 22) // max(1, n_frames))
    for start in range(0, n_rois, rows):
        rng = np.random.default_rng([*rng_seed, start])
        stop = min(n_rois, start + rows)
        arr[start:stop] = (level + spread * rng.standard_normal((stop - start, n_frames))).astype(np.float32)
    arr.flush()
    del arr


def make_synthetic_folder(dst: Path, *, n_rois: int, n_frames: int, Ly: int, Lx: int, nplanes: int = 1,
                          seed: int = 0, style: str = "0.14") -> Path:
    """A deterministic suite2p folder (``dst`` holding plane0, plane1, ...) in 0.14 style (one
    flat ops.npy) or 1.x style (db, settings, reg_outputs, detect_outputs; db and settings also at
    the top). Traces are float32 from seeded noise, written in blocks; ROIs are small disks inside
    the frame; Vcorr and max_proj are crop-sized (see synthetic_crop); ops paths point elsewhere."""
    if style not in ("0.14", "1.x"):
        raise ValueError(style)
    yrange, xrange = synthetic_crop(Ly, Lx)
    for plane in range(nplanes):
        out = dst / f"plane{plane}"
        out.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, plane])
        stat = []
        for _ in range(n_rois):
            r = int(rng.integers(1, max(2, min(5, (min(Ly, Lx) - 1) // 2))))
            cy, cx = int(rng.integers(r, Ly - r)), int(rng.integers(r, Lx - r))
            ypix, xpix = disk(cy, cx, r)
            stat.append({"ypix": ypix, "xpix": xpix, "lam": rng.random(len(ypix)).astype(np.float32),
                         "med": [cy, cx], "npix": len(ypix), "radius": float(r)})
        np.save(out / "stat.npy", np.array(stat, dtype=object), allow_pickle=True)
        iscell = np.stack([rng.integers(0, 2, n_rois), rng.random(n_rois)], axis=1).astype(np.float64)
        np.save(out / "iscell.npy", iscell)
        for k, (name, level, spread) in enumerate([("F.npy", 100.0, 10.0), ("Fneu.npy", 50.0, 5.0),
                                                   ("spks.npy", 0.0, 1.0)]):
            _write_traces(out / name, n_rois, n_frames, [seed, plane, k], level, spread)
        images = {
            "meanImg": rng.random((Ly, Lx)).astype(np.float32),
            "meanImgE": rng.random((Ly, Lx)).astype(np.float32),
        }
        detect = {
            "Vcorr": rng.random((yrange[1] - yrange[0], xrange[1] - xrange[0])),
            "max_proj": rng.random((yrange[1] - yrange[0], xrange[1] - xrange[0])).astype(np.float32),
        }
        reg = {
            **images, "yrange": yrange, "xrange": xrange,
            "yoff": rng.integers(-3, 4, n_frames), "xoff": rng.integers(-3, 4, n_frames),
            "corrXY": rng.random(n_frames).astype(np.float32),
            "yoff1": rng.random((n_frames, 4)).astype(np.float32),
            "xoff1": rng.random((n_frames, 4)).astype(np.float32),
            "corrXY1": rng.random((n_frames, 4)).astype(np.float32),
        }
        data = {"Ly": Ly, "Lx": Lx, "nframes": n_frames, "nplanes": nplanes, "nchannels": 1,
                "functional_chan": 1, "save_path": f"{ELSEWHERE}/suite2p/plane{plane}",
                "reg_file": f"{ELSEWHERE}/suite2p/plane{plane}/data.bin"}
        if style == "0.14":
            ops = {**data, **reg, **detect, "filelist": [f"{ELSEWHERE}/file_00001.tif"], "fs": 30.0,
                   "tau": 1.0, "diameter": 10, "neucoeff": 0.7, "baseline": "maximin",
                   "suite2p_version": "0.14.3"}
            save_dict(out / "ops.npy", ops)
        else:
            settings = {"fs": 30.0, "tau": 1.0, "diameter": [10.0, 10.0], "version": "1.1.0",
                        "extraction": {"neuropil_coefficient": 0.7},
                        "dcnv_preprocess": {"baseline": "maximin"}}
            db = {**data, "file_list": [f"{ELSEWHERE}/file_00001.tif"]}
            for folder in (out, dst):
                save_dict(folder / "settings.npy", settings)
                save_dict(folder / "db.npy", db)
            save_dict(out / "reg_outputs.npy", reg)
            save_dict(out / "detect_outputs.npy", detect)
    return dst


def save_dict(path: Path, d: dict[str, Any]) -> None:
    """Save a dict the way suite2p does: a 0-d object array, pickled by np.save."""
    np.save(path, np.array(d, dtype=object), allow_pickle=True)


def write_malicious_npy(path: Path, payload_pickle: bytes, shape: tuple[int, ...] = ()) -> Path:
    """A real .npy file: numpy's header for an object array of ``shape``, then the given pickle."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(object)), "fortran_order": False,
                 "shape": shape})
        fh.write(payload_pickle)
    return path


def object_array_pickle(obj: Any, protocol: int = 4) -> bytes:
    """The pickle np.save writes for ``np.array(obj, dtype=object)`` (a 0-d object array)."""
    return pickle.dumps(np.array(obj, dtype=object), protocol=protocol)
