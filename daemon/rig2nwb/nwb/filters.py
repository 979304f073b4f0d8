"""Which HDF5 filters every reader has, and which datasets of a file need more.

The point of NWB is that anyone can open the file: pynwb and plain h5py without hdf5plugin,
MATLAB/MatNWB, ``h5dump``, and the web viewers built on h5wasm. Every libhdf5 has deflate,
shuffle, fletcher32, scaleoffset and nbit; szip is optional (h5wasm has none); anything else
(blosc, zstd, lzf: h5py's own) needs a plugin in the reader, and readers without it fail, or, as
h5wasm does, return garbage without failing.
"""

from __future__ import annotations

from typing import Any

BUILT_IN = {1: "deflate", 2: "shuffle", 3: "fletcher32", 5: "nbit", 6: "scaleoffset"}
KNOWN = {4: "szip", 32000: "lzf", 32001: "blosc", 32004: "lz4", 32008: "bitshuffle",
         32015: "zstd", 32026: "blosc2"}


def filter_names(ds: Any) -> list[tuple[int, str]]:
    """(id, name) of a dataset's filters, in pipeline order."""
    plist = ds.id.get_create_plist()
    out = []
    for i in range(plist.get_nfilters()):
        code, _flags, _values, name = plist.get_filter(i)
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
        out.append((int(code), KNOWN.get(int(code)) or BUILT_IN.get(int(code)) or text or str(code)))
    return out


def plugin_datasets(f: Any) -> list[str]:
    """``dataset: filter`` for every dataset of an open h5py file whose filters are not built
    into every libhdf5 (empty: the file opens in every reader without plugins)."""
    import h5py

    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            extra = [n for code, n in filter_names(obj) if code not in BUILT_IN]
            if extra:
                found.append(f"/{name}: {', '.join(extra)}")

    f.visititems(visit)
    return found


def describe(needs: list[str] | None) -> str:
    """One line for status and the check: whether the file opens without plugins."""
    if needs is None:
        return "unknown (checked by an older rig2nwb)"
    if not needs:
        return "yes (only filters built into every HDF5)"
    more = f" and {len(needs) - 3} more" if len(needs) > 3 else ""
    return (f"no: {len(needs)} dataset(s) need a filter plugin ({'; '.join(needs[:3])}{more}); "
            "`rig2nwb repack` rewrites the file with built-in filters")
