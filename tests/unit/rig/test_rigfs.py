"""The one safe way into the rig folder (rigfs), and the limits on what an input may declare.

Everything here runs on real files made by the test: links, FIFOs, replaced files, trees 1,200
folders deep, pickles nested 5,000 deep. Expectations are the kernel's own (what was opened is
checked with os.fstat on the test's side) or plain facts of the input.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rig2nwb.config.loading import _collision_warnings, parse_toml, toml_nesting
from rig2nwb.core.names import is_safe_name, printable
from rig2nwb.errors import NpyError, UnsafeRigPath
from rig2nwb.rig.safeopen import FileId, FolderFilter, list_rig_dir, open_rig_file, walk_rig
from rig2nwb.suite2p.safepickle import MAX_DEPTH, load_npy, structure_problem
from rig2nwb.testing.filetrees import remove_deep

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX links and FIFOs")


@pytest.fixture
def rig(tmp_path: Path) -> Path:
    root = tmp_path / "rig"
    (root / "m1" / "s1").mkdir(parents=True)
    (root / "m1" / "s1" / "a.tif").write_bytes(b"inside")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.tif").write_bytes(b"SECRET")
    return root


def test_regular_file_inside_is_read(rig: Path) -> None:
    with open_rig_file(rig, rig / "m1" / "s1" / "a.tif") as fh:
        assert fh.read() == b"inside"
    with open_rig_file(rig, "m1/s1/a.tif") as fh:  # relative to the root
        assert fh.read() == b"inside"


def test_links_are_refused_wherever_they_are(rig: Path, tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.tif"
    (rig / "m1" / "s1" / "link.tif").symlink_to(secret)
    (rig / "m1" / "s1" / "inner.tif").symlink_to(rig / "m1" / "s1" / "a.tif")  # even inside
    (rig / "m2").symlink_to(tmp_path / "outside", target_is_directory=True)
    for rel in ("m1/s1/link.tif", "m1/s1/inner.tif", "m2/secret.tif"):
        with pytest.raises(UnsafeRigPath) as err:
            open_rig_file(rig, rel)
        assert err.value.code == "symlink", rel
        assert "symbolic link" in err.value.message


def test_a_root_that_is_a_link_is_the_admins_choice(rig: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(rig, target_is_directory=True)
    with open_rig_file(alias, "m1/s1/a.tif") as fh:
        assert fh.read() == b"inside"


def test_paths_outside_the_root_are_refused(rig: Path, tmp_path: Path) -> None:
    for path in (tmp_path / "outside" / "secret.tif", rig / ".." / "outside" / "secret.tif",
                 "../outside/secret.tif"):
        with pytest.raises(UnsafeRigPath) as err:
            open_rig_file(rig, path)
        assert err.value.code == "outside_root"


def test_a_fifo_opens_at_once_and_is_refused(rig: Path) -> None:
    fifo = rig / "m1" / "s1" / "x_00001.tif"
    os.mkfifo(fifo)
    done = threading.Event()
    outcome: list[BaseException] = []

    def try_open() -> None:
        try:
            open_rig_file(rig, fifo)
        except BaseException as exc:  # what we expect
            outcome.append(exc)
        done.set()

    threading.Thread(target=try_open, daemon=True).start()
    assert done.wait(5), "opening a FIFO blocked"  # a plain open() would wait for a writer
    assert isinstance(outcome[0], UnsafeRigPath) and outcome[0].code == "not_regular"
    assert "named pipe (FIFO)" in outcome[0].message


def test_the_file_read_is_the_file_that_was_looked_at(rig: Path, tmp_path: Path) -> None:
    path = rig / "m1" / "s1" / "a.tif"
    seen = FileId.of(os.lstat(path))
    with open_rig_file(rig, path, expect=seen) as fh:
        assert fh.read() == b"inside"
    replacement = rig / "m1" / "s1" / ".new"
    replacement.write_bytes(b"inside")  # same size, another file
    os.utime(replacement, ns=(seen.mtime_ns, seen.mtime_ns))
    os.replace(replacement, path)
    with pytest.raises(UnsafeRigPath) as err:
        open_rig_file(rig, path, expect=seen)
    assert err.value.code == "replaced" and err.value.transient
    now = FileId.of(os.lstat(path))
    path.write_bytes(b"inside+more")  # the same file (inode), other content
    with pytest.raises(UnsafeRigPath) as err:
        open_rig_file(rig, path, expect=now)
    assert err.value.code == "changed"


def test_swapping_a_file_for_a_link_never_reads_the_target(rig: Path, tmp_path: Path) -> None:
    """The race, deliberately: a thread swaps the file for a link to a secret in a loop."""
    path = rig / "m1" / "s1" / "a.tif"
    secret = tmp_path / "outside" / "secret.tif"
    stop = threading.Event()

    def swap() -> None:
        link, real = rig / "m1" / "s1" / ".link", rig / "m1" / "s1" / ".real"
        while not stop.is_set():
            link.unlink(missing_ok=True)
            link.symlink_to(secret)
            os.replace(link, path)
            real.write_bytes(b"inside")
            os.replace(real, path)

    t = threading.Thread(target=swap, daemon=True)
    t.start()
    reads = refused = 0
    deadline = time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline:
            try:
                with open_rig_file(rig, path) as fh:
                    assert fh.read() == b"inside"  # never SECRET
                    reads += 1
            except UnsafeRigPath as exc:
                assert exc.code == "symlink"
                refused += 1
            except FileNotFoundError:
                pass
    finally:
        stop.set()
        t.join(5)
    assert reads > 0 and refused > 0, (reads, refused)


def test_walk_is_iterative_bounded_and_never_follows_links(rig: Path, tmp_path: Path,
                                                          request: pytest.FixtureRequest) -> None:
    # 1,200 folders deep: os.walk raised RecursionError on this.
    deep = rig / "m1" / "deep"
    deep.mkdir()
    request.addfinalizer(lambda: remove_deep(deep))  # pytest's own cleanup would recurse
    fd = os.open(deep, os.O_RDONLY)
    try:
        for _ in range(1200):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    (rig / "m1" / "elsewhere").symlink_to(tmp_path / "outside", target_is_directory=True)
    folders = FolderFilter(["{subject}/{session}/*.tif"])
    assert folders.max_depth == 2
    seen = [parts for parts, _ in walk_rig(rig, rig, folders)]
    assert seen == [[], ["m1"], ["m1", "deep"], ["m1", "s1"]]  # 'elsewhere' is a link: listed,
    names = {e.name: e for _, entries in walk_rig(rig, rig, folders) for e in entries}
    assert names["elsewhere"].is_link and not names["elsewhere"].is_dir  # never entered


def test_walk_skips_folders_no_pattern_can_match(rig: Path) -> None:
    (rig / "m1" / "tif" / "site1" / "s2").mkdir(parents=True)
    (rig / "notes" / "a" / "b").mkdir(parents=True)
    folders = FolderFilter(["{subject}/tif/{site}/{session}/*.tif", "{subject}/txt/{session}_scan.txt"])
    seen = ["/".join(p) for p, _ in walk_rig(rig, rig, folders)]
    assert "m1/tif/site1/s2" in seen
    assert "m1/s1" not in seen  # neither "tif" nor "txt"
    assert "notes/a" not in seen  # "a" is neither "tif" nor "txt"


def test_walk_stops_when_asked(rig: Path) -> None:
    for i in range(50):
        (rig / f"m{i}" / "s").mkdir(parents=True, exist_ok=True)
    calls = iter(range(1000))
    got = list(walk_rig(rig, rig, FolderFilter(["{subject}/{session}/*.tif"]),
                        stop=lambda: next(calls) >= 3))
    assert len(got) == 3


def test_listing_does_not_stat_what_is_not_wanted(rig: Path) -> None:
    entries = list_rig_dir(rig, "m1/s1", only=lambda name: name != "a.tif")
    assert entries == []


# --- limits on what an input declares ---------------------------------------------------------

def test_pickles_nested_too_deep_or_too_large_are_refused(tmp_path: Path) -> None:
    deep: list[object] = []
    cur = deep
    for _ in range(5000):
        nxt: list[object] = []
        cur.append(nxt)
        cur = nxt
    path = tmp_path / "ops.npy"
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)
    try:
        np.save(path, np.array({"x": deep}, dtype=object), allow_pickle=True)
    finally:
        sys.setrecursionlimit(old)
    with pytest.raises(NpyError) as err:
        load_npy(path)
    assert f"nest more than {MAX_DEPTH} levels deep" in err.value.problem
    shared: list[object] = [list(range(10))]
    for _ in range(40):  # 2**40 leaves once expanded, a few hundred bytes pickled
        shared = [shared, shared]
    assert "more than" in (structure_problem(np.array({"x": shared}, dtype=object)) or "")
    cyclic: list[object] = []
    cyclic.append(cyclic)
    assert "cycle" in (structure_problem(np.array({"x": cyclic}, dtype=object)) or "")
    # suite2p's own sizes pass: 5,000 ROIs
    stat = np.array([{"ypix": np.arange(80), "xpix": np.arange(80), "lam": np.ones(80)}
                     for _ in range(5000)], dtype=object)
    assert structure_problem(stat) is None


def test_toml_nesting_is_refused_before_tomllib_recurses() -> None:
    assert toml_nesting('a = [[1, 2], [3]]\n[b]\nc = "[[[["  # [[[[\n') == 2
    with pytest.raises(ValueError, match="nested more than"):
        parse_toml("a = " + "[" * 3000)
    assert parse_toml('x = [[1]]\ny = { z = [2] }') == {"x": [[1]], "y": {"z": [2]}}


def test_names_with_control_characters_are_unsafe_and_shown_escaped() -> None:
    for bad in ("a\nb", "s\x1b[2J1", "x\u202ey", "tab\there", "bell\x07"):
        assert not is_safe_name(bad), repr(bad)
    for good in ("s1", "mouse 01 (ü)", "2024-01-05_a"):
        assert is_safe_name(good)
    assert printable("a\x1b[2Jb\nc") == "a\\x1b[2Jb\\x0ac"
    assert printable("plain ü") == "plain ü"


def test_nwb_name_patterns_that_can_collide_are_warned_about() -> None:
    assert _collision_warnings("{subject}_{session}.nwb")
    assert _collision_warnings("{subject}{session}.nwb")
    assert not _collision_warnings("sub-{subject}_ses-{session}.nwb")
    assert not _collision_warnings("{session}.nwb")
