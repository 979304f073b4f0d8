"""The rig index against a fake rig folder: its file-system calls and clock are parameters
(rig.index), so every rule here runs without a disk and without sleeping. The fake tree is a
dict of path -> (kind, size, mtime); what the index should hold follows from it."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rig2nwb.config.loading import validate_config
from rig2nwb.config.schema import Config
from rig2nwb.errors import UnsafeRigPath
from rig2nwb.rig.index import RigIndex
from rig2nwb.rig.safeopen import Entry, FolderFilter

ROOT = Path("/rig")
TIFF = "m1/tif/site1/s1/r_00001.tif"
TIFF2 = "m1/tif/site1/s1/r_00002.tif"
SCAN = "m1/txt/s1_scan.txt"


def _stat(kind: str, size: int = 0, mtime_ns: int = 0, ino: int = 1) -> os.stat_result:
    mode = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "link": stat.S_IFLNK,
            "fifo": stat.S_IFIFO}[kind] | 0o644
    return os.stat_result((mode, ino, 1, 1, 0, 0, size, 0, mtime_ns // 10**9, 0))


def _with_ns(st: os.stat_result, mtime_ns: int) -> os.stat_result:
    class S:  # os.stat_result cannot be given st_mtime_ns directly
        def __getattr__(self, name: str) -> Any:
            return mtime_ns if name == "st_mtime_ns" else getattr(st, name)
    return S()  # type: ignore[return-value]


class FakeRig:
    """A rig folder in a dict: rel path -> (kind, size, mtime_ns); folders are implied."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[str, int, int]] = {}
        self.reachable = True
        self.mounted = False
        self.now = 1000.0
        self.lstats = 0

    def put(self, rel: str, size: int = 100, mtime_ns: int = 1, kind: str = "file") -> None:
        self.files[rel] = (kind, size, mtime_ns)

    def _st(self, rel: str) -> os.stat_result:
        kind, size, mtime = self.files[rel]
        return _with_ns(_stat(kind, size, mtime, ino=hash(rel) & 0xFFFF), mtime)

    def _children(self, folder: str) -> dict[str, str]:
        prefix = f"{folder}/" if folder else ""
        out: dict[str, str] = {}
        for rel in self.files:
            if rel.startswith(prefix):
                head, _, rest = rel[len(prefix):].partition("/")
                out[head] = "dir" if rest else "file"
        return out

    # --- what RigIndex is given ---
    def lstat(self, root: Path, rel: str) -> os.stat_result:
        self.lstats += 1
        if rel not in self.files:
            raise FileNotFoundError(rel)
        return self._st(rel)

    def listdir(self, root: Path, folder: Path | str, *, only: Callable[[str], bool] | None = None
                ) -> list[Entry]:
        rel = "" if Path(folder) == root else str(folder)
        out = []
        for name, kind in sorted(self._children(rel).items()):
            if only is not None and not only(name):
                continue
            path = f"{rel}/{name}" if rel else name
            out.append(Entry(name, self._st(path) if kind == "file" else _stat("dir")))
        return out

    def walk(self, root: Path, start: Path, folders: FolderFilter, stop: Callable[[], bool]
             ) -> Iterable[tuple[list[str], list[Entry]]]:
        stack: list[list[str]] = [[]]
        while stack:
            parts = stack.pop()
            entries = self.listdir(root, Path(*parts) if parts else root)
            yield parts, entries
            stack += [[*parts, e.name] for e in entries if e.is_dir]

    def root_state(self, root: Path) -> tuple[bool, bool]:
        return self.reachable, self.mounted and self.reachable


class Events:
    def __init__(self) -> None:
        self.log: list[tuple[str, ...]] = []

    def unreachable(self, root: Path) -> None:
        self.log.append(("unreachable",))

    def reachable(self, root: Path) -> None:
        self.log.append(("reachable",))

    def not_regular(self, rel: str, message: str, values: dict[str, str] | None) -> None:
        self.log.append(("not_regular", rel, message, (values or {}).get("session", "")))

    def regular(self, rel: str) -> None:
        pass

    def forgotten(self, rel: str) -> None:
        self.log.append(("forgotten", rel))


def _cfg() -> Config:
    return validate_config({"rig": {"root": str(ROOT)}, "output": {"folder": "/out"},
                            "state": {"folder": "/state"}}, base=Path("/"), check_paths=False)


def _index(rig: FakeRig, events: Events) -> RigIndex:
    return RigIndex(_cfg(), events, lstat=rig.lstat, listdir=rig.listdir, walk=rig.walk,
                    root_state=rig.root_state, clock=lambda: rig.now)


def test_a_scan_finds_tiffs_and_lab_files_by_their_patterns() -> None:
    rig, events = FakeRig(), Events()
    rig.put(TIFF, size=4096)
    rig.put(SCAN)
    rig.put("m1/tif/site1/s1/notes.txt")  # no pattern takes it
    index = _index(rig, events)
    present = index.full_scan()
    assert present == {TIFF, SCAN, "m1/tif/site1/s1/notes.txt"}
    assert list(index.tiffs) == [TIFF]
    obs = index.tiffs[TIFF]
    assert (obs.key, obs.site, obs.size, obs.changed_at) == (("m1", "s1"), "site1", 4096, 1000.0)
    assert index.lab_of(("m1", "s1")).scan == SCAN and index.lab_of(("m1", "s1")).trial == ""
    assert index.dirty == {("m1", "s1")} and index.changed == {TIFF}


def test_a_change_restarts_the_settle_clock_and_an_unchanged_rescan_does_nothing() -> None:
    rig, events = FakeRig(), Events()
    rig.put(TIFF, size=100, mtime_ns=5)
    index = _index(rig, events)
    index.full_scan()
    index.dirty.clear()
    index.changed.clear()
    rig.now = 1010.0
    index.full_scan()
    assert index.tiffs[TIFF].changed_at == 1000.0 and not index.dirty and not index.changed
    rig.put(TIFF, size=200, mtime_ns=6)
    rig.now = 1020.0
    index.full_scan()
    assert index.tiffs[TIFF].changed_at == 1020.0 and index.tiffs[TIFF].size == 200
    assert ("forgotten", TIFF) in events.log  # what was read of the old version is stale


def test_a_deleted_tiff_leaves_the_index_and_marks_its_session() -> None:
    rig, events = FakeRig(), Events()
    rig.put(TIFF)
    index = _index(rig, events)
    index.full_scan()
    index.dirty.clear()
    del rig.files[TIFF]
    index.full_scan()
    assert index.tiffs == {} and index.dirty == {("m1", "s1")}


def test_links_and_fifos_are_reported_never_taken() -> None:
    rig, events = FakeRig(), Events()
    rig.put(TIFF, kind="link")
    rig.put(TIFF2, kind="fifo")
    index = _index(rig, events)
    index.full_scan()
    assert index.tiffs == {}
    reported = {e[1]: e[2] for e in events.log if e[0] == "not_regular"}
    assert set(reported) == {TIFF, TIFF2}
    assert "named pipe (FIFO)" in reported[TIFF2]
    assert all(e[3] == "s1" for e in events.log if e[0] == "not_regular")  # its session


def test_an_unreachable_rig_folder_deletes_nothing_and_is_told_once() -> None:
    rig, events = FakeRig(), Events()
    rig.put(TIFF)
    index = _index(rig, events)
    index.full_scan()
    rig.reachable = False
    assert index.full_scan() is None and index.full_scan() is None
    assert list(index.tiffs) == [TIFF]  # an outage is not a deletion
    assert events.log.count(("unreachable",)) == 1
    rig.reachable = True
    index.full_scan()
    assert events.log.count(("reachable",)) == 1 and list(index.tiffs) == [TIFF]


def test_a_share_unmounted_from_its_mount_point_is_unreachable() -> None:
    rig, events = FakeRig(), Events()
    rig.put(TIFF)
    rig.mounted = True
    index = _index(rig, events)
    index.full_scan()
    rig.mounted = False  # the empty folder left behind by the unmount
    del rig.files[TIFF]
    assert index.full_scan() is None and list(index.tiffs) == [TIFF]


def test_restat_finds_new_files_of_unfinished_sessions_only() -> None:
    rig, events = FakeRig(), Events()
    rig.put(TIFF)
    rig.put("m1/tif/site1/s9/r_00001.tif")
    index = _index(rig, events)
    index.full_scan()
    rig.put(TIFF2)
    rig.put("m1/tif/site1/s9/r_00002.tif")
    index.restat_pending(pending=[], unfinished={("m1", "s1")})
    assert TIFF2 in index.tiffs and "m1/tif/site1/s9/r_00002.tif" not in index.tiffs


def test_restat_of_pending_files_sees_growth_without_events() -> None:
    rig, events = FakeRig(), Events()
    rig.put(TIFF, size=100, mtime_ns=1)
    index = _index(rig, events)
    index.full_scan()
    rig.put(TIFF, size=300, mtime_ns=2)
    rig.now = 1005.0
    before = rig.lstats
    index.restat_pending(pending=[TIFF], unfinished=set())
    assert index.tiffs[TIFF].size == 300 and index.tiffs[TIFF].changed_at == 1005.0
    assert rig.lstats == before + 1  # one lstat for the one pending file


def test_a_watcher_event_outside_the_root_is_ignored() -> None:
    rig, events = FakeRig(), Events()
    index = _index(rig, events)
    index.observe(Path("/elsewhere/m1/tif/site1/s1/r_00001.tif"), "created")
    assert index.tiffs == {} and rig.lstats == 0


def test_an_unsafe_path_from_lstat_forgets_the_file() -> None:
    rig, events = FakeRig(), Events()
    rig.put(TIFF)
    index = _index(rig, events)
    index.full_scan()

    def refuse(root: Path, rel: str) -> os.stat_result:
        raise UnsafeRigPath("symlink", f"{rel}: a folder on the way is a link")

    index._lstat = refuse
    index.observe(ROOT / TIFF, "created")
    assert index.tiffs == {}
