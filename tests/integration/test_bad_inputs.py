"""Bad inputs: each gets a clear, logged, status-visible error naming the file, the daemon keeps
serving the session's other files and other sessions, and the rig's files stay untouched."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from rig2nwb.config.logsetup import setup_from_config
from rig2nwb.outputs.status import collect
from rig2nwb.service.loop import Service
from rig2nwb.testing.figures import record
from rig2nwb.testing.filetrees import tree_checksums
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.nwbfiles import nwb_frames
from rig2nwb.testing.services import finished, run_service
from rig2nwb.testing.simrig import write_tiff as write_tiff_paced
from rig2nwb.testing.tiffs import random_frames, write_tiff
from rig2nwb.testing.waits import wait_for


def status_of(lab: Lab, session: str = "s1") -> dict[str, object]:
    return next(r for r in collect(lab.config()) if r["session"] == session)


def _case_id() -> str:
    """This test's name (its bad-input case id in the figures)."""
    return os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0]


def _record_bad(problems: object, *fragments: str) -> None:
    lines = [p for p in problems if all(f in p for f in fragments)] if isinstance(problems, list) else []
    record("bad_input", case=_case_id(), handled=bool(lines),
           detail=lines[0] if lines else f"no problem with {fragments}: {problems}")


def bad_file_case(lab: Lab, make_bad: Callable[[Path], None], expect: str) -> None:
    """Session s1: good, bad, good; session s2: good. The bad one is reported, the rest lands."""
    good1, good2, other = random_frames(6, seed=1), random_frames(5, seed=2), random_frames(4)
    write_tiff(lab.session_dir() / "x_00001.tif", good1)
    make_bad(lab.session_dir() / "x_00002.tif")
    write_tiff(lab.session_dir() / "x_00003.tif", good2)
    write_tiff(lab.session_dir("s2") / "y_00001.tif", other)
    lab.lab_files("s1", n_frames=len(good1) + len(good2))
    lab.lab_files("s2", n_frames=len(other))
    before = tree_checksums(lab.root)
    run_service(lab, finished("s1", "s2"))
    _record_bad(status_of(lab)["problems"], "x_00002.tif", expect)
    assert tree_checksums(lab.root) == before, "rig files were modified"
    assert np.array_equal(nwb_frames(lab.nwb()), np.concatenate([good1, good2]))
    assert np.array_equal(nwb_frames(lab.nwb("s2")), other)
    row = status_of(lab)
    problems = row["problems"]
    assert isinstance(problems, list)
    assert any("x_00002.tif" in p and expect in p for p in problems), problems
    assert status_of(lab, "s2")["problems"] == []
    log = (lab.state / "rig2nwb.log").read_text()
    lines = [json.loads(x) for x in log.splitlines() if "x_00002.tif" in x]
    assert any(x["level"] == "error" and expect in x.get("problem", "") for x in lines)


def _truncate(path: Path) -> None:
    write_tiff(path, random_frames(8, seed=9))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def test_truncated_tiff(lab: Lab) -> None:
    bad_file_case(lab, _truncate, "truncated")


def test_not_a_tiff(lab: Lab) -> None:
    bad_file_case(lab, lambda p: p.write_bytes(os.urandom(5000)), "not a readable TIFF")


def test_empty_tiff(lab: Lab) -> None:
    bad_file_case(lab, lambda p: p.write_bytes(b""), "empty")


def test_frame_shape_differs_from_series(lab: Lab) -> None:
    bad_file_case(lab, lambda p: write_tiff(p, random_frames(3, shape=(16, 16))),
                  "frames are 16x16 int16, the session's series is 32x48 int16")


def test_dtype_differs_from_series(lab: Lab) -> None:
    bad_file_case(lab, lambda p: write_tiff(p, random_frames(3, dtype="uint16")),
                  "frames are 32x48 uint16")


def test_mixed_pages(lab: Lab) -> None:
    def mixed(p: Path) -> None:
        import tifffile
        with tifffile.TiffWriter(p) as tw:
            tw.write(random_frames(1)[0], contiguous=False)
            tw.write(random_frames(1, shape=(8, 8))[0], contiguous=False)
    bad_file_case(lab, mixed, "mixed shape or type")


def test_deleted_before_it_was_appended(lab: Lab) -> None:
    stop = threading.Event()
    doomed = lab.session_dir() / "x_00001.tif"
    keep = random_frames(7, seed=3)

    def rig() -> None:
        t = threading.Thread(target=write_tiff_paced, args=(doomed, iter(random_frames(400))),
                             kwargs={"page_interval": 0.05, "stop": stop})
        t.start()
        stop.wait(1.5)  # the file is growing, never complete...
        stop.set()
        t.join()
        doomed.unlink()  # ...and the lab deletes it (aborted acquisition)
        write_tiff(lab.session_dir() / "x_00002.tif", keep)
        lab.lab_files(n_frames=len(keep))

    th = threading.Thread(target=rig)
    th.start()
    run_service(lab, finished("s1"))
    th.join()
    _record_bad(status_of(lab)["problems"], "x_00001.tif: deleted before it was appended")
    assert np.array_equal(nwb_frames(lab.nwb()), keep)
    assert any("x_00001.tif: deleted before it was appended" in p
               for p in status_of(lab)["problems"])  # type: ignore[attr-defined]


# --- permissions -----------------------------------------------------------------------------
# Root reads and writes anything, so as root the daemon is started without the two capabilities
# that bypass file permissions (setpriv); it stays uid 0 and file modes then apply to it.

DROP_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.fixture
def perm_lab(lab: Lab) -> Lab:
    if os.name != "posix":
        pytest.skip("permission tests need POSIX file modes")
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable to the daemon")
    return lab


def _start_daemon(lab: Lab) -> subprocess.Popen[str]:
    return lab.start_daemon(wait_until_watching=False,
                            prefix=tuple(DROP_DAC) if os.geteuid() == 0 else ())


def _make_unwritable(folder: Path) -> None:
    if os.geteuid() == 0:
        os.chown(folder, 65534, 65534)  # someone else's folder, mode 755: no writing for us
    os.chmod(folder, 0o555 if os.geteuid() else 0o755)


def _cli_status(lab: Lab) -> list[dict[str, object]]:
    proc = lab.run_cli("status", "--json")
    return json.loads(proc.stdout) if proc.returncode == 0 else []  # type: ignore[no-any-return]


def _problem_listed(lab: Lab, *fragments: str) -> Callable[[], bool]:
    def check() -> bool:
        rows = _cli_status(lab)
        return bool(rows) and any(all(f in p for f in fragments)
                                  for p in rows[0]["problems"])  # type: ignore[attr-defined]
    return check


def _finished(lab: Lab) -> Callable[[], bool]:
    return lambda: (_cli_status(lab) or [{}])[0].get("state") == "finished"


def test_unreadable_tiff_is_reported_then_appended_once_readable(perm_lab: Lab) -> None:
    lab = perm_lab
    good, secret = random_frames(4, seed=1), random_frames(5, seed=2)
    write_tiff(lab.session_dir() / "x_00001.tif", good)
    write_tiff(lab.session_dir() / "x_00002.tif", secret)
    os.chmod(lab.session_dir() / "x_00002.tif", 0o000)  # saved by the rig for its user only
    daemon = _start_daemon(lab)
    try:
        wait_for(_problem_listed(lab, "x_00002.tif: permission denied"), timeout=60,
                 interval=0.5, what="permission problem in status")
        _record_bad(_cli_status(lab)[0]["problems"], "x_00002.tif: permission denied")
        assert daemon.poll() is None, "daemon died on an unreadable file"
        os.chmod(lab.session_dir() / "x_00002.tif", 0o644)  # the lab fixes the permissions
        lab.lab_files(n_frames=len(good) + len(secret))
        wait_for(_finished(lab), timeout=60, interval=0.5, what="session to finish after the fix")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    assert np.array_equal(nwb_frames(lab.nwb()), np.concatenate([good, secret]))
    assert _cli_status(lab)[0]["problems"] == []


def test_output_folder_not_writable_then_fixed(perm_lab: Lab) -> None:
    lab = perm_lab
    frames = random_frames(6)
    write_tiff(lab.session_dir() / "x_00001.tif", frames)
    lab.lab_files(n_frames=len(frames))
    _make_unwritable(lab.out)
    daemon = _start_daemon(lab)
    try:
        wait_for(_problem_listed(lab, "cannot write", "Permission denied"), timeout=60,
                 interval=0.5, what="output problem in status")
        assert daemon.poll() is None
        if os.geteuid() == 0:
            os.chown(lab.out, 0, 0)
        os.chmod(lab.out, 0o755)
        wait_for(_finished(lab), timeout=60, interval=0.5, what="session to finish after the fix")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    assert np.array_equal(nwb_frames(lab.nwb()), frames)
    assert _cli_status(lab)[0]["problems"] == []


# --- disk full: a real, small filesystem ---------------------------------------------------

@pytest.fixture
def small_disk() -> Iterator[Path]:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("needs root on Linux to mount a small tmpfs")
    mnt = Path(tempfile.mkdtemp(prefix="rig2nwb-smalldisk-"))
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()


def test_disk_full_pauses_then_resumes_when_space_returns(make_lab, small_disk: Path) -> None:  # type: ignore[no-untyped-def]
    out = small_disk / "nwb"
    out.mkdir()
    lab: Lab = make_lab(output={"folder": str(out), "compression": "none", "min_free_mb": 0})
    files = [random_frames(60, shape=(128, 128), seed=i) for i in range(4)]  # 4 x 2 MB... x4
    files = [np.concatenate([f, f]) for f in files]  # 120 frames = 3.9 MB each, 15.7 MB total
    for i, f in enumerate(files):
        write_tiff(lab.session_dir() / f"x_{i + 1:05d}.tif", f)
    lab.lab_files(n_frames=sum(len(f) for f in files))
    cfg = lab.config()
    setup_from_config(cfg)
    service = Service(cfg)
    result: dict[str, object] = {}

    def run() -> None:
        try:
            service.run()
        except BaseException as exc:  # pragma: no cover - surfaced below
            result["error"] = exc

    th = threading.Thread(target=run)
    th.start()
    try:
        def paused() -> bool:
            # the state and the problem are two ledger commits: wait for both
            rows = collect(cfg)
            return bool(rows) and rows[0]["state"] == "paused" and any(
                "disk" in p and "full" in p for p in rows[0]["problems"])
        wait_for(paused, timeout=60, what="session to pause on a full disk")
        row = collect(cfg)[0]
        assert any("disk" in p and "full" in p for p in row["problems"])  # type: ignore[attr-defined]
        assert th.is_alive(), "daemon stopped on a full disk"
        # The NWB file is still valid while paused: it opens and holds committed frames intact.
        committed = int(row["frames"])  # type: ignore[call-overload]
        nwb = Path(str(row["nwb_path"]))
        assert nwb.parent == out
        got = nwb_frames(nwb) if committed else np.empty((0, 128, 128), "int16")
        assert np.array_equal(got[:committed], np.concatenate(files)[:committed])
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        wait_for(lambda: collect(cfg)[0]["state"] == "finished", timeout=60,
                 what="session to resume and finish")
    finally:
        service.request_stop()
        th.join(timeout=30)
    got_all = nwb_frames(out / lab.nwb().name)
    want_all = np.concatenate(files)
    record("disk_full", test="pauses_then_resumes_when_space_returns",
           recoveries=int(collect(cfg)[0]["state"] == "finished"),
           frames_lost=len(want_all) - min(len(got_all), len(want_all)))
    assert "error" not in result
    assert np.array_equal(got_all, want_all)
    assert collect(cfg)[0]["problems"] == []


def test_disk_filling_up_during_an_append(make_lab, small_disk: Path) -> None:  # type: ignore[no-untyped-def]
    """Another program fills the disk while a file is being appended: the HDF5 write itself fails
    (ENOSPC). The worker records the pause and is restarted by the supervisor (HDF5 cannot go on
    safely in a process where a write failed); nothing committed is damaged, and the session
    resumes when space returns."""
    subprocess.run(["mount", "-o", "remount,size=48m", str(small_disk)], check=True)
    out = small_disk / "nwb"
    out.mkdir()
    # gzip-9 on noise writes ~15 MB/s, so the append is still running when the filler strikes.
    lab: Lab = make_lab(output={"folder": str(out), "compression": "gzip", "compression_level": 9,
                                "min_free_mb": 0},
                        append={"batch_frames": 8, "commit_every_frames": 32})
    frames = random_frames(240, shape=(128, 128), seed=4)  # 7.9 MB
    write_tiff(lab.session_dir() / "x_00001.tif", frames)
    lab.lab_files(n_frames=len(frames))
    filler = small_disk / "other-program.bin"
    nwb = out / lab.nwb().name
    daemon = lab.start_daemon(wait_until_watching=False)
    try:
        wait_for(nwb.exists, timeout=60, interval=0.005, what="the NWB file")
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        wait_for(_problem_listed(lab, "writing failed: No space left on device"), timeout=60,
                 interval=0.3, what="the disk-full problem in status")
        row = _cli_status(lab)[0]
        assert row["state"] == "paused", row
        assert daemon.poll() is None, "the service died on a full disk"
        committed = int(row["frames"])  # type: ignore[call-overload]
        filler.unlink()  # space returns
        wait_for(_finished(lab), timeout=90, interval=0.5, what="session to resume and finish")
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    got = nwb_frames(nwb)
    record("disk_full", test="filling_up_during_an_append",
           recoveries=int(_cli_status(lab)[0]["state"] == "finished"),
           frames_lost=len(frames) - min(len(got), len(frames)))
    assert daemon.returncode == 0, err[-2000:]
    assert np.array_equal(got, frames)
    assert _cli_status(lab)[0]["problems"] == []
    assert "restarting the worker" in err and "Segmentation" not in err
    print(f"\ncommitted when the disk filled: {committed} of {len(frames)} frames")


def test_session_folder_that_would_escape_is_refused_and_visible(lab: Lab) -> None:
    """A folder named '..' or with a trailing space can never become a session or a file name."""
    evil = lab.root / "m1" / "tif" / "site1" / "bad name "
    write_tiff(evil / "x_00001.tif", random_frames(3))
    good = random_frames(4)
    write_tiff(lab.session_dir() / "x_00001.tif", good)
    lab.lab_files(n_frames=len(good))
    run_service(lab, finished("s1"))
    _record_bad(status_of(lab)["problems"], "is not a safe name", "bad name")
    assert np.array_equal(nwb_frames(lab.nwb()), good)
    # Only the good session's NWB file (the status page and pictures live beside it).
    assert sorted(p.name for p in lab.out.iterdir() if p.suffix == ".nwb") == [lab.nwb().name]
    table = lab.run_cli("status").stdout
    assert "rig-wide problem" in table and "is not a safe name" in table and "bad name" in table
