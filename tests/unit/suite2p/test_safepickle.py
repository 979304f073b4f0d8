"""rig2nwb.suite2p.safepickle: suite2p's pickled .npy files load like np.load(allow_pickle=True) gives
them, and pickles that would run code (or corrupt memory) are refused without running anything.

Expectations: numpy's own np.load of the same files, values the tests construct, and, for the
malicious corpus, a control run in a child process showing that plain np.load(allow_pickle=True)
really does create each marker file.
"""

from __future__ import annotations

import copyreg
import datetime
import functools
import math
import os
import pathlib
import pickle
import shlex
import struct
import subprocess
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import pytest

from rig2nwb.errors import NpyError, UnsafePickle
from rig2nwb.suite2p.safepickle import load_npy
from rig2nwb.testing.figures import record
from rig2nwb.testing.paths import REPO, shared_fixture
from rig2nwb.testing.suite2p_folders import object_array_pickle, write_malicious_npy

# --- comparing loaded values with numpy's ------------------------------------------------------


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Recursive equality of what load_npy and np.load give (NaN equal to NaN, paths by text)."""
    if isinstance(b, PurePath):
        assert isinstance(a, PurePath), where
        assert (str(a), a.parts) == (str(b), b.parts), where
    elif isinstance(b, dict):
        assert type(a) is type(b) and list(a) == list(b), where
        for k in b:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(b, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(b, np.ndarray):
        assert type(a) is np.ndarray or isinstance(a, np.memmap), where
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        if b.dtype == object:
            for i, (x, y) in enumerate(zip(a.reshape(-1), b.reshape(-1), strict=True)):
                assert_same(x, y, f"{where}.flat[{i}]")
        else:
            assert np.array_equal(a, b, equal_nan=b.dtype.kind in "fc"), where
    elif isinstance(b, float | np.floating) and math.isnan(b):
        assert type(a) is type(b) and math.isnan(a), where
    else:
        assert type(a) is type(b) and a == b, where


def test_real_fixture_files_load_like_numpy() -> None:
    pickled = 0
    for name in ("twoplane", "twochan"):
        root = shared_fixture("suite2p", name, "suite2p")
        for path in sorted(root.rglob("*.npy")):
            expected = np.load(path, allow_pickle=True)
            assert_same(load_npy(path), expected, str(path))
            pickled += expected.dtype == object
    # 2 + 2 top-level, 3 x 6 per plane (db, settings, reg/detect outputs, ops, stat), 3 combined/
    assert pickled == 25


def test_plain_arrays_are_memory_mapped_read_only() -> None:
    path = shared_fixture("suite2p", "twochan", "suite2p", "plane0", "F.npy")
    arr = load_npy(path, mmap=True)
    assert isinstance(arr, np.memmap) and not arr.flags.writeable
    assert np.array_equal(arr, np.load(path))


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_plain_data_of_every_pickle_protocol(tmp_path: Path, protocol: int) -> None:
    value = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3), "fortran": np.asfortranarray(np.eye(3)),
        "nan": np.array([1.0, np.nan]), "big_endian": np.arange(3, dtype=">i4"),
        "text": np.array(["ab", "c"]), "bytes": np.array([b"xy"]), "when": np.array(["2024-01-02"], "M8[s]"),
        "bools": np.array([True, False]), "nested": np.array([np.arange(2), None, "x"], dtype=object),
        "scalars": [np.float64(1.5), np.int16(-3), np.bool_(True), np.str_("s"), np.float32("nan")],
        "python": [1, 2.5, "s", b"b", None, True, complex(1, 2), range(3), slice(1, 5, 2), bytearray(b"ba")],
        "sets": [{1, 2}, frozenset({"a"})], "ordered": OrderedDict(a=1, b=2), "tuple": (1, (2, 3)),
        "date": datetime.datetime(2024, 5, 6, 7, 8, 9, 10,
                                  tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
        "day": datetime.date(2024, 5, 6), "span": datetime.timedelta(seconds=3),
        "path": pathlib.PosixPath("/data/Imaging/x.tif"), "pure": PurePosixPath("rel/y"),
        "windows": PureWindowsPath("C:/data/z.tif"),
    }
    path = write_malicious_npy(tmp_path / "ops.npy", object_array_pickle(value, protocol))
    assert_same(load_npy(path), np.load(path, allow_pickle=True))


# --- paths written on other systems -------------------------------------------------------------


def _path_pickle(module: str, cls: str, parts: tuple[str, ...]) -> bytes:
    """A protocol-2 object array holding one path, its class renamed as another system writes it."""
    data = pickle.dumps(np.array([PurePosixPath(*parts)], dtype=object), protocol=2)
    assert data.count(b"cpathlib\nPurePosixPath\n") == 1
    return data.replace(b"cpathlib\nPurePosixPath\n", f"c{module}\n{cls}\n".encode())


def test_windows_path_written_on_windows_loads_as_pure_windows_path(tmp_path: Path) -> None:
    payload = _path_pickle("pathlib", "WindowsPath", ("C:\\", "data", "a.tif"))
    path = write_malicious_npy(tmp_path / "db.npy", payload, shape=(1,))
    loaded = load_npy(path)[0]
    assert type(loaded) is PureWindowsPath
    assert str(loaded) == "C:\\data\\a.tif" and loaded.parts == ("C:\\", "data", "a.tif")


@pytest.mark.parametrize(("module", "cls", "expected", "text"), [
    ("pathlib._local", "PosixPath", PurePosixPath, "/data/b.tif"),
    ("pathlib._local", "WindowsPath", PureWindowsPath, "\\data\\b.tif"),
    ("pathlib", "PosixPath", PurePosixPath, "/data/b.tif"),
    ("pathlib", "PurePosixPath", PurePosixPath, "/data/b.tif"),
])
def test_path_classes_of_other_pythons(tmp_path: Path, module: str, cls: str, expected: type,
                                       text: str) -> None:
    """Python 3.13+ names the classes pathlib._local.*; concrete classes load as pure ones."""
    path = write_malicious_npy(tmp_path / "db.npy", _path_pickle(module, cls, ("/", "data", "b.tif")),
                               shape=(1,))
    loaded = load_npy(path)[0]
    assert type(loaded) is expected and str(loaded) == text


# --- malicious pickles ----------------------------------------------------------------------------


class Reduce:
    """Pickles as ``func(*args)``: what an attacker's object would run in np.load."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


@dataclass
class Case:
    name: str
    payload: bytes
    marker: Path        # created if the pickle runs
    refused: str        # the global the refusal names
    shape: tuple[int, ...] = ()
    runs_here: bool = True  # False: it would run on another operating system


def _text_op(text: str) -> bytes:
    """Protocol 0 STRING opcode: S'...'\\n."""
    return b"S" + repr(text).encode() + b"\n"


def _binunicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def corpus(folder: Path) -> list[Case]:
    """Pickles that each create a marker file in ``folder`` when np.load(allow_pickle=True) runs
    them; written to real .npy files (object-array header + the pickle)."""
    folder.mkdir(parents=True, exist_ok=True)
    m = {n: folder / f"marker_{n}" for n in range(24)}
    touch = {n: f"touch {shlex.quote(str(p))}" for n, p in m.items()}
    code = {n: f"open({str(p)!r}, 'w').close()" for n, p in m.items()}
    system = f"{os.system.__module__}.system"  # posix.system on Linux
    stat_ok = {"ypix": np.arange(3), "xpix": np.arange(3), "lam": np.ones(3, np.float32), "med": [1, 1]}
    stat_evil = {**stat_ok, "lam": Reduce(subprocess.call, ["touch", str(m[12])])}
    return [
        Case("os.system, hand-written protocol 0", b"cos\nsystem\n(" + _text_op(touch[0]) + b"tR.", m[0],
             "os.system"),
        Case("posix.system", object_array_pickle(Reduce(os.system, touch[1])), m[1], system),
        Case("subprocess.call", object_array_pickle(Reduce(subprocess.call, ["touch", str(m[2])])), m[2],
             "subprocess.call"),
        Case("subprocess.Popen", object_array_pickle(Reduce(subprocess.Popen, ["touch", str(m[3])])), m[3],
             "subprocess.Popen"),
        Case("subprocess.check_output",
             object_array_pickle(Reduce(subprocess.check_output, ["touch", str(m[4])])), m[4],
             "subprocess.check_output"),
        Case("builtins.eval", object_array_pickle(Reduce(eval, code[5])), m[5], "builtins.eval"),
        Case("builtins.exec", object_array_pickle(Reduce(exec, code[6])), m[6], "builtins.exec"),
        Case("builtins.__import__ then getattr",
             b"cbuiltins\n__import__\n(S'os'\ntRp0\n0cbuiltins\ngetattr\n(g0\nS'system'\ntR("
             + _text_op(touch[7]) + b"tR.", m[7], "builtins.__import__"),
        Case("getattr(__import__('os'), 'system')",
             b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(" + _text_op(touch[8])
             + b"tR.", m[8], "builtins.getattr"),
        Case("copyreg._reconstructor(Popen)",
             object_array_pickle(Reduce(copyreg._reconstructor, subprocess.Popen, subprocess.Popen,
                                        ["touch", str(m[9])])), m[9], "copyreg._reconstructor"),
        Case("functools.partial", object_array_pickle(Reduce(functools.partial(os.system, touch[10]))), m[10],
             "functools.partial"),
        Case("inside a dict in a 0-d object array (ops.npy)",
             object_array_pickle({"Ly": 128, "meanImg": np.zeros((4, 4), np.float32),
                                  "save_path": PurePosixPath("/data"), "evil": Reduce(os.system, touch[11])}),
             m[11], system),
        Case("inside a list of stat dicts (stat.npy)",
             pickle.dumps(np.array([stat_ok, stat_evil], dtype=object), protocol=4), m[12], "subprocess.call",
             (2,)),
        Case("numpy.save", object_array_pickle(Reduce(np.save, str(m[13]) + ".npy", np.arange(3))),
             Path(str(m[13]) + ".npy"), "numpy.save"),
        Case("numpy.testing runstring", object_array_pickle(Reduce(np.testing.runstring, code[14], {})),
             m[14], "numpy.testing._private.utils.runstring"),
        Case("os.system, hand-written protocol 5 STACK_GLOBAL",
             b"\x80\x05\x8c\x02os\x8c\x06system\x93" + _binunicode(touch[15]) + b"\x85R.", m[15],
             "os.system"),
        Case("nt.system (a Windows pickle)", b"cnt\nsystem\n(" + _text_op(touch[16]) + b"tR.", m[16],
             "nt.system", runs_here=os.name == "nt"),
        # protocol 2 writes Python 2 names: "commands run"
        Case("subprocess.run in protocol 2",
             object_array_pickle(Reduce(subprocess.run, ["touch", str(m[17])]), protocol=2), m[17],
             "subprocess.run"),
        Case("os.popen", object_array_pickle(Reduce(os.popen, touch[18])), m[18], "os.popen"),
        Case("builtins.open for writing", object_array_pickle(Reduce(open, str(m[19]), "w")), m[19],
             "io.open"),
        Case("deep inside dict > list > tuple > dict",
             object_array_pickle({"plane0": [({"ops": {"evil": Reduce(os.system, touch[20])}},)]}), m[20],
             system),
        Case("getattr(__import__('os'), 'system'), hand-written protocol 4",
             b"\x80\x04cbuiltins\ngetattr\ncbuiltins\n__import__\n\x8c\x02os\x85R\x8c\x06system\x86R"
             + _binunicode(touch[21]) + b"\x85R.", m[21], "builtins.getattr"),
    ]


def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path: Path) -> None:
    cases = corpus(tmp_path / "markers")
    assert len(cases) >= 10
    outcomes: dict[str, Any] = {}
    for i, case in enumerate(cases):
        path = write_malicious_npy(tmp_path / f"evil{i}.npy", case.payload, case.shape)
        try:
            load_npy(path)
            outcomes[case.name] = None
        except UnsafePickle as e:
            outcomes[case.name] = e
    time.sleep(0.5)  # anything started in the background (Popen) would have touched its marker by now
    ran = [c.name for c in cases if c.marker.exists()]
    right = [c.name for c in cases if (e := outcomes[c.name]) is not None and e.refused == c.refused
             and c.refused in str(e) and "nothing in the file was run" in str(e)]
    record("security", test="hostile pickles (code execution)", tried=len(cases), refused=len(right),
           passed=len(right) == len(cases) and not ran, detail=f"ran: {ran}")
    for i, case in enumerate(cases):
        error = outcomes[case.name]
        assert error is not None, f"{case.name}: loaded"
        message = str(error)
        assert str(tmp_path / f"evil{i}.npy") in message, case.name
        assert case.refused in message and error.refused == case.refused, (case.name, message)
        assert "nothing in the file was run" in message
    assert not ran


def test_the_corpus_really_runs_code_under_plain_numpy(tmp_path: Path) -> None:
    """Control: np.load(allow_pickle=True) of the same files, in a child process, creates every
    marker; so the refusals above are what kept them from existing."""
    cases = [c for c in corpus(tmp_path / "markers") if c.runs_here]
    paths = [write_malicious_npy(tmp_path / f"evil{i}.npy", c.payload, c.shape) for i, c in enumerate(cases)]
    script = ("import sys, numpy as np\n"
              "for p in sys.argv[1:]:\n"
              "    try:\n"
              "        np.load(p, allow_pickle=True)\n"
              "    except Exception:\n"
              "        pass\n")
    subprocess.run([sys.executable, "-c", script, *map(str, paths)], cwd=tmp_path, timeout=120,
                   capture_output=True, check=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(c.marker.exists() for c in cases):
        time.sleep(0.1)
    assert [c.name for c in cases if not c.marker.exists()] == []


# --- memory-unsafe numpy constructs ---------------------------------------------------------------

DTYPE_O = b"cnumpy\ndtype\n(X\x02\x00\x00\x00O8I00\nI01\ntR"  # np.dtype('O8', False, True)
DTYPE_O_SHARED = b"cnumpy\ndtype\n(X\x02\x00\x00\x00O8I00\nI00\ntR"  # copy=False: numpy's own instance
DTYPE_V8 = b"cnumpy\ndtype\n(X\x02\x00\x00\x00V8I00\nI01\ntR"


def _dtype_state(endian: str, elsize: int, alignment: int, flags: int) -> bytes:
    """BUILD with a version-3 dtype state (endian, no subarray/names/fields, size, alignment, flags)."""
    return (b"(I3\n" + _binunicode(endian) + b"NNNI" + str(elsize).encode() + b"\nI"
            + str(alignment).encode() + b"\nI" + str(flags).encode() + b"\ntb")


UNSAFE_NUMPY = {
    # numpy.ndarray((1,), dtype('O'), b'AAAAAAAA'): "objects" read from raw bytes -> segfault
    "ndarray called directly": (b"\x80\x02cnumpy\nndarray\nI1\n\x85" + DTYPE_O + b"C\x08AAAAAAAA\x87R.",
                                (1,), "numpy.ndarray"),
    "ndarray.__new__ via NEWOBJ": (b"\x80\x02cnumpy\nndarray\nI1\n\x85" + DTYPE_O + b"C\x08AAAAAAAA\x87\x81.",
                                   (1,), "numpy.ndarray"),
    # dtype('O') told it holds no objects, then an array of it filled from raw bytes
    "object dtype with its flags cleared": (b"\x80\x02" + DTYPE_O + _dtype_state("|", -1, -1, 0) + b".", (),
                                            "numpy.dtype"),
    # dtype('V8') told it holds objects
    "void dtype flagged as holding objects": (b"\x80\x02" + DTYPE_V8 + _dtype_state("|", 8, 1, 63) + b".", (),
                                              "numpy.dtype"),
    # the same on numpy's shared dtype('O'): would retune every object array in the process
    "numpy's shared object dtype retuned": (
        b"\x80\x02" + DTYPE_O_SHARED + _dtype_state("|", -1, -1, 0) + b".", (), "numpy.dtype"),
    "structured dtype with an object field": (pickle.dumps(np.zeros(1, dtype=[("a", "O")]), protocol=2),
                                              (1,), "numpy.dtype"),
}


@pytest.mark.parametrize("name", list(UNSAFE_NUMPY))
def test_memory_unsafe_numpy_pickles_are_refused(tmp_path: Path, name: str) -> None:
    payload, shape, refused = UNSAFE_NUMPY[name]
    path = write_malicious_npy(tmp_path / "stat.npy", payload, shape)
    try:
        load_npy(path)
        got = None
    except UnsafePickle as e:
        got = e.refused
    record("security", test=f"hostile pickle (memory): {name}", tried=1, refused=int(got == refused))
    with pytest.raises(UnsafePickle) as info:
        load_npy(path)
    assert info.value.refused == refused and str(path) in str(info.value)
    assert np.dtype("O").flags == 63 and np.dtype("V8").flags == 0  # numpy's own dtypes untouched


def test_raw_memory_array_crashes_plain_numpy(tmp_path: Path) -> None:
    """Control for the first case above: numpy's own loader builds the array and reading it
    crashes the interpreter."""
    path = write_malicious_npy(tmp_path / "stat.npy", UNSAFE_NUMPY["ndarray called directly"][0], (1,))
    child = subprocess.run([sys.executable, "-c", f"import numpy as np; print(np.load({str(path)!r}, "
                                                  "allow_pickle=True)[0])"],
                           capture_output=True, timeout=60, check=False)
    assert child.returncode < 0  # killed by a signal (SIGSEGV)


@pytest.mark.parametrize(("name", "payload", "refused"), [
    ("state set on a path", b"\x80\x02cpathlib\nPurePosixPath\nX\x01\x00\x00\x00a\x85R}b.",
     "pathlib.PurePosixPath"),
    ("copyreg extension code", b"\x80\x02\x82\x01.", "copyreg extension"),
    ("persistent id", b"P1\n.", "persistent id"),
    ("_codecs.encode with another codec",
     b"\x80\x02c_codecs\nencode\n" + _binunicode("a") + _binunicode("rot13") + b"\x86R.", "_codecs.encode"),
])
def test_other_calls_are_refused(tmp_path: Path, name: str, payload: bytes, refused: str) -> None:
    path = write_malicious_npy(tmp_path / "ops.npy", payload)
    try:
        load_npy(path)
        got = None
    except UnsafePickle as e:
        got = e.refused
    record("security", test=f"hostile pickle (other): {name}", tried=1, refused=int(got == refused))
    with pytest.raises(UnsafePickle) as info:
        load_npy(path)
    assert info.value.refused == refused, name


# --- damaged files ----------------------------------------------------------------------------------


def _fixture_bytes(*parts: str) -> bytes:
    return shared_fixture("suite2p", "twochan", "suite2p", "plane0", *parts).read_bytes()


@pytest.mark.parametrize("mmap", [False, True])
def test_truncated_trace_file(tmp_path: Path, mmap: bool) -> None:
    path = tmp_path / "F.npy"
    np.save(path, np.arange(15 * 500, dtype=np.float32).reshape(15, 500))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(NpyError) as info:
        load_npy(path, mmap=mmap)
    assert type(info.value) is NpyError and str(path) in str(info.value)


def test_truncated_pickle(tmp_path: Path) -> None:
    data = _fixture_bytes("ops.npy")
    for cut in (100, len(data) // 2, len(data) - 1):
        path = tmp_path / f"ops{cut}.npy"
        path.write_bytes(data[:cut])
        with pytest.raises(NpyError) as info:
            load_npy(path)
        assert type(info.value) is NpyError and str(path) in str(info.value)


@pytest.mark.parametrize(("name", "content"), [
    ("garbage", b"this is not a numpy file at all" * 10),
    ("empty", b""),
    ("header only", b"\x93NUMPY\x01\x00"),
    ("a bare pickle", pickle.dumps({"a": 1})),
    ("pickle of a dict, not an array", None),
])
def test_damaged_files(tmp_path: Path, name: str, content: bytes | None) -> None:
    path = tmp_path / "stat.npy"
    if content is None:
        write_malicious_npy(path, pickle.dumps({"a": 1}))
    else:
        path.write_bytes(content)
    with pytest.raises(NpyError) as info:
        load_npy(path)
    assert type(info.value) is NpyError and str(path) in str(info.value), name


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NpyError) as info:
        load_npy(tmp_path / "nope.npy")
    assert str(tmp_path / "nope.npy") in str(info.value)


def test_module_never_imports_suite2p() -> None:
    source = (REPO / "daemon" / "rig2nwb" / "suite2p" / "safepickle.py").read_text()
    assert "import suite2p" not in source
    child = subprocess.run([sys.executable, "-c", "import sys, rig2nwb.suite2p.safepickle, "
                                                  "rig2nwb.suite2p.folder; "
                                                  "print('suite2p' in sys.modules)"],
                           capture_output=True, text=True, timeout=60, check=True)
    assert child.stdout.strip() == "False"
