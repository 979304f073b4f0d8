"""rig2nwb under systemd: the notify protocol, the watchdog, journald priorities, the unit files.

The notify tests bind a real AF_UNIX datagram socket, as systemd does, and read what real
processes send to it, with the sender's PID from SO_PASSCRED (how systemd itself tells the main
process from its children). The unit tests run this machine's systemd-analyze and
systemd-sysusers on the files as shipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rig2nwb.config.paths import summary_png
from rig2nwb.engine.engine import Engine
from rig2nwb.service import sdnotify
from rig2nwb.service.loop import Service
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.nwbfiles import nwb_frames
from rig2nwb.testing.paths import REPO
from rig2nwb.testing.services import finished
from rig2nwb.testing.tiffs import random_frames
from rig2nwb.testing.waits import wait_for

UNIT = REPO / "systemd" / "rig2nwb.service"
USER_UNIT = REPO / "systemd" / "rig2nwb-user.service"
SYSUSERS = REPO / "systemd" / "rig2nwb.sysusers.conf"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="AF_UNIX datagrams, systemd")


# --- a notify socket, as systemd binds it ------------------------------------------------------

@dataclass(frozen=True)
class Message:
    pid: int  # the sender, from the kernel (SCM_CREDENTIALS)
    fields: tuple[str, ...]

    def has(self, field: str) -> bool:
        return field in self.fields

    def status(self) -> str | None:
        return next((f[len("STATUS="):] for f in self.fields if f.startswith("STATUS=")), None)


class NotifySocket:
    """A bound AF_UNIX datagram socket that records every message and who sent it."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            pid = 0
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:12])[0]
            with self._cond:
                self.messages.append(Message(pid, tuple(data.decode().split("\n"))))
                self._cond.notify_all()

    def wait(self, match: Callable[[Message], bool], timeout: float, what: str,
             after: int = 0) -> tuple[int, Message]:
        """The first message from index ``after`` on that matches, and its index."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(after, len(self.messages)):
                    if match(self.messages[i]):
                        return i, self.messages[i]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {timeout} s; got {self.messages[after:]}")
                self._cond.wait(left)

    def since(self, index: int) -> list[Message]:
        with self._cond:
            return list(self.messages[index:])

    def count(self) -> int:
        with self._cond:
            return len(self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, NotifySocket]]:
    # A short folder of its own: socket paths are limited to 108 bytes, pytest's are long.
    folder = tempfile.mkdtemp(prefix="sdn")
    path = os.path.join(folder, "notify")
    listener = NotifySocket(path)
    try:
        yield path, listener
    finally:
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


# --- the protocol end to end: a real `rig2nwb run` --------------------------------------------

@linux_only
def test_real_daemon_notifies_ready_status_watchdog_and_stopping(
        lab: Lab, notify_socket: tuple[str, NotifySocket], tmp_path: Path) -> None:
    path, sock = notify_socket
    frames = [random_frames(20, seed=1), random_frames(15, seed=2)]
    for i, f in enumerate(frames, start=1):
        lab.tiff(f"x_{i:05d}.tif", f)
    n_frames = sum(len(f) for f in frames)
    lab.lab_files(n_frames=n_frames)

    stderr_path = tmp_path / "journal-stream.txt"
    stderr = stderr_path.open("wb")
    st = os.fstat(stderr.fileno())
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000",
           "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    # systemd sets WATCHDOG_PID to the main process after fork, before exec; `exec` keeps the
    # shell's PID, so $$ is exactly the PID the daemon's supervisor will have.
    daemon = subprocess.Popen(
        ["sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh", sys.executable, "-m", "rig2nwb", "run",
         "--config", str(lab.config_path)], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    stderr.close()
    log = lab.state / "rig2nwb.log"
    try:
        i_ready, ready = sock.wait(lambda m: m.has("READY=1"), 60, "READY=1")
        assert '"event": "watching"' in log.read_text()  # ready only once it watches
        # The worker, a child of systemd's main process, sends it: hence NotifyAccess=all.
        assert ready.pid not in (0, daemon.pid) and parent_pid(ready.pid) == daemon.pid
        worker = ready.pid

        # STATUS with the counts, once the session's frames are committed (the test's own counts).
        expected = f"watching 1 session, 0 acquiring, {n_frames:,} frames committed"
        sock.wait(lambda m: expected in (m.status() or ""), 60, f"STATUS {expected!r}")

        # Several watchdog pings from the worker's loop (2 s interval: one about every second).
        i = i_ready
        for _ in range(4):
            i, _msg = sock.wait(lambda m: m.pid == worker and m.has("WATCHDOG=1"), 10,
                                "WATCHDOG=1 from the worker", after=i + 1)

        # A worker that dies: the supervisor says so, keeps the watchdog fed while it waits,
        # and the new worker is ready again.
        mark = sock.count()
        os.kill(worker, signal.SIGKILL)
        _, restart = sock.wait(lambda m: "restarting in" in (m.status() or ""), 30,
                               "the supervisor's restart STATUS", after=mark)
        assert restart.pid == daemon.pid
        assert restart.status() == f"worker exited with code {-signal.SIGKILL}, restarting in 1 s"
        sock.wait(lambda m: m.pid == daemon.pid and m.has("WATCHDOG=1"), 10,
                  "WATCHDOG=1 from the supervisor during the backoff", after=mark)
        _, ready2 = sock.wait(lambda m: m.has("READY=1"), 60, "READY=1 of the new worker", after=mark)
        assert ready2.pid not in (worker, daemon.pid) and parent_pid(ready2.pid) == daemon.pid

        mark = sock.count()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
        stopping = [m for m in sock.since(mark) if m.has("STOPPING=1")]
        assert {m.pid for m in stopping} == {daemon.pid, ready2.pid}  # both say so
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()

    # Both processes' stderr was the "journal" stream: every line carries a syslog priority.
    lines = stderr_path.read_text().splitlines()
    assert lines, "the daemon wrote nothing to stderr"
    for line in lines:
        m = re.match(r"<([2-7])>(\{.*\})$", line)
        assert m, line
        level = json.loads(m.group(2))["level"]
        assert int(m.group(1)) == EXPECTED_PRIORITY[level], line


# --- the protocol in-process ---------------------------------------------------------------------

@linux_only
def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"rig2nwb-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifySocket("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1", "STATUS=hello there")
        _, msg = listener.wait(lambda m: True, 5, "a message")
        assert msg.fields == ("READY=1", "STATUS=hello there")
        assert msg.pid == os.getpid()
    finally:
        listener.close()


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch,
                                                     lab: Lab) -> None:
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(var, raising=False)
    assert sdnotify.notify("READY=1") is False
    assert not sdnotify.SystemdHook().enabled
    sdnotify.heartbeat()
    # The whole service runs with its default hooks (systemd's among them) and stops normally.
    ticks = [0]

    def until(engine: Engine) -> bool:
        ticks[0] += 1
        return ticks[0] >= 3

    Service(lab.config()).run(until=until)
    assert ticks[0] == 3


@linux_only
def test_unreachable_socket_is_reported_once_and_never_raises(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    warnings: list[dict[str, object]] = []

    class Log:
        def warning(self, event: str, **kw: object) -> None:
            warnings.append({"event": event, **kw})

    monkeypatch.setattr(sdnotify, "get_logger", lambda name: Log())
    monkeypatch.setattr(sdnotify, "_warned", set())
    address = str(tmp_path / "nobody-listens")
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.notify("WATCHDOG=1") is False
    assert len(warnings) == 1 and warnings[0]["socket"] == address
    assert "FileNotFoundError" in str(warnings[0]["error"])


class _Gate:
    """A hook that, when asked, holds the loop inside its tick: blocked, or busy but calling
    heartbeat() like a long append does."""

    name = "gate"

    def __init__(self) -> None:
        self.mode = "pass"
        self.inside = threading.Event()
        self.release = threading.Event()
        self.beats = 0

    def started(self, engine: Engine) -> None:
        pass

    def tick(self, engine: Engine) -> None:
        if self.mode == "pass":
            return
        # A marker from the loop thread: whatever it sent before is queued ahead of it (a
        # datagram is in the receiver's queue when sendto returns).
        sdnotify.notify(f"X_GATE={self.mode}")
        self.inside.set()
        while not self.release.wait(0.001):
            if self.mode == "progress":
                sdnotify.heartbeat()
                self.beats += 1
        self.mode = "pass"

    def stopping(self, engine: Engine) -> None:
        pass


@linux_only
def test_a_stuck_loop_stops_feeding_the_watchdog(
        lab: Lab, notify_socket: tuple[str, NotifySocket], monkeypatch: pytest.MonkeyPatch) -> None:
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # ping every 0.5 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    gate = _Gate()
    services: list[Service] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            # Built on the thread that runs the loop, as the daemon does: that thread owns the
            # watchdog.
            service = Service(lab.config(), hooks=[sdnotify.SystemdHook(), gate])
            services.append(service)
            service.run()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    loop = threading.Thread(target=run)
    loop.start()
    try:
        i, _ = sock.wait(lambda m: m.has("READY=1"), 60, "READY=1")
        for _ in range(2):
            i, _ = sock.wait(lambda m: m.has("WATCHDOG=1"), 10, "WATCHDOG=1", after=i + 1)

        # Stuck: the loop thread waits inside a hook. For four ping intervals nothing may
        # arrive, although another thread (as the file watcher or the suite2p scheduler would)
        # calls heartbeat() all along: only the loop's own progress counts.
        gate.mode = "stuck"
        gate.release.clear()
        assert gate.inside.wait(10)
        mark, _ = sock.wait(lambda m: m.has("X_GATE=stuck"), 10, "the gate's marker")
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            sdnotify.heartbeat()
            time.sleep(0.01)
        assert [m for m in sock.since(mark) if m.has("WATCHDOG=1")] == []

        # Busy but progressing (a long append calling heartbeat()): pings go on, rate-limited.
        gate.mode = "progress"
        gate.release.set()  # ends the stuck tick
        wait_for(lambda: gate.mode == "pass", 10, what="the stuck tick to end")
        gate.release.clear()
        gate.inside.clear()
        gate.mode = "progress"
        assert gate.inside.wait(10)
        mark = sock.count()
        i, _ = sock.wait(lambda m: m.has("WATCHDOG=1"), 10, "WATCHDOG=1 while busy", after=mark)
        sock.wait(lambda m: m.has("WATCHDOG=1"), 10, "another WATCHDOG=1 while busy", after=i + 1)
        gate.release.set()
        pings = [m for m in sock.since(mark) if m.has("WATCHDOG=1")]
        assert gate.beats > 100 * len(pings)  # thousands of calls, a handful of datagrams

        mark = sock.count()
        services[0].request_stop()
        loop.join(60)
        assert not loop.is_alive() and not errors
        assert any(m.has("STOPPING=1") for m in sock.since(mark))
    finally:
        gate.release.set()
        if services:
            services[0].request_stop()
        loop.join(60)


class _TickMarker:
    """Marks every loop iteration on the notify socket (from the loop thread, so in order)."""

    name = "tick-marker"

    def started(self, engine: Engine) -> None:
        sdnotify.notify("X_TICK=1")

    def tick(self, engine: Engine) -> None:
        sdnotify.notify("X_TICK=1")

    def stopping(self, engine: Engine) -> None:
        pass


@linux_only
def test_a_long_append_pings_from_inside_its_step(
        lab: Lab, notify_socket: tuple[str, NotifySocket], monkeypatch: pytest.MonkeyPatch) -> None:
    """One TIFF whose append takes several watchdog intervals (slowed down per batch): the
    engine's per-batch heartbeat keeps systemd fed although the loop does not tick meanwhile."""
    import rig2nwb.engine.appending as engine_module

    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    frames = random_frames(160, seed=4)  # 10 batches of 16 frames
    lab.tiff("x_00001.tif", frames)
    lab.lab_files(n_frames=len(frames))
    from rig2nwb.rig.tiffs import read_batches as real  # what the engine calls

    def slow_batches(*args: object, **kwargs: object) -> Iterator[object]:
        for batch in real(*args, **kwargs):  # type: ignore[arg-type]
            time.sleep(0.25)
            yield batch

    monkeypatch.setattr(engine_module, "read_batches", slow_batches)
    service = Service(lab.config(), hooks=[sdnotify.SystemdHook(), _TickMarker()])
    service.run(until=finished("s1"))

    # Between two consecutive loop iterations (one step, one tick: at most one ping from the
    # tick itself), several pings: they came from inside the step.
    gaps: list[int] = []
    pings = None
    for m in sock.since(0):
        if m.has("X_TICK=1"):
            if pings is not None:
                gaps.append(pings)
            pings = 0
        elif m.has("WATCHDOG=1") and pings is not None:
            pings += 1
    assert max(gaps) >= 3, gaps
    assert (nwb_frames(lab.nwb()) == frames).all()


def test_watchdog_pid_decides_who_feeds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_seconds() == 3.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # another process's watchdog
    assert sdnotify.watchdog_seconds() is None
    # The worker: WATCHDOG_PID is the supervisor, our parent, which said so.
    monkeypatch.setenv("WATCHDOG_PID", str(os.getppid()))
    monkeypatch.setenv(sdnotify.SUPERVISOR_PID_ENV, str(os.getppid()))
    assert sdnotify.watchdog_seconds() == 3.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert sdnotify.watchdog_seconds() is None


# --- journald priorities -------------------------------------------------------------------------

EXPECTED_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}

_LOG_EVERY_LEVEL = """
import logging, sys
from rig2nwb.logs import get_logger, setup_logging
out = open(sys.argv[1], "w")
setup_logging(level="DEBUG", fmt=sys.argv[2], stream=out, rig="rigA")
log = get_logger("rig2nwb.test")
log.debug("d"); log.info("i"); log.warning("w"); log.error("e"); log.critical("c")
logging.getLogger("h5py").warning("from a library")
try:
    raise ValueError("boom")
except ValueError:
    log.error("failed", exc_info=True)
logging.shutdown()
"""


def _log_to(path: Path, journal_of: Path | None, fmt: str = "json") -> list[str]:
    path.touch()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_of is not None:
        st = journal_of.stat()
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    subprocess.run([sys.executable, "-c", _LOG_EVERY_LEVEL, str(path), fmt], env=env, check=True,
                   timeout=60)
    return path.read_text().splitlines()


def test_journal_stream_lines_carry_the_syslog_priority(tmp_path: Path) -> None:
    stream = tmp_path / "stream.txt"
    lines = _log_to(stream, journal_of=stream)
    assert len(lines) == 7
    levels = []
    for line in lines:
        m = re.match(r"<(\d)>(.*)$", line)
        assert m, line
        record = json.loads(m.group(2))
        assert int(m.group(1)) == EXPECTED_PRIORITY[record["level"]]
        levels.append(record["level"])
    assert levels == ["debug", "info", "warning", "error", "critical", "warning", "error"]
    assert "ValueError: boom" in json.loads(lines[-1][3:])["exception"]


def test_console_format_on_the_journal_prefixes_every_line(tmp_path: Path) -> None:
    stream = tmp_path / "stream.txt"
    lines = _log_to(stream, journal_of=stream, fmt="console")
    traceback = lines[lines.index(next(x for x in lines if "failed" in x)):]
    assert len(traceback) > 3 and all(x.startswith("<3>") for x in traceback)


def test_no_prefix_without_the_journal(tmp_path: Path) -> None:
    plain = _log_to(tmp_path / "plain.txt", journal_of=None)
    assert len(plain) == 7 and all(json.loads(x)["rig"] == "rigA" for x in plain)
    # JOURNAL_STREAM inherited by a process whose stderr goes elsewhere: no prefix either.
    other = tmp_path / "other.txt"
    other.touch()
    elsewhere = _log_to(tmp_path / "elsewhere.txt", journal_of=other)
    assert len(elsewhere) == 7 and all(x.startswith("{") for x in elsewhere)


# --- the unit files ------------------------------------------------------------------------------

def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian package systemd; .ci/run installs it as root)")
    return path


def _unit_value(unit: Path, key: str) -> str:
    values = [line.split("=", 1)[1] for line in unit.read_text().splitlines()
              if line.startswith(f"{key}=")]
    assert len(values) == 1, f"{unit.name}: {key}= set {len(values)} times"
    return values[0]


def _stand_in(path: Path) -> None:
    """An executable where the unit expects the installed rig2nwb (verify checks it exists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


def test_system_unit_verifies_cleanly(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    system_units = Path("/usr/lib/systemd/system")
    if not (system_units / "multi-user.target").exists():
        pytest.skip(f"{system_units} has no systemd units")
    # verify resolves ExecStart= and every dependency (network-online.target, ...). Rather than
    # editing the unit, it is checked as shipped inside a scratch root: this machine's own
    # systemd units, the unit in /etc/systemd/system, and a stand-in executable at the
    # ExecStart= path of an installed venv (/opt/rig2nwb/venv/bin/rig2nwb does not exist here).
    root = tmp_path / "root"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system" / UNIT.name)
    _stand_in(root / _unit_value(UNIT, "ExecStart").split()[0].lstrip("/"))
    out = subprocess.run([analyze, "verify", f"--root={root}", "--man=no", "--generators=no",
                          UNIT.name], capture_output=True, text=True, timeout=120)
    assert (out.stdout + out.stderr) == "" and out.returncode == 0, out.stdout + out.stderr

    # The check is live: the same verify complains about a unit with an unknown key.
    broken = root / "etc/systemd/system" / UNIT.name
    broken.write_text(UNIT.read_text().replace("[Service]\n", "[Service]\nNoSuchKey=1\n"))
    out = subprocess.run([analyze, "verify", f"--root={root}", "--man=no", "--generators=no",
                          UNIT.name], capture_output=True, text=True, timeout=120)
    assert "NoSuchKey" in out.stdout + out.stderr


def test_system_unit_security_exposure_at_most_1_5() -> None:
    analyze = _tool("systemd-analyze")
    out = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(UNIT)],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out.stdout)
    assert m, out.stdout + out.stderr
    assert float(m.group(1)) <= 1.5, out.stdout


def test_unit_keeps_the_service_contract() -> None:
    """What the code relies on, read from the shipped unit."""
    assert _unit_value(UNIT, "Type") == "notify"
    assert _unit_value(UNIT, "NotifyAccess") == "all"  # the worker child notifies
    assert int(_unit_value(UNIT, "WatchdogSec")) > 0
    assert _unit_value(UNIT, "KillMode") == "mixed"  # SIGTERM to the supervisor, which forwards
    assert _unit_value(UNIT, "Restart") == "on-failure"
    assert _unit_value(UNIT, "ExecStart").endswith("run --config /etc/rig2nwb/config.toml")
    assert _unit_value(UNIT, "EnvironmentFile") == "-/etc/rig2nwb/secrets.env"
    assert _unit_value(UNIT, "MemoryDenyWriteExecute") == "yes"
    for key in ("Type", "NotifyAccess", "KillMode", "Restart", "MemoryDenyWriteExecute"):
        assert _unit_value(USER_UNIT, key) == _unit_value(UNIT, key)


def test_user_unit_verifies_cleanly(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    # A user manager's %h is $HOME and %E is $HOME/.config: a scratch home with a stand-in for
    # the venv the docs install, and a runtime folder, which the user manager needs.
    home = tmp_path / "home"
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    exec_start = _unit_value(USER_UNIT, "ExecStart").split()[0]
    assert exec_start.startswith("%h/")
    _stand_in(home / exec_start[len("%h/"):])
    unit = home / "rig2nwb.service"  # installed under the name the docs give it
    shutil.copy(USER_UNIT, unit)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime))
    out = subprocess.run([analyze, "--user", "verify", "--man=no", "--generators=no", str(unit)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert (out.stdout + out.stderr) == "" and out.returncode == 0, out.stdout + out.stderr


def test_sysusers_file_creates_the_units_user(tmp_path: Path) -> None:
    sysusers = _tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    out = subprocess.run([sysusers, f"--root={tmp_path}", str(SYSUSERS)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    user, group = _unit_value(UNIT, "User"), _unit_value(UNIT, "Group")
    passwd = {line.split(":")[0]: line.split(":") for line in
              (tmp_path / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in
              (tmp_path / "etc/group").read_text().splitlines()}
    assert user in passwd and group in groups
    entry = passwd[user]
    assert 0 < int(entry[2]) < 1000  # a system user
    assert entry[3] == groups[group][2]  # its primary group is the unit's Group=
    assert entry[5] == "/var/lib/" + _unit_value(UNIT, "StateDirectory")
    assert entry[6].endswith("nologin")


# --- MemoryDenyWriteExecute=yes: the real workload under the same seccomp rules ----------------

# What systemd (252) installs for MemoryDenyWriteExecute=yes (seccomp_memory_deny_write_execute):
# EPERM for mmap with PROT_WRITE|PROT_EXEC, for mprotect/pkey_mprotect adding PROT_EXEC, and for
# shmat with SHM_EXEC. Loaded with libseccomp (which systemd itself uses), then exec'd; children
# inherit it, as they do in the service.
_MDWE = """
import ctypes, os, sys
lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64),
                ("b", ctypes.c_uint64)]
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                       ctypes.c_uint, ctypes.POINTER(Cmp)]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ALLOW, EPERM, MASKED_EQ = 0x7FFF0000, 0x00050000 | 1, 7
W, X, SHM_EXEC = 2, 4, 0o100000
ctx = lib.seccomp_init(ALLOW)
for name, mask in (("mmap", W | X), ("mprotect", X), ("pkey_mprotect", X), ("shmat", SHM_EXEC)):
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    assert lib.seccomp_rule_add_array(ctx, EPERM, nr, 1, ctypes.byref(Cmp(2, MASKED_EQ, mask, mask))) == 0
ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS, as NoNewPrivileges=yes
assert lib.seccomp_load(ctx) == 0
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""

_PLOT = """
import sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
fig, ax = plt.subplots(1, 2)
ax[0].imshow(np.random.default_rng(0).random((64, 64)))
ax[1].plot(np.arange(100), np.sin(np.arange(100) / 10))
ax[1].set_title("dF/F")
fig.savefig(sys.argv[1], dpi=50)
"""


def _libseccomp() -> None:
    try:
        import ctypes

        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        pytest.skip("libseccomp.so.2 not installed (it comes with systemd)")


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                    reason="seccomp emulation written for Linux x86-64")
def test_daemon_runs_under_memory_deny_write_execute(make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    _libseccomp()
    wrapper = tmp_path / "mdwe.py"
    wrapper.write_text(_MDWE)
    under = [sys.executable, str(wrapper)]

    # The filter bites: a writable+executable mapping is refused under it, allowed without.
    wx = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
    assert subprocess.run([sys.executable, "-c", wx], timeout=60).returncode == 0
    refused = subprocess.run([*under, "-c", wx], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "PermissionError" in refused.stderr

    # matplotlib (Agg) renders a picture.
    png = tmp_path / "plot.png"
    plot = subprocess.run([*under, "-c", _PLOT, str(png)], capture_output=True, text=True, timeout=120)
    assert plot.returncode == 0, plot.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The daemon: supervisor, worker (ctypes prctl), numpy, h5py + Blosc, the validation child.
    # (with the summary picture, so the check child's matplotlib runs under the filter too)
    lab = make_lab(output={"compression": "blosc-lz4"}, status={"summary_picture": True})
    frames = random_frames(40, seed=3)
    lab.tiff("x_00001.tif", frames)
    lab.lab_files(n_frames=len(frames))
    daemon = subprocess.Popen([*under, "-m", "rig2nwb", "run", "--config", str(lab.config_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def checked() -> bool:
            rows = json.loads(lab.run_cli("status", "--json").stdout or "[]")
            return bool(rows) and rows[0]["validation_ok"] is not None

        wait_for(checked, 120, what="the session to be finished and checked")
        row = json.loads(lab.run_cli("status", "--json").stdout)[0]
        assert row["state"] == "finished" and row["frames"] == len(frames)
        assert row["validation_ok"] is True, row["validation"]
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            rc = daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            raise
    _, err = daemon.communicate()
    assert rc == 0, err
    assert "PermissionError" not in err and "Traceback" not in err, err
    assert (nwb_frames(lab.nwb()) == frames).all()
    assert summary_png(lab.config(), "m1", "s1").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


JOB_UNIT = UNIT.parent / "rig2nwb-suite2p@.service"


def test_suite2p_job_unit_verifies_and_runs_the_wrapper_on_its_folder(tmp_path: Path) -> None:
    escape = _tool("systemd-escape")
    exec_start = _unit_value(JOB_UNIT, "ExecStart").split()
    assert exec_start[1:] == ["-m", "rig2nwb.processing.runjob", "%f"]
    # The instance name the local executor makes of a job folder gives the folder back as %f.
    folder = "/var/lib/rig2nwb/jobs/0123abcd"
    instance = subprocess.run([escape, "--path", folder], capture_output=True, text=True,
                              check=True).stdout.strip()
    from rig2nwb.processing.local import UNIT as TEMPLATE
    from rig2nwb.processing.local import unit_instance

    assert unit_instance(Path(folder)) == instance
    assert _verify_in_scratch_root(tmp_path, JOB_UNIT, TEMPLATE.format(instance)) == ""
    # Not the daemon's sandbox: numba needs writable executable memory.
    assert not [ln for ln in JOB_UNIT.read_text().splitlines()
                if ln.startswith("MemoryDenyWriteExecute=")]
    assert _unit_value(JOB_UNIT, "Nice") == "19"
    assert _unit_value(JOB_UNIT, "IOSchedulingClass") == "idle"
    assert _unit_value(JOB_UNIT, "User") == _unit_value(UNIT, "User")


TEMPLATE_UNIT = UNIT.parent / "rig2nwb@.service"
LAB_UNIT = UNIT.parent / "rig2nwb-lab.service"


def _verify_in_scratch_root(tmp_path: Path, unit_file: Path, name: str) -> str:
    analyze = _tool("systemd-analyze")
    system_units = Path("/usr/lib/systemd/system")
    if not (system_units / "multi-user.target").exists():
        pytest.skip(f"{system_units} has no systemd units")
    root = tmp_path / "root"
    if not root.exists():
        shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
        (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(unit_file, root / "etc/systemd/system" / unit_file.name)
    _stand_in(root / _unit_value(unit_file, "ExecStart").split()[0].lstrip("/"))
    out = subprocess.run([analyze, "verify", f"--root={root}", "--man=no", "--generators=no",
                          name], capture_output=True, text=True, timeout=120)
    return out.stdout + out.stderr + ("" if out.returncode == 0 else f"exit {out.returncode}")


def test_template_unit_runs_one_rig_per_instance(tmp_path: Path) -> None:
    assert _verify_in_scratch_root(tmp_path, TEMPLATE_UNIT, "rig2nwb@rig2.service") == ""
    assert _unit_value(TEMPLATE_UNIT, "ExecStart").endswith("run --config /etc/rig2nwb/%i.toml")
    for key in ("StateDirectory", "LogsDirectory", "CacheDirectory"):
        assert _unit_value(TEMPLATE_UNIT, key) == "rig2nwb/%i"
    assert _unit_value(TEMPLATE_UNIT, "EnvironmentFile") == "-/etc/rig2nwb/%i.secrets.env"
    # The same service contract and hardening as the single-rig unit, key by key.
    differ = {"Description", "ExecStart", "StateDirectory", "LogsDirectory", "CacheDirectory",
              "EnvironmentFile", "Environment", "ReadWritePaths", "ReadOnlyPaths"}

    def settings(unit: Path) -> list[str]:
        return [line for line in unit.read_text().splitlines()
                if "=" in line and not line.startswith("#") and line.split("=")[0] not in differ]

    assert settings(TEMPLATE_UNIT) == settings(UNIT)


def test_template_and_lab_units_security_exposure_at_most_1_5() -> None:
    analyze = _tool("systemd-analyze")
    for unit in (TEMPLATE_UNIT, LAB_UNIT):
        out = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(unit)],
                             capture_output=True, text=True, timeout=120)
        m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out.stdout)
        assert m, out.stdout + out.stderr
        assert float(m.group(1)) <= 1.5, (unit.name, out.stdout)


def test_lab_unit_verifies_and_watches_every_rig(tmp_path: Path) -> None:
    assert _verify_in_scratch_root(tmp_path, LAB_UNIT, LAB_UNIT.name) == ""
    argv = _unit_value(LAB_UNIT, "ExecStart").split()
    assert argv[1:3] == ["lab", "/etc/rig2nwb"] and "--page" in argv and "--watch" in argv
    assert _unit_value(LAB_UNIT, "User") == _unit_value(TEMPLATE_UNIT, "User")
