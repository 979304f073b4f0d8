"""Load .npy files, including suite2p's pickled ones, without running code from them.

suite2p saves dicts (ops, settings, ...) and lists of dicts (stat) as object arrays, which numpy
stores as a pickle. ``np.load(allow_pickle=True)`` runs whatever that pickle asks for, so a
malicious or corrupted file on a shared drive could run code in the daemon. Here the pickle is
read by a restricted unpickler that builds only plain data: numpy arrays and scalars, numbers,
strings, containers, paths and dates.

A restricted ``find_class`` alone is not enough, because some numpy entry points are memory-unsafe
with crafted arguments (found while writing this module, numpy 2.4):

- ``numpy.ndarray(shape, dtype=object, buffer=b"...")`` builds an object array whose "objects"
  are pointers taken from the bytes: reading it crashes the interpreter or worse.
- ``dtype.__setstate__`` accepts arbitrary flags, so a pickled ``dtype('O')`` can be told it holds
  no objects (or a ``dtype('V8')`` that it does), and the array built with it again treats raw
  bytes as pointers. ``np.dtype('O8', False, False)`` even hands out numpy's shared instance, so a
  pickle could retune every object array in the process.

The unpickler therefore runs on the pure-Python ``pickle._Unpickler`` (about 5x slower than the C
one: 0.4 s for a 5000-ROI stat.npy) so that every opcode that calls something (REDUCE, NEWOBJ,
INST, OBJ, BUILD, EXT) goes through a check here, numpy's own classes are never handed to the
pickle as callables, and dtype states are tried on a scratch copy and validated before the real
dtype takes them.
"""

from __future__ import annotations

import _compat_pickle
import datetime
import io
import math
import os
import pathlib
import pickle
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from struct import error as struct_error
from typing import Any, Literal, cast

import numpy as np
from numpy._core import multiarray as _multiarray
from numpy._core import numeric as _numeric
from numpy.lib import format as npy_format

from rig2nwb.errors import NpyError, UnsafePickle

__all__ = ["NpyError", "UnsafePickle", "load_npy"]

# numpy's protocol-5 array constructor (private; looked up by name because numpy's stubs omit it).
_FROMBUFFER: Callable[..., Any] = _numeric.__dict__["_frombuffer"]

_WHAT_LOADS = ("only numpy arrays, numbers, strings, containers and paths are loaded; "
               "nothing in the file was run")


class _Refused(Exception):
    """Raised inside the unpickler; load_npy turns it into UnsafePickle with the file name."""

    def __init__(self, refused: str, what: str | None = None) -> None:
        super().__init__(refused)
        self.refused = refused
        self.what = what


# Paths are loaded as pure paths of the flavour they were written with: a concrete WindowsPath
# cannot be instantiated on Linux (nor PosixPath on Windows), and nothing here touches the disk
# through them. Python 3.13 moved the classes to pathlib._local, which its pickles name.
_PATH_CLASSES: dict[str, type[pathlib.PurePath]] = {
    "PosixPath": pathlib.PurePosixPath,
    "PurePosixPath": pathlib.PurePosixPath,
    "WindowsPath": pathlib.PureWindowsPath,
    "PureWindowsPath": pathlib.PureWindowsPath,
    "Path": pathlib.PurePath,
    "PurePath": pathlib.PurePath,
}


def _bytearray(*args: Any) -> bytearray:
    """bytearray from bytes, or from (str, 'latin-1') as protocol <3 pickles write it; never
    from an int (an allocation of any size) nor with another codec (codec lookup imports)."""
    if not args:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], bytes | bytearray):
        return bytearray(args[0])
    if (len(args) == 2 and isinstance(args[0], str)
            and str(args[1]).lower().replace("_", "-") in ("latin-1", "latin1")):
        return bytearray(args[0].encode("latin-1"))
    raise _Refused("builtins.bytearray", "calls builtins.bytearray with arguments that are not bytes")


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """_codecs.encode as protocol 0-2 pickles use it for bytes (numpy's raw data among them):
    latin-1 only, since looking up another codec by name imports modules."""
    if isinstance(text, str) and str(encoding).lower().replace("_", "-") in ("latin-1", "latin1"):
        return text.encode("latin-1")
    raise _Refused("_codecs.encode", "calls _codecs.encode with something other than text and latin-1")


# Harmless constructors: they only build a value from the data given (checked one by one: none
# of them imports, opens, evaluates or calls back into its arguments beyond iterating/hashing
# plain values). numpy's entries are bound per unpickler (see _SafeUnpickler.__init__).
_PLAIN: dict[str, Any] = {
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.complex": complex,
    "builtins.slice": slice,
    "builtins.range": range,
    "builtins.bytearray": _bytearray,
    "_codecs.encode": _latin1_bytes,
    "collections.OrderedDict": OrderedDict,
    "datetime.datetime": datetime.datetime,
    "datetime.date": datetime.date,
    "datetime.time": datetime.time,
    "datetime.timedelta": datetime.timedelta,
    "datetime.timezone": datetime.timezone,
    **{f"{module}.{name}": cls
       for module in ("pathlib", "pathlib._local") for name, cls in _PATH_CLASSES.items()},
}

_NUMPY_ENTRIES = {
    "numpy.dtype": "dtype",
    "numpy.ndarray": "ndarray",
    "numpy._core.multiarray._reconstruct": "reconstruct",
    "numpy.core.multiarray._reconstruct": "reconstruct",
    "numpy._core.multiarray.scalar": "scalar",
    "numpy.core.multiarray.scalar": "scalar",
    "numpy._core.numeric._frombuffer": "frombuffer",
    "numpy.core.numeric._frombuffer": "frombuffer",
}


def _check_dtype(dtype: object) -> np.dtype[Any]:
    """A dtype the pickle may use: a plain (not structured, not sub-array) dtype whose flags,
    size and alignment are numpy's own for its type, so no raw bytes are ever taken for object
    pointers."""
    if not isinstance(dtype, np.dtype):
        raise _Refused("numpy.dtype", f"uses {type(dtype).__name__} where a numpy dtype belongs")
    if dtype.fields is not None or dtype.subdtype is not None:
        raise _Refused("numpy.dtype", f"describes a structured or sub-array numpy dtype ({dtype}), which "
                                      "this loader does not accept")
    canonical = np.dtype(dtype.str)
    if (dtype.flags, dtype.itemsize, dtype.alignment, dtype.kind) != (
            canonical.flags, canonical.itemsize, canonical.alignment, canonical.kind):
        raise _Refused("numpy.dtype", f"gives a numpy dtype ({dtype.str}) flags, size or alignment that "
                                      "numpy itself never gives it")
    return dtype


class _SafeUnpickler(pickle._Unpickler):
    # Attributes of pickle._Unpickler that typeshed does not declare.
    stack: list[Any]
    append: Callable[[Any], None]
    pop_mark: Callable[[], list[Any]]
    readline: Callable[[], bytes]
    proto: int
    fix_imports: bool

    def __init__(self, file: io.BufferedIOBase) -> None:
        super().__init__(file)
        # Every dtype this pickle built, by id (kept alive so ids stay unique): only these may
        # receive a state (BUILD); numpy's shared dtype instances never reach the pickle.
        self._own_dtypes: dict[int, np.dtype[Any]] = {}
        self._entries: dict[str, Any] = {
            "dtype": self._dtype, "ndarray": np.ndarray, "reconstruct": self._reconstruct,
            "scalar": self._scalar, "frombuffer": self._frombuffer,
        }
        self._callable_ids = {id(v) for k, v in self._entries.items() if k != "ndarray"}
        self._callable_ids |= {id(v) for v in _PLAIN.values()}

    # --- names ---------------------------------------------------------------------------

    def find_class(self, module: str, name: str) -> Any:
        shown = f"{module}.{name}"
        if self.proto < 3 and self.fix_imports:  # Python 2 names (__builtin__, copy_reg, ...)
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        key = f"{module}.{name}"
        if key in _NUMPY_ENTRIES:
            return self._entries[_NUMPY_ENTRIES[key]]
        if key in _PLAIN:
            return _PLAIN[key]
        raise _Refused(key, None if key == shown else f"asks for {key} (written as {shown})")

    # --- numpy entry points, each checked -------------------------------------------------

    def _dtype(self, obj: Any, align: Any = False, copy: Any = True, *rest: Any) -> np.dtype[Any]:
        if rest:
            raise _Refused("numpy.dtype", "calls numpy.dtype with unexpected arguments")
        # copy=True always: never hand numpy's shared dtype instances to the pickle.
        dtype: np.dtype[Any] = _check_dtype(np.dtype(obj, align=bool(align), copy=True))
        self._own_dtypes[id(dtype)] = dtype
        return dtype

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        # numpy writes (_reconstruct, (ndarray, (0,), b'b')) and fills the array by BUILD: an
        # empty plain ndarray is all that is ever needed here.
        if subtype is not np.ndarray:
            raise _Refused("numpy._core.multiarray._reconstruct",
                           "asks numpy._core.multiarray._reconstruct for something other than a "
                           "plain numpy.ndarray")
        if not isinstance(dtype, bytes | str | np.dtype):
            raise _Refused("numpy._core.multiarray._reconstruct",
                           "calls numpy._core.multiarray._reconstruct with an unexpected dtype")
        if isinstance(dtype, np.dtype):
            _check_dtype(dtype)
        if math.prod(_int_tuple(shape)) != 0:
            raise _Refused("numpy._core.multiarray._reconstruct",
                           "calls numpy._core.multiarray._reconstruct with a non-empty shape, "
                           "which numpy never writes")
        return cast(np.ndarray, _multiarray._reconstruct(np.ndarray, _int_tuple(shape), dtype))

    def _scalar(self, dtype: Any, obj: Any = None) -> Any:
        dtype = _check_dtype(dtype)
        if dtype.hasobject or not isinstance(obj, bytes | None):
            raise _Refused("numpy._core.multiarray.scalar",
                           "builds a numpy scalar from something other than plain bytes")
        return _multiarray.scalar(dtype, obj) if obj is not None else _multiarray.scalar(dtype)

    def _frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        dtype = _check_dtype(dtype)
        if dtype.hasobject or not isinstance(buf, bytes | bytearray) or order not in ("C", "F", "A", "K"):
            raise _Refused("numpy._core.numeric._frombuffer",
                           "builds a numpy array from something other than plain bytes")
        return cast(np.ndarray, _FROMBUFFER(buf, dtype, _int_tuple(shape), order))

    # --- opcodes that call something -------------------------------------------------------

    def _check_callable(self, func: Any) -> None:
        if func is np.ndarray:
            raise _Refused("numpy.ndarray", "calls numpy.ndarray directly (which numpy never writes and "
                                            "which can build an array from raw memory)")
        if id(func) not in self._callable_ids:
            raise _Refused(_describe(func), f"calls {_describe(func)}")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        self._check_callable(func)
        if not isinstance(args, tuple):
            raise pickle.UnpicklingError("REDUCE arguments are not a tuple")
        self.stack[-1] = func(*args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_class(cls)
        self.append(cls.__new__(cls, *args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_class(cls)
        self.append(cls.__new__(cls, *args, **kwargs))

    def _check_class(self, cls: Any) -> None:
        # cls.__new__ of the plain classes only: numpy's wrappers are functions, and
        # numpy.ndarray.__new__ is the raw-memory constructor.
        self._check_callable(cls)
        if not isinstance(cls, type):
            raise _Refused(_describe(cls), f"uses {_describe(cls)} as a class")

    def load_inst(self) -> None:
        module = self.readline()[:-1].decode("ascii")
        name = self.readline()[:-1].decode("ascii")
        klass = self.find_class(module, name)
        self._instantiate(klass, self.pop_mark())

    def load_obj(self) -> None:
        args = self.pop_mark()
        cls = args.pop(0)
        self._instantiate(cls, args)

    def _instantiate(self, klass: Any, args: list[Any]) -> None:
        self._check_callable(klass)
        self.append(klass(*args))

    def load_ext(self) -> None:
        # The copyreg extension registry maps codes to arbitrary globals (and caches them
        # outside find_class); numpy never writes extension codes.
        raise _Refused("copyreg extension", "refers to a copyreg extension code")

    def load_persid(self) -> None:
        raise _Refused("persistent id", "refers to a persistent id")

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is np.ndarray:
            self._build_array(inst, state)
        elif isinstance(inst, np.dtype):
            self._build_dtype(inst, state)
        else:
            # No other plain type is written with a state; for anything else BUILD would set
            # attributes or call __setstate__.
            name = _describe(type(inst))
            raise _Refused(name, f"sets the state of a {name} object")

    def _build_dtype(self, dtype: np.dtype[Any], state: Any) -> None:
        if self._own_dtypes.get(id(dtype)) is not dtype:
            raise _Refused("numpy.dtype", "changes a numpy dtype it did not build")
        # Try the state on a scratch copy first: a dtype may already be in use by an array
        # built earlier in this pickle, so it must never hold an invalid state, not even briefly.
        scratch = np.dtype(dtype, copy=True)
        cast(Any, scratch).__setstate__(state)
        _check_dtype(scratch)
        if scratch.itemsize != dtype.itemsize and dtype.itemsize != 0:
            raise _Refused("numpy.dtype", "changes the item size of a numpy dtype in use")
        cast(Any, dtype).__setstate__(state)

    def _build_array(self, array: np.ndarray, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("numpy array state is not a 4- or 5-tuple")
        shape, dtype, rawdata = state[-4], state[-3], state[-1]
        _check_dtype(dtype)
        _int_tuple(shape)
        # numpy itself insists on a list for object arrays; plain arrays take bytes.
        if not isinstance(rawdata, list if dtype.hasobject else bytes | bytearray):
            raise pickle.UnpicklingError("numpy array data of an unexpected kind")
        array.__setstate__(state)


# pickle._Unpickler dispatches through a table of its own functions, not by method name.
_SafeUnpickler.dispatch = {**pickle._Unpickler.dispatch, **{op[0]: cast(Any, method) for op, method in [
    (pickle.REDUCE, _SafeUnpickler.load_reduce), (pickle.NEWOBJ, _SafeUnpickler.load_newobj),
    (pickle.NEWOBJ_EX, _SafeUnpickler.load_newobj_ex), (pickle.INST, _SafeUnpickler.load_inst),
    (pickle.OBJ, _SafeUnpickler.load_obj), (pickle.BUILD, _SafeUnpickler.load_build),
    (pickle.EXT1, _SafeUnpickler.load_ext), (pickle.EXT2, _SafeUnpickler.load_ext),
    (pickle.EXT4, _SafeUnpickler.load_ext), (pickle.PERSID, _SafeUnpickler.load_persid),
    (pickle.BINPERSID, _SafeUnpickler.load_persid),
]}}


def _int_tuple(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise pickle.UnpicklingError("numpy array shape is not a tuple of sizes")
    return shape


def _describe(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    return f"{module}.{name}" if module else str(name)


# What a pickle may build (nothing in suite2p's files comes near): containers nested at most
# MAX_DEPTH deep, and at most MAX_ITEMS values when every shared object is counted each time it
# is reached (a pickle can share one list many times over; code that walks the result, or turns
# it into JSON, pays the expanded size).
MAX_DEPTH = 64
MAX_ITEMS = 20_000_000


def _open(path: Path, root: Path | None) -> io.BufferedIOBase:
    """The file opened for reading: through rigfs when it lies in the rig (``root``)."""
    if root is None:
        return open(path, "rb")
    from rig2nwb.errors import UnsafeRigPath
    from rig2nwb.rig.safeopen import open_rig_file

    try:
        return cast(io.BufferedIOBase, open_rig_file(root, path))
    except UnsafeRigPath as exc:
        raise NpyError(path, exc.message) from None


def load_npy(path: Path, *, mmap: bool = False, root: Path | None = None) -> np.ndarray:
    """The array in ``path`` as np.load gives it, without ever running code from the file.

    Plain arrays are read by numpy with pickles disabled (memory-mapped read-only when
    ``mmap``); object arrays (suite2p's dicts and lists of dicts) are unpickled by the restricted
    unpickler (``mmap`` does not apply to them) and refused beyond MAX_DEPTH / MAX_ITEMS. With
    ``root`` the file is opened through rigfs (no links, no FIFOs) and read from that handle.
    Raises NpyError for a damaged/truncated/non-.npy file and UnsafePickle for a pickle that
    asks for anything but plain data."""
    try:
        fh = _open(path, root)
    except OSError as e:
        raise NpyError(path, f"cannot be opened ({_reason(e)})") from None
    try:
        with fh:
            try:
                version = npy_format.read_magic(fh)
            except ValueError:
                raise NpyError(path, "not a .npy file (it does not start with numpy's header)") from None
            # Version 3.0 only differs from 2.0 in allowing utf-8 field names in the header.
            read_header = npy_format.read_array_header_1_0 if version == (1, 0) else \
                npy_format.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            if dtype.hasobject:
                return _unpickle_array(path, fh, shape)
            return _plain_array(path, fh, shape, fortran, dtype, mmap)
    except NpyError:
        raise
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
        raise NpyError(path, f"damaged .npy header ({_reason(e)})") from None


def _plain_array(path: Path, fh: io.BufferedIOBase, shape: tuple[int, ...], fortran: bool,
                 dtype: np.dtype[Any], mmap: bool) -> np.ndarray:
    """A numeric array read from the open handle (never reopened by name). Memory-mapped: the
    map holds its own reference to the file, and ``rig_file`` remembers which file it is."""
    count = math.prod(shape)
    needed = count * dtype.itemsize
    start = fh.tell()
    size = os.fstat(fh.fileno()).st_size
    if start + needed > size:
        raise NpyError(path, f"cannot read the array, the file may be truncated or still being "
                             f"written (the header says {needed:,} bytes of data, the file has "
                             f"{size - start:,})")
    order: Literal["C", "F"] = "F" if fortran else "C"
    try:
        if mmap and count > 0:  # empty arrays cannot be memory-mapped; they are free to read
            arr = np.memmap(fh, dtype=dtype, mode="r", offset=start, shape=shape, order=order)
            arr.rig_file = (os.fstat(fh.fileno()), start)  # type: ignore[attr-defined]
            return arr
        data = np.fromfile(fh, dtype=dtype, count=count)
        return data.reshape(shape, order=order)
    except (ValueError, OSError, EOFError, MemoryError) as e:
        raise NpyError(path, f"cannot read the array, the file may be truncated or still being "
                             f"written ({_reason(e)})") from None


def _unpickle_array(path: Path, fh: io.BufferedIOBase, shape: tuple[int, ...]) -> np.ndarray:
    try:
        result = _SafeUnpickler(fh).load()
    except _Refused as e:
        raise UnsafePickle(path, e.refused, e.what) from None
    except RecursionError:
        raise NpyError(path, "damaged pickle (nested too deeply)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, UnicodeDecodeError, OverflowError, MemoryError, struct_error) as e:
        raise NpyError(path, f"damaged or truncated pickle ({_reason(e)})") from None
    except Exception as e:  # only plain constructors ran: any other error is bad data too
        raise NpyError(path, f"damaged pickle ({_reason(e)})") from None
    if not isinstance(result, np.ndarray):
        raise NpyError(path, f"the pickle holds a {type(result).__name__}, not a numpy array")
    if result.shape != tuple(shape):
        raise NpyError(path, f"the header says shape {tuple(shape)} but the pickle holds {result.shape}")
    problem = structure_problem(result)
    if problem:
        raise NpyError(path, f"refused to load: {problem}")
    return result


def _children(obj: Any) -> list[Any] | None:
    """The values inside a container (None for a leaf: numbers, strings, numeric arrays)."""
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, list | tuple | set | frozenset):
        return list(obj)
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        return list(obj.flat)
    return None


def structure_problem(root: Any) -> str | None:
    """Why a loaded structure is refused (None: it is fine): nested deeper than MAX_DEPTH,
    more than MAX_ITEMS values with shared objects counted each time, or a cycle. Iterative (a
    list nested 5,000 deep must not raise RecursionError here or anywhere after)."""
    height: dict[int, int] = {}
    items: dict[int, int] = {}
    keep: list[Any] = []  # ids stay valid while the objects are alive
    stack: list[tuple[Any, bool]] = [(root, False)]
    active: set[int] = set()
    while stack:
        obj, done = stack.pop()
        key = id(obj)
        if done:
            inside = _children(obj) or []
            height[key] = 1 + max((height[id(k)] for k in inside), default=0)
            items[key] = 1 + sum(items[id(k)] for k in inside)
            active.discard(key)
            if height[key] > MAX_DEPTH:
                return f"its data nest more than {MAX_DEPTH} levels deep"
            if items[key] > MAX_ITEMS:
                return (f"its data hold more than {MAX_ITEMS:,} values (counting each shared "
                        "object every time it is used)")
            continue
        if key in height:
            continue
        if key in active:
            return "its data refer to themselves (a cycle)"
        kids = _children(obj)
        if kids is None:
            height[key], items[key] = 0, 1
            keep.append(obj)
            continue
        active.add(key)
        keep.append(obj)
        stack.append((obj, True))
        stack.extend((k, False) for k in kids if id(k) not in height)
        if len(active) > MAX_DEPTH:
            return f"its data nest more than {MAX_DEPTH} levels deep"
    return None


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__

