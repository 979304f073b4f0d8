"""Repacking: rewrite a finished file with filters every reader has (``rig2nwb repack``, see
commands.repack).

A way out for files written with an opt-in plugin filter (blosc, lzf): pynwb without hdf5plugin,
MATLAB and h5dump cannot read them, and h5wasm (the web viewers) returns garbage. The file is
copied object by object into ``~<name>.repacking.nwb`` beside it: every dataset that needs a
plugin is written again with shuffle + deflate (HDF5's built-in filters), everything else as it
was (layout, chunks, fill values, attributes, soft and hard links, object references: remapped
to the new file). The copy is then read back and compared with the original dataset by dataset,
attribute by attribute, link by link; only a copy found equal is fsynced and renamed over the
original (one atomic step), so a crash or SIGKILL at any moment leaves the original untouched or
the complete copy in its place, never a mix. The leftover copy of an interrupted run is deleted
by the next one.

A file that needs no plugin is left alone (a second repack does nothing). A file of a session
in the ledger is only repacked while no daemon holds the state folder (the daemon writes
finished files again: late TIFFs, suite2p); its check (and summary picture) is then made again,
so status says the file opens without plugins.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from rig2nwb.errors import RepackError
from rig2nwb.fsutil import fsync_path
from rig2nwb.nwb import chunks as chunkwriter
from rig2nwb.nwb.filters import BUILT_IN, filter_names, plugin_datasets
from rig2nwb.progress import beat as heartbeat

BLOCK_BYTES = 64 * 2**20  # data copied and compared this much at a time (memory stays flat)
LEVEL = 1


@dataclass(frozen=True)
class RepackResult:
    changed: bool
    datasets: int  # datasets rewritten with built-in filters
    message: str


def repacking_path(path: Path) -> Path:
    return path.with_name(f"~{path.stem}.repacking.nwb")


def repack_file(path: Path, *, threads: int = 1,
                progress: Callable[[str], None] | None = None) -> RepackResult:
    """Repack ``path`` in place (see the module docstring). Raises RepackError or OSError with
    the original untouched."""
    import hdf5plugin  # noqa: F401  (the blosc/lzf data must be read to be rewritten)

    tmp = repacking_path(path)
    tmp.unlink(missing_ok=True)  # left by an interrupted repack
    with h5py.File(path, "r") as src:
        needs = plugin_datasets(src)
        if not needs:
            return RepackResult(False, 0, f"{path.name} needs no filter plugin; nothing to do")
        try:
            with h5py.File(tmp, "w", libver=src.libver, userblock_size=src.userblock_size) as dst:
                rewritten = _Copier(src, dst, threads).run()
                dst.flush()
                os.fsync(dst.id.get_vfd_handle())
            if progress:
                progress(f"copied; comparing {path.name} with the copy")
            with h5py.File(tmp, "r") as copy:
                _compare(src, copy)
                left = plugin_datasets(copy)
                if left:
                    raise RepackError(f"still needs plugins after repacking: {left[0]}")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, path)
    fsync_path(path.parent)
    return RepackResult(True, rewritten, f"{path.name}: {rewritten} dataset(s) rewritten with "
                        "shuffle + deflate; every dataset compared equal; it now opens without "
                        "filter plugins")


# --- copying ---------------------------------------------------------------------------------


def _is_ref_dtype(dtype: np.dtype[Any]) -> bool:
    """Does the type hold object references (alone, or as a field of a compound)?"""
    if dtype.names:
        return any(_is_ref_dtype(dtype.fields[n][0]) for n in dtype.names)  # type: ignore[index]
    return h5py.check_ref_dtype(dtype) is not None


class _Copier:
    """Copies every object of ``src`` into ``dst`` (references filled in a second pass, once
    every object they may point to exists)."""

    def __init__(self, src: h5py.File, dst: h5py.File, threads: int) -> None:
        self.src, self.dst, self.threads = src, dst, threads
        self.done: dict[int, str] = {}  # source object address -> its first path
        self.refs: list[tuple[str, str | None]] = []  # (object path, attribute or None for data)
        self.rewritten = 0

    def run(self) -> int:
        self._attrs(self.src, self.dst, "/")
        self._group(self.src, self.dst)
        for where, attr in self.refs:
            self._fill_refs(where, attr)
        return self.rewritten

    def _group(self, src: h5py.Group, dst: h5py.Group) -> None:
        for name in src:
            link = src.get(name, getlink=True)
            if isinstance(link, h5py.SoftLink):
                dst[name] = h5py.SoftLink(link.path)
                continue
            if isinstance(link, h5py.ExternalLink):
                dst[name] = h5py.ExternalLink(link.filename, link.path)
                continue
            obj = src[name]
            addr = h5py.h5o.get_info(obj.id).addr
            if addr in self.done:  # a second hard link to an object already copied
                dst[name] = self.dst[self.done[addr]]
                continue
            self.done[addr] = obj.name
            heartbeat()
            if isinstance(obj, h5py.Group):
                sub = dst.create_group(name, track_order=_tracks_order(obj))
                self._attrs(obj, sub, obj.name)
                self._group(obj, sub)
            else:
                self._dataset(obj, dst, name)

    def _dataset(self, ds: h5py.Dataset, dst: h5py.Group, name: str) -> None:
        plist = ds.id.get_create_plist()
        kwargs: dict[str, Any] = {"shape": ds.shape, "dtype": ds.dtype, "maxshape": ds.maxshape}
        if ds.chunks is not None:
            kwargs["chunks"] = ds.chunks
            filters = filter_names(ds)
            if any(code not in BUILT_IN for code, _ in filters):
                kwargs.update(compression="gzip", compression_opts=LEVEL,
                              shuffle=ds.dtype.itemsize > 1 and not ds.dtype.names)
                self.rewritten += 1
            else:  # built-in filters: kept as they are
                codes = {code for code, _ in filters}
                if 1 in codes:
                    values = plist.get_filter(list(c for c, _ in filters).index(1))[2]
                    kwargs.update(compression="gzip",
                                  compression_opts=int(values[0]) if values else 6)
                kwargs["shuffle"] = 2 in codes
                kwargs["fletcher32"] = 3 in codes
        if ds.fillvalue is not None and not _is_ref_dtype(ds.dtype) and ds.dtype.kind != "O":
            kwargs["fillvalue"] = ds.fillvalue
        out = dst.create_dataset(name, **kwargs)
        self._attrs(ds, out, ds.name)
        if _is_ref_dtype(ds.dtype):
            self.refs.append((ds.name, None))
            return
        _copy_data(ds, out, self.threads)

    def _attrs(self, src: h5py.HLObject, dst: h5py.HLObject, where: str) -> None:
        for name in src.attrs:
            aid = src.attrs.get_id(name)
            if _is_ref_dtype(aid.dtype):
                self.refs.append((where, name))
                continue
            dst.attrs.create(name, src.attrs[name], shape=aid.shape, dtype=aid.dtype)

    def _map(self, ref: Any) -> Any:
        if not ref:
            return h5py.Reference()  # a null reference stays null
        if isinstance(ref, h5py.RegionReference):
            raise RepackError("the file holds region references, which repack cannot carry over")
        name = self.src[ref].name
        return self.dst[name].ref

    def _mapped(self, value: Any, dtype: np.dtype[Any]) -> Any:
        arr = np.asarray(value, dtype=dtype) if not isinstance(value, h5py.Reference) else value
        if isinstance(arr, h5py.Reference):
            return self._map(arr)
        out = arr.copy()
        if dtype.names:
            for field in dtype.names:
                sub = dtype.fields[field][0]  # type: ignore[index]
                if _is_ref_dtype(sub):
                    flat = out[field].reshape(-1)
                    for i, ref in enumerate(flat):
                        flat[i] = self._map(ref)
            return out
        flat = out.reshape(-1)
        for i, ref in enumerate(flat):
            flat[i] = self._map(ref)
        return out

    def _fill_refs(self, where: str, attr: str | None) -> None:
        src, dst = self.src[where], self.dst[where]
        if attr is None:
            if src.size:
                dst[...] = self._mapped(src[()], src.dtype)
            return
        aid = src.attrs.get_id(attr)
        dst.attrs.create(attr, self._mapped(src.attrs[attr], aid.dtype), shape=aid.shape,
                         dtype=aid.dtype)


def _tracks_order(group: h5py.Group) -> bool:
    try:
        flags = group.id.get_create_plist().get_link_creation_order()
    except (AttributeError, ValueError):
        return False
    return bool(flags & h5py.h5p.CRT_ORDER_TRACKED)


def _blocks(ds: h5py.Dataset) -> Iterator[tuple[slice, ...]]:
    """Selections of ``ds`` of at most BLOCK_BYTES each (whole chunks along axis 0)."""
    if ds.shape == () or ds.size == 0:
        if ds.shape == ():
            yield ()
        return
    row = max(1, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize)
    step = max(1, BLOCK_BYTES // row)
    if ds.chunks:
        step = max(ds.chunks[0], step // ds.chunks[0] * ds.chunks[0])
    for a in range(0, ds.shape[0], step):
        yield (slice(a, min(ds.shape[0], a + step)),)


def _copy_data(src: h5py.Dataset, dst: h5py.Dataset, threads: int) -> None:
    writer = chunkwriter.for_dataset(dst, threads)  # frames: compressed on every core
    for sel in _blocks(src):
        heartbeat()
        if not sel:
            dst[()] = src[()]
            continue
        block = src[sel]
        a, b = sel[0].start, sel[0].stop
        first, last = writer.aligned(a, b) if writer is not None else (a, a)
        if writer is None or first != a or first >= last:
            dst[sel] = block
            continue
        writer.write(first, block[: last - a])
        if last < b:  # the partial last chunk: through HDF5's own filters
            dst[last:b] = block[last - a:]


# --- comparing -------------------------------------------------------------------------------


def _compare(a: h5py.File, b: h5py.File) -> None:
    """Raise RepackError unless ``b`` holds what ``a`` holds: the same links, attributes and
    dataset values (references compared by the path of what they point to)."""

    def fail(where: str, what: str) -> None:
        raise RepackError(f"the copy differs from the original at {where}: {what}; the original "
                          "is kept")

    def same_attrs(x: h5py.HLObject, y: h5py.HLObject, where: str) -> None:
        if sorted(x.attrs) != sorted(y.attrs):
            fail(where, "attribute names")
        for name in x.attrs:
            if not _equal(a, b, x.attrs[name], y.attrs[name], x.attrs.get_id(name).dtype):
                fail(f"{where}@{name}", "attribute value")

    def walk(x: h5py.Group, y: h5py.Group) -> None:
        same_attrs(x, y, x.name)
        if sorted(x) != sorted(y):
            fail(x.name, "member names")
        for name in x:
            lx, ly = x.get(name, getlink=True), y.get(name, getlink=True)
            if type(lx) is not type(ly):
                fail(f"{x.name}/{name}", "link kind")
            if isinstance(lx, h5py.SoftLink):
                if lx.path != ly.path:
                    fail(f"{x.name}/{name}", "soft link target")
                continue
            if isinstance(lx, h5py.ExternalLink):
                continue
            ox, oy = x[name], y[name]
            if isinstance(ox, h5py.Group):
                if not isinstance(oy, h5py.Group):
                    fail(ox.name, "kind")
                walk(ox, oy)
                continue
            if not isinstance(oy, h5py.Dataset) or ox.shape != oy.shape or ox.dtype != oy.dtype:
                fail(ox.name, "shape or type")
            same_attrs(ox, oy, ox.name)
            for sel in _blocks(ox):
                heartbeat()
                vx = ox[sel] if sel else ox[()]
                vy = oy[sel] if sel else oy[()]
                if not _equal(a, b, vx, vy, ox.dtype):
                    fail(ox.name, f"values {sel}")

    walk(a, b)


def _equal(a: h5py.File, b: h5py.File, x: Any, y: Any, dtype: np.dtype[Any]) -> bool:
    if _is_ref_dtype(dtype):
        def names(f: h5py.File, v: Any) -> list[str]:
            arr = [v] if isinstance(v, h5py.Reference) else np.asarray(v).reshape(-1)
            return [f[r].name if r else "" for r in arr]
        if dtype.names:
            return all(_equal(a, b, np.asarray(x)[n], np.asarray(y)[n],
                              dtype.fields[n][0]) for n in dtype.names)  # type: ignore[index]
        return names(a, x) == names(b, y)
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        xa, ya = np.asarray(x), np.asarray(y)
        if xa.shape != ya.shape:
            return False
        if xa.dtype.kind == "f":
            return bool(np.array_equal(xa, ya, equal_nan=True))
        return bool(np.array_equal(xa, ya))
    if isinstance(x, float) and isinstance(y, float) and np.isnan(x) and np.isnan(y):
        return True
    return bool(x == y)


# --- the command -------------------------------------------------------------------------------


