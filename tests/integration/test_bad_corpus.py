"""The bad-input corpus: hostile and broken rig inputs, all fed to one real service run.

Every case lives in its own subject folder of one rig folder, next to a good session; the
service (the real worker loop, in this process) runs once over all of them, and each case is
then checked by ``check_case``, the one harness every case goes through:

- the documented outcome: a clear problem naming the file and what is wrong, visible in
  ``rig2nwb status`` (``collect``, the ``status --json`` contract) and in the ledger's problems;
  or, for inputs the README says are accepted, a converted session with exactly the frames the
  test wrote; or, for links out of the rig folder, nothing read through them;
- the good session converted alongside, frames bit-identical to what the test wrote;
- the case's rig files unchanged (sha256 before and after) and no new files among them;
- nothing half-written: no ``*.creating.nwb``; every NWB file of the case opens with h5py and
  pynwb.

One shared run keeps the corpus fast (the sessions are converted side by side, as on a real rig);
each case is still its own test id and figure. Expected frames and texts come from what the test
wrote, never from rig2nwb.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tifffile

from rig2nwb.config.loading import load_config
from rig2nwb.errors import ConfigError
from rig2nwb.ledger.store import Ledger
from rig2nwb.outputs.status import collect
from rig2nwb.testing.figures import record
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.nwbfiles import nwb_frames
from rig2nwb.testing.services import run_service
from rig2nwb.testing.suite2p_folders import make_synthetic_folder
from rig2nwb.testing.tiffs import random_frames, write_tiff

SHAPE = (32, 48)
GOOD = ("good", "s1")
BIG_OFFSET = (4 << 30) + 4096  # page data of the BigTIFF case start past 4 GiB


@dataclass
class Case:
    """One bad input. ``build(case, lab, outside)`` writes it into the case's own subject folder
    (``outside`` is a folder beside the rig folder, for link targets)."""

    id: str
    build: Callable[[Case, Lab, Path], None]
    outcome: str  # "problem" | "accepted" | "not_followed" | "suite2p_problem" | "suite2p_warning"
    expect: tuple[str, ...] = ()  # fragments that one problem line must all contain
    session: str = "s1"
    frames: np.ndarray | None = None  # what the case's NWB file must hold, when it has one
    nwb_expected: bool = True
    notes: dict[str, Any] = field(default_factory=dict)
    verify: Callable[[Case, Path], None] | None = None  # further checks on the case's NWB file

    @property
    def subject(self) -> str:
        return "c-" + self.id.replace("_", "-")


# --- builders ------------------------------------------------------------------------------------


def _frames(case: Case, n: int = 6, seed: int = 1) -> np.ndarray:
    return random_frames(n, SHAPE, seed=seed)


def _tiff_dir(case: Case, lab: Lab, session: str | None = None, subject: str | None = None) -> Path:
    return lab.session_dir(session or case.session, subject or case.subject)


def _lab_files(case: Case, lab: Lab, n: int, scan: str | bytes | None = None,
               trial: str | bytes | None = None) -> None:
    lab.lab_files(case.session, case.subject, n_frames=n)
    txt = lab.root / case.subject / "txt"
    for suffix, content in (("scan", scan), ("trial", trial)):
        if content is not None:
            data = content.encode() if isinstance(content, str) else content
            (txt / f"{case.session}_{suffix}.txt").write_bytes(data)


def _good_then(bad: Callable[[Path], None]) -> Callable[[Case, Lab, Path], None]:
    """A session of good file, bad file, good file: the good ones must land, the bad reported."""
    def build(case: Case, lab: Lab, outside: Path) -> None:
        a, b = _frames(case, 5, 1), _frames(case, 4, 2)
        folder = _tiff_dir(case, lab)
        write_tiff(folder / "x_00001.tif", a)
        bad(folder / "x_00002.tif")
        write_tiff(folder / "x_00003.tif", b)
        _lab_files(case, lab, len(a) + len(b))
        case.frames = np.concatenate([a, b])
    return build


def _ifd_past_end(path: Path) -> None:
    write_tiff(path, random_frames(3, SHAPE, seed=7))
    data = bytearray(path.read_bytes())
    # Classic little-endian TIFF: the first IFD's offset is at byte 4.
    struct.pack_into("<I", data, 4, len(data) + 10_000)
    path.write_bytes(bytes(data))


def _ifd_loop(path: Path) -> None:
    write_tiff(path, random_frames(3, SHAPE, seed=8))
    data = bytearray(path.read_bytes())
    first = struct.unpack_from("<I", data, 4)[0]
    entries = struct.unpack_from("<H", data, first)[0]
    second_ptr = first + 2 + 12 * entries  # the "next IFD" field of page 0
    second = struct.unpack_from("<I", data, second_ptr)[0]
    n2 = struct.unpack_from("<H", data, second)[0]
    struct.pack_into("<I", data, second + 2 + 12 * n2, first)  # page 1 -> page 0 -> page 1 ...
    path.write_bytes(bytes(data))


def _mixed_dtype_pages(path: Path) -> None:
    with tifffile.TiffWriter(path) as tw:
        tw.write(random_frames(1, SHAPE, seed=3)[0], contiguous=False, photometric="minisblack")
        tw.write(random_frames(1, SHAPE, seed=4, dtype="uint16")[0], contiguous=False,
                 photometric="minisblack")


def write_sparse_bigtiff(path: Path, frames: np.ndarray, data_offset: int) -> None:
    """A BigTIFF written by hand: IFDs right after the header, page data from ``data_offset``
    (past 4 GiB: 64-bit offsets needed), the hole before it left sparse."""
    n, h, w = frames.shape
    fmt = {np.dtype("int16"): 2, np.dtype("uint16"): 1}[frames.dtype]
    page_bytes = h * w * frames.dtype.itemsize
    ifd_size = 8 + 20 * 10 + 8  # count, ten 20-byte entries, next-IFD offset
    with open(path, "wb") as f:
        f.write(b"II" + struct.pack("<HHHQ", 43, 8, 0, 16))
        for i in range(n):
            entries = [  # (tag, type, count, value): SHORT=3, LONG=4, LONG8=16; sorted by tag
                (256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1),
                (273, 16, 1, data_offset + i * page_bytes), (277, 3, 1, 1), (278, 4, 1, h),
                (279, 16, 1, page_bytes), (339, 3, 1, fmt),
            ]
            f.seek(16 + i * ifd_size)
            f.write(struct.pack("<Q", len(entries)))
            for tag, typ, count, value in entries:
                f.write(struct.pack("<HHQQ", tag, typ, count, value))
            f.write(struct.pack("<Q", 16 + (i + 1) * ifd_size if i + 1 < n else 0))
        for i, frame in enumerate(frames):
            f.seek(data_offset + i * page_bytes)
            f.write(np.ascontiguousarray(frame, dtype=frames.dtype.newbyteorder("<")).tobytes())


def _bigtiff(case: Case, lab: Lab, outside: Path) -> None:
    frames = _frames(case, 5, 11)
    path = _tiff_dir(case, lab) / "x_00001.tif"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_sparse_bigtiff(path, frames, BIG_OFFSET)
    # The independent check that the file is what it claims: tifffile reads it back.
    with tifffile.TiffFile(path) as tf:
        assert tf.is_bigtiff
        got = np.stack([p.asarray() for p in tf.pages])
    assert np.array_equal(got, frames)
    _lab_files(case, lab, len(frames))
    case.frames = frames


def _with_scan(scan: str | bytes) -> Callable[[Case, Lab, Path], None]:
    def build(case: Case, lab: Lab, outside: Path) -> None:
        frames = _frames(case, 4, 5)
        write_tiff(_tiff_dir(case, lab) / "x_00001.tif", frames)
        _lab_files(case, lab, len(frames), scan=scan)
        case.frames = frames
    return build


def _trial_crlf_bom(case: Case, lab: Lab, outside: Path) -> None:
    # 30 frames (1 s): trials at 100 and 700 ms, whose padded starts (500 ms before, clamped
    # at 0) differ; two trials in the first 500 ms would both start at 0, which nwbinspector
    # calls CRITICAL (check_time_intervals_start_time_not_constant): not what this case tests.
    frames = _frames(case, 30, 6)
    write_tiff(_tiff_dir(case, lab) / "x_00001.tif", frames)
    _lab_files(case, lab, len(frames), trial=b"\xef\xbb\xbf100 5 0 0.04 0 90\r\n700 5 0 0.08 0 180\r\n")
    case.frames = frames


def _odd_names(case: Case, lab: Lab, outside: Path) -> None:
    frames = _frames(case, 5, 9)
    write_tiff(_tiff_dir(case, lab) / "Bild Nr 1 – µm_00001.tif", frames)
    _lab_files(case, lab, len(frames))
    case.frames = frames


def _escape_session_folder(name: str) -> Callable[[Case, Lab, Path], None]:
    def build(case: Case, lab: Lab, outside: Path) -> None:
        write_tiff(lab.session_dir(name, case.subject) / "x_00001.tif", _frames(case, 3, 2))
    return build


def _escape_subject_folder(name: str) -> Callable[[Case, Lab, Path], None]:
    def build(case: Case, lab: Lab, outside: Path) -> None:
        # The subject folder itself is the hostile name: the case's folder holds a marker only.
        (lab.root / case.subject).mkdir(parents=True, exist_ok=True)
        write_tiff(lab.session_dir("s1", name) / "x_00001.tif", _frames(case, 3, 2))
        case.notes["extra_root"] = name
    return build


def _sidecar_names(case: Case, lab: Lab, outside: Path) -> None:
    frames = _frames(case, 4, 3)
    write_tiff(_tiff_dir(case, lab) / "x_00001.tif", frames)
    _lab_files(case, lab, len(frames))
    (lab.root / case.subject / "rig2nwb.toml").write_text(
        '[session]\nsession_id = "../../../tmp/evil"\n[subject]\nsubject_id = "/etc/evil"\n')


def _symlink_tiff_out(case: Case, lab: Lab, outside: Path) -> None:
    frames, secret = _frames(case, 4, 4), _frames(case, 3, 12)
    folder = _tiff_dir(case, lab)
    write_tiff(folder / "x_00001.tif", frames)
    write_tiff(outside / f"{case.id}.tif", secret)
    (folder / "x_00002.tif").symlink_to(outside / f"{case.id}.tif")
    _lab_files(case, lab, len(frames))
    case.frames = frames


def _symlink_folder_out(case: Case, lab: Lab, outside: Path) -> None:
    frames = _frames(case, 4, 4)
    write_tiff(_tiff_dir(case, lab) / "x_00001.tif", frames)
    _lab_files(case, lab, len(frames))
    target = outside / case.id
    write_tiff(target / "x_00001.tif", _frames(case, 3, 13))
    _tiff_dir(case, lab, session="s2").symlink_to(target, target_is_directory=True)
    case.frames = frames


def _symlink_scan_out(case: Case, lab: Lab, outside: Path) -> None:
    frames = _frames(case, 4, 4)
    write_tiff(_tiff_dir(case, lab) / "x_00001.tif", frames)
    _lab_files(case, lab, len(frames))
    scan = lab.root / case.subject / "txt" / f"{case.session}_scan.txt"
    scan.unlink()
    # A scan file that would give distinctive times, outside the rig folder.
    (outside / f"{case.id}_scan.txt").write_text(" ".join(str(7000 + 40 * i) for i in range(4)))
    scan.symlink_to(outside / f"{case.id}_scan.txt")
    case.frames = frames


N_S2P = 8  # frames of the suite2p sessions


def _with_suite2p(tamper: Callable[[Path], None], n_frames: int = N_S2P,
                  shape: tuple[int, int] = SHAPE) -> Callable[[Case, Lab, Path], None]:
    def build(case: Case, lab: Lab, outside: Path) -> None:
        frames = _frames(case, N_S2P, 14)
        folder = _tiff_dir(case, lab)
        write_tiff(folder / "x_00001.tif", frames)
        _lab_files(case, lab, len(frames))
        s2p = make_synthetic_folder(folder / "suite2p", n_rois=6, n_frames=n_frames, Ly=shape[0],
                                    Lx=shape[1], seed=3)
        tamper(s2p / "plane0")
        case.frames = frames
    return build


def _nan_traces(plane: Path) -> None:
    f = np.load(plane / "F.npy")
    f[1, 3], f[2, 5] = np.nan, np.inf
    np.save(plane / "F.npy", f)


def _pixels_out_of_frame(plane: Path) -> None:
    stat = list(np.load(plane / "stat.npy", allow_pickle=True))
    roi = dict(stat[2])
    roi["ypix"] = np.append(roi["ypix"], SHAPE[0] + 5)
    roi["xpix"] = np.append(roi["xpix"], 3)
    roi["lam"] = np.append(roi["lam"], np.float32(0.5))
    stat[2] = roi
    arr = np.empty(len(stat), dtype=object)
    arr[:] = stat
    np.save(plane / "stat.npy", arr, allow_pickle=True)


def _nothing(plane: Path) -> None:
    pass


def _nan_kept(case: Case, nwb: Path) -> None:
    """The documented handling of NaN/inf traces: attached, kept as they are (a warning)."""
    wrote = np.load(_tiff_dir(case, CORPUS_LAB[0]) / "suite2p" / "plane0" / "F.npy")
    with h5py.File(nwb, "r") as f:
        stored = np.asarray(f["processing/ophys/Fluorescence/RoiResponseSeries/data"][:])
    np.testing.assert_array_equal(stored, wrote.T)  # NaN and inf in the same places


CORPUS_LAB: list[Lab] = []


CASES = [
    Case("tiff_ifd_offset_past_end", _good_then(_ifd_past_end), "problem", ("x_00002.tif",)),
    Case("tiff_ifd_loop", _good_then(_ifd_loop), "problem", ("x_00002.tif",)),
    Case("tiff_pages_mixed_dtype", _good_then(_mixed_dtype_pages), "problem",
         ("x_00002.tif", "uint16")),
    Case("bigtiff_data_past_4gib", _bigtiff, "accepted"),
    Case("scan_file_zero_bytes", _with_scan(b""), "problem", ("s1_scan.txt", "empty")),
    Case("scan_onset_nan", _with_scan("0 33.3 nan 100"), "problem",
         ("s1_scan.txt", "'nan' is not a finite number")),
    Case("scan_onset_negative", _with_scan("-5 33.3 66.6 100"), "problem",
         ("s1_scan.txt", "onset 1 is negative")),
    Case("scan_onsets_decreasing", _with_scan("0 50 40 60"), "problem",
         ("s1_scan.txt", "onset 3 (40) is not after onset 2 (50)")),
    Case("trial_file_crlf_bom", _trial_crlf_bom, "accepted"),
    Case("names_spaces_non_ascii", _odd_names, "accepted", session="Sitzung 1 é"),
    Case("session_name_backslash_dotdot", _escape_session_folder("..\\..\\evil"), "problem",
         ("c-session-name-backslash-dotdot/tif/site1/..\\..\\evil:", "is not a safe name"),
         nwb_expected=False),
    Case("session_name_trailing_space", _escape_session_folder("s1 "), "problem",
         ("c-session-name-trailing-space/tif/site1/s1 :", "is not a safe name"), nwb_expected=False),
    Case("subject_name_windows_absolute", _escape_subject_folder("C:\\Windows\\evil"), "problem",
         ("C:\\Windows\\evil/tif/site1/s1:", "is not a safe name"), nwb_expected=False),
    Case("sidecar_sets_session_and_subject_ids", _sidecar_names, "problem",
         ("rig2nwb.toml", "session_id"), nwb_expected=False),
    Case("symlinked_tiff_points_outside", _symlink_tiff_out, "not_followed"),
    Case("symlinked_session_folder_points_outside", _symlink_folder_out, "not_followed"),
    Case("symlinked_scan_file_points_outside", _symlink_scan_out, "problem",
         ("s1_scan.txt", "outside the rig folder")),
    Case("suite2p_traces_nan_inf", _with_suite2p(_nan_traces), "suite2p_warning",
         ("F.npy", "1 NaN and 1 infinite values", "kept as they are"), verify=_nan_kept),
    Case("suite2p_stat_pixels_out_of_frame", _with_suite2p(_pixels_out_of_frame),
         "suite2p_problem", ("stat.npy",)),
    Case("suite2p_other_session_frame_count", _with_suite2p(_nothing, n_frames=N_S2P + 5),
         "suite2p_problem", ("frames",)),
    Case("suite2p_other_session_image_size", _with_suite2p(_nothing, shape=(40, 40)),
         "suite2p_problem", ("40",)),
]
BY_ID = {c.id: c for c in CASES}


# --- the shared run --------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    """sha256 of a file's content; a large sparse file is hashed by its data extents (the holes
    read as zeros by definition), so the 4 GiB BigTIFF does not cost 4 GiB of reading."""
    import hashlib
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size < (64 << 20) or not hasattr(os, "SEEK_DATA"):
            h.update(f.read())
            return h.hexdigest()
        h.update(str(size).encode())
        fd, pos = f.fileno(), 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break  # only a hole is left
            end = os.lseek(fd, start, os.SEEK_HOLE)
            f.seek(start)
            h.update(str(start).encode())
            h.update(f.read(end - start))
            pos = end
    return h.hexdigest()


def rig_snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (links as links, not followed): content hash or link target."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = file_digest(p)
    return out


@dataclass
class Corpus:
    lab: Lab
    before: dict[str, str]
    after: dict[str, str]
    status: list[dict[str, Any]]
    problems: list[str]  # every active problem in the ledger
    own: dict[str, list[str]]  # subject -> its sessions' active problems and warnings
    good_frames: np.ndarray
    skipped: dict[str, str]  # case id -> why it was not built


def _sparse_ok(folder: Path) -> str:
    probe = folder / "sparse-probe"
    try:
        with open(probe, "wb") as f:
            f.seek(BIG_OFFSET)
            f.write(b"x")
        blocks = os.stat(probe).st_blocks * 512
        return "" if blocks < (1 << 20) else "the file system does not keep sparse files sparse"
    except OSError as exc:
        return f"cannot write a >4 GiB sparse file here: {exc.strerror or exc}"
    finally:
        probe.unlink(missing_ok=True)


def _all_settled(engine: Any) -> bool:
    led = engine.ledger
    good = led.session(*GOOD)
    if good is None or good.state != "finished":
        return False
    problems = [p.message for p in led.problems()]
    for case in CASES:
        if case.id in engine_skipped:
            continue
        if case.outcome in ("problem",):
            if not any(all(f in p for f in case.expect) for p in problems):
                return False
        elif case.outcome in ("accepted", "not_followed"):
            row = led.session(case.subject, case.session)
            if row is None or row.state != "finished":
                return False
        elif case.outcome == "suite2p_problem":
            row = led.session(case.subject, case.session)
            s2p = led.suite2p(row.id) if row is not None else None
            if s2p is None or s2p.state not in ("problem", "incomplete"):
                return False
        elif case.outcome == "suite2p_warning":
            row = led.session(case.subject, case.session)
            s2p = led.suite2p(row.id) if row is not None else None
            if s2p is None or s2p.state != "attached" or not any(
                    all(f in p for f in case.expect) for p in problems):
                return False
    return True


engine_skipped: dict[str, str] = {}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    base = tmp_path_factory.mktemp("corpus")
    lab = Lab(base / "lab", suite2p={"interval_seconds": 0.5, "settle_seconds": 0})
    CORPUS_LAB[:] = [lab]
    outside = base / "outside"
    outside.mkdir()
    engine_skipped.clear()
    why = _sparse_ok(lab.root)
    if why:
        engine_skipped["bigtiff_data_past_4gib"] = why
    good = random_frames(7, SHAPE, seed=99)
    write_tiff(lab.session_dir(GOOD[1], GOOD[0]) / "x_00001.tif", good)
    lab.lab_files(GOOD[1], GOOD[0], n_frames=len(good))
    for case in CASES:
        if case.id not in engine_skipped:
            case.build(case, lab, outside)
    before = rig_snapshot(lab.root)
    run_service(lab, _all_settled, timeout=240)
    after = rig_snapshot(lab.root)
    cfg = lab.config()
    ledger = Ledger(lab.state / "ledger.sqlite", readonly=True)
    try:
        problems = [p.message for p in ledger.problems()]
        own: dict[str, list[str]] = {}
        for p in ledger.problems():
            if p.session_id is not None:
                own.setdefault(ledger.session_by_id(p.session_id).subject, []).append(p.message)
    finally:
        ledger.close()
    yield Corpus(lab, before, after, collect(cfg), problems, own, good, dict(engine_skipped))


def _status_lines(c: Corpus, case: Case) -> list[str]:
    """Problem lines ``rig2nwb status --json`` shows for the case's session (rig-wide ones are
    listed in every session), plus the suite2p detail."""
    lines: list[str] = []
    for row in c.status:
        if row["subject"] == case.subject or not lines:
            lines += list(row["problems"]) + list(row.get("warnings", []))
        if row["subject"] == case.subject and row.get("suite2p"):
            lines.append(str(row["suite2p"].get("detail", "")))
    return lines


def check_case(c: Corpus, case: Case) -> None:
    """The harness: outcome, good session exact, rig files unchanged, nothing half-written."""
    if case.id in c.skipped:
        record("bad_input", case=case.id, handled=False, detail=f"skipped: {c.skipped[case.id]}")
        pytest.skip(c.skipped[case.id])
    lab = c.lab
    lines = _status_lines(c, case)
    hits = [p for p in lines if case.expect and all(f in p for f in case.expect)]
    ledger_hits = [p for p in c.problems if case.expect and all(f in p for f in case.expect)]
    nwb = lab.nwb(case.session, case.subject)
    got = nwb_frames(nwb) if nwb.exists() else None
    if case.outcome in ("problem", "suite2p_problem", "suite2p_warning"):
        handled = bool(hits) and bool(ledger_hits or case.outcome == "suite2p_problem")
        detail = hits[0] if hits else f"no problem with {case.expect} in {lines}"
    else:
        handled = got is not None and case.frames is not None and np.array_equal(got, case.frames)
        n = 0 if case.frames is None else len(case.frames)
        detail = f"{case.outcome}: {nwb.name} holds the {n} frames written"
        if not handled:
            detail = f"{case.outcome}: NWB frames differ or missing; problems {lines}"
    record("bad_input", case=case.id, handled=handled, detail=detail)

    # The documented outcome.
    if case.outcome in ("problem", "suite2p_problem", "suite2p_warning"):
        assert hits, f"no status problem containing {case.expect}: {lines}"
        if case.outcome != "suite2p_problem":
            assert ledger_hits, c.problems
    if case.outcome == "suite2p_problem":
        with h5py.File(nwb, "r") as f:  # nothing of the refused folder was written
            assert "ophys" not in f.get("processing", {}), "suite2p results attached anyway"
    if case.frames is not None:
        assert got is not None, f"{nwb.name} missing"
        assert np.array_equal(got, case.frames), "the case's frames differ from what was written"
    if case.verify is not None:
        case.verify(case, nwb)
    if case.outcome == "accepted":
        assert not c.own.get(case.subject), c.own.get(case.subject)

    # The good session alongside: exactly its frames.
    assert np.array_equal(nwb_frames(lab.nwb(GOOD[1], GOOD[0])), c.good_frames)

    # The rig folder: the case's entries unchanged, nothing added.
    prefixes = [case.subject, case.notes.get("extra_root", "\0")]
    mine = {k: v for k, v in c.before.items() if k.split(os.sep)[0] in prefixes}
    now = {k: v for k, v in c.after.items() if k.split(os.sep)[0] in prefixes}
    assert mine and now == mine, "rig files changed or were added"

    # Nothing half-written; every NWB of the case opens.
    leftovers = [p.name for p in lab.out.rglob("*") if ".creating" in p.name or p.name.endswith(".tmp")]
    assert not leftovers, leftovers
    ours = [p for p in lab.out.glob("*.nwb") if case.subject in p.name]
    if not case.nwb_expected:
        assert not ours, ours
    for p in ours:
        from pynwb import NWBHDF5IO
        with NWBHDF5IO(str(p), "r") as io:
            assert io.read().identifier


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_bad_input(corpus: Corpus, case_id: str) -> None:
    check_case(corpus, BY_ID[case_id])


def test_rig_folder_untouched_as_a_whole(corpus: Corpus) -> None:
    """Nothing anywhere under the rig folder changed or appeared (the good session included)."""
    assert corpus.after == corpus.before


def test_nwb_name_template_cannot_escape_the_output_folder(tmp_path: Path) -> None:
    """The only other way to put a name into a path: output.nwb_name. Folders in it are refused
    when the config is read, so the daemon never starts with it."""
    lab = Lab(tmp_path, output={"nwb_name": "../{subject}/{session}.nwb"})
    try:
        load_config(lab.config_path)
        message = ""
    except ConfigError as exc:
        message = "; ".join(exc.problems)
    proc = lab.run_cli("status", timeout=60)
    record("bad_input", case="nwb_name_template_escape", handled=bool(message) and proc.returncode != 0,
           detail=message)
    assert "output.nwb_name: must be a plain file name" in message
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "nwb_name" in proc.stderr
    assert not list(tmp_path.rglob("*.nwb"))
