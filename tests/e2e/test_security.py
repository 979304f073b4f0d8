"""Security: names from the rig cannot steer where rig2nwb writes, the daemon works as an
unprivileged user that can only read the rig, and notification secrets never leak.

Expectations are independent of rig2nwb's code: a snapshot of every path the test owns (taken by
os.walk before and after), the frames the test wrote, the secret the test planted, and what the
kernel allows a process under setpriv to do.
"""

from __future__ import annotations

import base64
import hashlib
import html.parser
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import h5py
import numpy as np
import pytest

from rig2nwb.ledger.store import Ledger
from rig2nwb.outputs.status import collect
from rig2nwb.testing.configs import append_config
from rig2nwb.testing.figures import record
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.nwbfiles import nwb_frames
from rig2nwb.testing.paths import REPO
from rig2nwb.testing.receivers import HttpReceiver, SmtpReceiver
from rig2nwb.testing.services import run_service
from rig2nwb.testing.tiffs import random_frames, write_tiff
from rig2nwb.testing.waits import wait_for

# --- snapshots ----------------------------------------------------------------------------------


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root`` (links not followed) but those under ``skip``: its kind, mode,
    size, mtime and, for files, sha256; so any file or folder made, changed or removed shows."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in dirnames + filenames:
            p = here / name
            st = p.lstat()
            kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if kind == "file" else (
                os.readlink(p) if kind == "link" else "")
            mtime = st.st_mtime_ns if kind != "dir" else 0  # a listed folder keeps its mtime anyway
            out[str(p.relative_to(root))] = (kind, st.st_mode, st.st_size if kind == "file" else 0,
                                             mtime, digest)
    return out


def diff(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]]) -> list[str]:
    return sorted({k for k in before.keys() | after.keys() if before.get(k) != after.get(k)})


# --- 2. hostile names ---------------------------------------------------------------------------

# Subject folder names that are legal on Linux but look like paths, shell syntax or markup.
HOSTILE_SUBJECTS = [
    "...", "c:d", "C:", "~", "~root", "$HOME", "${HOME}", "-rf", "--help", "a\nb", "tab\tname",
    "\u2215etc\u2215passwd",          # DIVISION SLASH
    "\uff0e\uff0e\uff0fup",           # fullwidth full stops + fullwidth solidus
    "..\u2215..\u2215escape",
    "\u2024\u2024",                   # ONE DOT LEADER x2: looks like '..'
    "<img src=x onerror=alert(1)>", '"quoted"', "%2e%2e%2fenc", "x" * 100,
]
# Refused: a backslash (a separator on Windows), leading/trailing blanks.
REFUSED_SUBJECTS = ["back\\slash", "..\\..\\up", " lead", "trail "]
# Session names from *file* names (pattern {session}_*.tif): here '..' and '.' are possible.
HOSTILE_SESSIONS = ["..", ".", "~", "-n", "$HOME"]
LONG = "y" * 250  # a legal folder name whose NWB file name would be over 255 bytes


def _expect_converted(name: str) -> bool:
    """The test's own rule: a name is a safe file-name part unless it is '.' or '..', holds a
    separator of any OS, has blanks at its ends, or holds a control character (a newline or a
    tab would break every line of the log, the status table and the page that names it)."""
    return (name not in (".", "..") and "/" not in name and "\\" not in name
            and name == name.strip() and not any(unicodedata.category(c) == "Cc" for c in name))


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.attributes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attributes |= {k for k, _ in attrs}
        self.links += [v for k, v in attrs if k in ("href", "src") and v]


def test_hostile_names_write_nothing_outside_output_and_state(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    home, cwd, outside = tmp_path / "home", tmp_path / "cwd", tmp_path / "outside"
    for p in (home, cwd, outside):
        p.mkdir()
    (outside / "keep.txt").write_text("not yours\n")
    (home / ".cache").mkdir()
    (home / ".config").mkdir()  # as a real home has; what lands inside is checked
    monkeypatch.setenv("HOME", str(home))  # a '~' expanded anywhere would land in the snapshot
    monkeypatch.chdir(cwd)                 # and so would a relative path
    lab = Lab(tmp_path / "lab",
              # file names give the session: '..' and '.' are reachable, unlike with folders
              rig={"frames": "{subject}/{site}/{session}_*.tif", "scan_file": "", "trial_file": ""},
              output={"nwb_name": "{subject}_{site}_{session}.nwb", "check_files": False},
              completion={"require_lab_files": False, "session_idle_seconds": 1.5},
              status={"summary_picture": True, "preview_interval_seconds": 0.5})
    expected: dict[tuple[str, str], np.ndarray] = {}
    refused: list[str] = []

    def add(subject: str, site: str, session: str, seed: int) -> None:
        frames = random_frames(3, (16, 16), seed=seed)
        write_tiff(lab.root / subject / site / f"{session}_00001.tif", frames)
        if all(_expect_converted(n) for n in (subject, site, session)):
            expected[(subject, session)] = frames
        else:
            refused.append(f"{subject}/{site}/{session}")

    for i, name in enumerate(HOSTILE_SUBJECTS + REFUSED_SUBJECTS):
        add(name, "site1", "s1", i)
    for i, name in enumerate(HOSTILE_SESSIONS):
        add("m1", "site1", name, 100 + i)
    add("m2", "..\u2215..", "s1", 200)
    add("m3", "~", "s1", 201)
    add("m4", "$HOME", "${HOME}", 202)
    add(LONG, "site1", "s1", 203)
    expected.pop((LONG, "s1"))  # cannot be written: checked to be reported, not converted
    # a sidecar trying path injection through metadata (a subject's, so it applies to m1 only)
    (lab.root / "m1" / "rig2nwb.toml").write_text(
        '[session]\nlab = "../../../outside/lab"\ninstitution = "/etc/passwd"\n'
        'experiment_description = "$(touch ../../pwned) ${HOME} ~"\nprotocol = "{subject}/../{session}"\n'
        'keywords = ["../..", "/", "\\\\server\\\\share"]\n'
        '[subject]\nstrain = "../../../../outside/strain"\n', encoding="utf-8")
    # a session folder that is a link to a folder outside the rig: read at most, never written
    write_tiff(outside / "linked" / "z_00001.tif", random_frames(2, (16, 16), seed=300))
    (lab.root / "m5").mkdir()
    (lab.root / "m5" / "site1").symlink_to(outside / "linked", target_is_directory=True)
    lab.config()  # the config itself is valid

    # pynwb caches its type map (a pickle) in ~/.cache/pynwb-hdmf when it is first imported, and
    # matplotlib its font list and settings in ~/.cache/matplotlib and ~/.config/matplotlib (the
    # check child drawing a picture; under systemd MPLCONFIGDIR points elsewhere): the
    # libraries' own caches, written whatever the names are; everything else counts.
    skip = (lab.root, lab.out, lab.state, home / ".cache" / "pynwb-hdmf",
            home / ".cache" / "matplotlib", home / ".config" / "matplotlib")
    before, rig_before = snapshot(tmp_path, skip), snapshot(lab.root)

    def done(engine: Any) -> bool:
        rows = [engine.ledger.session(*key) for key in expected]
        return all(r is not None and r.state == "finished" for r in rows)

    run_service(lab, done, timeout=240)
    outside_changes = diff(before, snapshot(tmp_path, skip))
    rig_changes = diff(rig_before, snapshot(lab.root))
    out_files = sorted(p.relative_to(lab.out) for p in lab.out.rglob("*"))
    stray = [str(p) for p in out_files if not (len(p.parts) == 1 or (
        len(p.parts) == 2 and p.parts[0] == "rig2nwb-status"))]
    page = (lab.out / "rig2nwb-status.html").read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(page)
    bad_links = []
    for link in parser.links:
        parts = urlsplit(link)
        target = (lab.out / unquote(parts.path)).resolve()
        if parts.scheme or parts.netloc or link.startswith("/") or (
                parts.path and (not target.is_relative_to(lab.out.resolve()) or not target.exists())):
            bad_links.append(link)
    injected = "onerror" in parser.attributes or "<img src=x" in page
    ledger = Ledger(lab.state / "ledger.sqlite", readonly=True)
    try:
        rig_problems = " ".join(p.message for p in ledger.problems(None))
    finally:
        ledger.close()
    record("security", test="hostile names", tried=len(expected) + len(refused) + 2,
           refused=len(refused) + 1,
           passed=not (outside_changes or rig_changes or stray or bad_links or injected),
           detail=f"outside changes {outside_changes[:5]}, stray {stray[:5]}, links {bad_links[:5]}")
    assert outside_changes == [], "written outside output/state"
    assert rig_changes == [], "the rig folder was changed"
    assert stray == [], "unexpected sub-folders in the output folder"
    assert bad_links == [] and parser.links, "status page links leave the output folder"
    assert not injected, "a folder name became markup in the status page"
    for (subject, session), frames in expected.items():
        site = {"m2": "..\u2215..", "m3": "~", "m4": "$HOME"}.get(subject, "site1")
        path = lab.out / f"{subject}_{site}_{session}.nwb"
        assert np.array_equal(nwb_frames(path), frames), (subject, session)
    nwbs = sorted(p.name for p in lab.out.glob("*.nwb"))
    assert len(nwbs) == len(expected), nwbs
    with h5py.File(lab.out / "m1_site1_~.nwb", "r") as f:  # the sidecar's text is data, nothing else
        assert f["general/lab"][()].decode() == "../../../outside/lab"
        assert f["general/subject/strain"][()].decode() == "../../../../outside/strain"
    pictures = sorted(p.name for p in (lab.out / "rig2nwb-status").iterdir())
    assert all("/" not in n and "\\" not in n for n in pictures)
    # every refused name, and the name too long for a file, is reported (and nothing else made)
    control = [n for n in HOSTILE_SUBJECTS if any(unicodedata.category(c) == "Cc" for c in n)]
    for name in [*REFUSED_SUBJECTS, *control, "..", "."]:
        assert name in rig_problems or repr(name) in rig_problems, name
    assert LONG in rig_problems


# --- 4. secrets never leak -----------------------------------------------------------------------

FAST_NOTIFY = {"attempts": 2, "retry_delays_seconds": [0.2], "timeout_seconds": 10, "stop_flush_seconds": 5}


def _secret_forms(secret: str, user: str) -> dict[str, bytes]:
    """The secret as it could show up: as is, percent-encoded (as in a URL), base64 (alone, and as
    the HTTP Basic / SMTP AUTH PLAIN value that carries it), and its first 12 characters (a
    truncated log line)."""
    forms = {"plain": secret, "quoted": quote(secret, safe=""), "quoted_path": quote(secret),
             "prefix": secret[:12]}
    encoded = [("b64", secret), ("b64_basic", f"{user}:{secret}"), ("b64_plain", f"\0{user}\0{secret}")]
    for name, raw in encoded:
        forms[name] = base64.b64encode(raw.encode()).decode()
        forms[name + "_urlsafe"] = base64.urlsafe_b64encode(raw.encode()).decode()
    return {k: v.encode() for k, v in forms.items()}


def _leaks(data: bytes, forms: dict[str, bytes]) -> list[str]:
    return [name for name, form in forms.items() if form in data]


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    r = HttpReceiver()
    yield r
    r.close()


def test_secrets_never_appear_in_logs_status_or_files(tmp_path: Path, http: HttpReceiver,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # URL-hostile characters so the encoded forms differ from the plain one
    secret = secrets.token_urlsafe(24) + "/Pa55:w@rd+%" + secrets.token_hex(8)
    smtp = SmtpReceiver("rig2nwb", secret)
    monkeypatch.setenv("HOOK_TOKEN", secret)
    monkeypatch.setenv("SMTP_PASSWORD", secret)
    lab = Lab(tmp_path / "lab", notify=FAST_NOTIFY, status={"summary_picture": True})
    http.failing.add("/broken")
    targets = [
        {"url": f"json://rig:${{HOOK_TOKEN}}@127.0.0.1:{http.port}/hook"},
        {"url": f"json://rig:${{HOOK_TOKEN}}@127.0.0.1:{http.port}/broken"},  # retried, given up
        {"url": f"mailto://rig2nwb:${{SMTP_PASSWORD}}@127.0.0.1:{smtp.port}"
                "?mode=insecure&from=rig@example.org&to=lab@example.org", "tags": ["converted"]},
    ]
    append_config(lab.config_path, {"notify.targets": targets})
    assert secret not in lab.config_path.read_text()
    frames = random_frames(6, seed=4)
    lab.tiff("x_00001.tif", frames)
    lab.lab_files(n_frames=len(frames))
    bad = lab.session_dir("s2") / "bad_00001.tif"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a TIFF\n" * 40)
    out_path, err_path = tmp_path / "daemon.stdout", tmp_path / "daemon.stderr"
    try:
        with out_path.open("wb") as out, err_path.open("wb") as err:
            daemon = subprocess.Popen([sys.executable, "-m", "rig2nwb", "run", "--config",
                                       str(lab.config_path)], stdout=out, stderr=err)
            try:
                def done() -> bool:
                    rows = {r["session"]: r for r in _status_json(lab)}
                    s1, s2 = rows.get("s1", {}), rows.get("s2", {})
                    return (s1.get("state") == "finished" and s1.get("validation") not in (None, "pending")
                            and bool(s2.get("problems")) and bool(smtp.mails)
                            and sum("converted" in p.title for p in http.at("/broken"))
                            >= FAST_NOTIFY["attempts"])
                wait_for(done, timeout=180, interval=1.0, what="conversion, problem and notifications")
            finally:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=60)
    finally:
        smtp.close()
    assert http.at("/hook", delivered=True), "the notification with the secret in its URL was not sent"
    outputs = {"daemon stdout": out_path.read_bytes(), "daemon stderr": err_path.read_bytes()}
    for args in (("status",), ("status", "--json"), ("status", "s1"), ("status", "s2"), ("check-config",)):
        proc = lab.run_cli(*args, timeout=120)
        outputs[" ".join(args)] = (proc.stdout + proc.stderr).encode()
    for p in sorted(lab.base.rglob("*")):  # log, ledger + WAL, NWB files, status page, pictures, config
        if p.is_file():
            outputs[str(p.relative_to(lab.base))] = p.read_bytes()
    forms = _secret_forms(secret, "rig")
    forms.update({f"smtp {k}": v for k, v in _secret_forms(secret, "rig2nwb").items()})
    leaks = {where: found for where, data in outputs.items() if (found := _leaks(data, forms))}
    log = outputs["state/rig2nwb.log"].decode()
    checked = [n for n in outputs if n.endswith((".nwb", ".html", ".json", ".png", ".log"))
               or "ledger" in n or n.startswith(("status", "daemon"))]
    record("security", test="secrets never leak", tried=len(outputs), refused=len(outputs) - len(leaks),
           passed=not leaks, detail=f"{len(outputs)} outputs checked for {len(forms)} forms; leaks: {leaks}")
    assert leaks == {}
    # the checks saw real content: the retries were logged, the problem and the file are there
    assert "given up" in log and "bad_00001.tif" in outputs["status s2"].decode()
    assert any(n.endswith(".nwb") for n in checked) and any("ledger.sqlite" in n for n in checked)
    assert any(n.endswith(".png") for n in checked) and "nwb/rig2nwb-status.html" in outputs
    assert np.array_equal(nwb_frames(lab.nwb()), frames)


def _status_json(lab: Lab) -> list[dict[str, Any]]:
    """What `status --json` shows, read in this process (polling a child each second is slow)."""
    try:
        return collect(lab.config())
    except Exception:  # the ledger may not exist yet
        return []


# --- 3. an unprivileged user that can only read the rig ------------------------------------------

UID = GID = 65534  # nobody / nogroup


def _setpriv() -> list[str]:
    return ["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all"]


def _user_python(env: dict[str, str]) -> str | None:
    """A Python the service user can run that imports rig2nwb and can start its own children
    (the supervisor starts the worker, the worker the check child): this interpreter, or the
    system's Python of the same version with this environment's packages on PYTHONPATH (when
    this interpreter lives in root's home, where the user cannot reach it)."""
    probe = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
             "'import rig2nwb.engine.engine, pynwb, h5py'], check=True)")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in dict.fromkeys([sys.executable, f"/usr/bin/{version}"]):
        if not Path(candidate).exists():
            continue
        probed = subprocess.run([*_setpriv(), candidate, "-c", probe], env=env, capture_output=True,
                                timeout=120)
        if probed.returncode == 0:
            return candidate
    return None


@pytest.fixture
def world_readable_base() -> Iterator[Path]:
    """A folder the unprivileged user can reach (pytest's tmp_path is root's, mode 700)."""
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("needs root to run the daemon as another user")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    base = Path(tempfile.mkdtemp(prefix="rig2nwb-unpriv-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_daemon_as_unprivileged_user_converts_and_cannot_touch_the_rig(world_readable_base: Path) -> None:
    base = world_readable_base
    lab = Lab(base / "lab", output={"check_files": True})
    lab.base.chmod(0o755)
    frames = random_frames(10, seed=5)
    lab.tiff("x_00001.tif", frames[:4])
    lab.tiff("x_00002.tif", frames[4:])
    lab.lab_files(n_frames=len(frames))
    lab.state.mkdir()
    home = base / "home"  # the service user's own home (pynwb keeps a cache there)
    home.mkdir()
    for p in (lab.out, lab.state, home):
        os.chown(p, UID, GID)
        p.chmod(0o755)
    for p in [lab.root, *lab.root.rglob("*")]:  # the rig's: root's, readable by all, writable by root
        os.chown(p, 0, 0)
        p.chmod(0o755 if p.is_dir() else 0o644)
    lab.config_path.chmod(0o644)
    rig_before = snapshot(lab.root)
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {**os.environ, "HOME": str(home),
           "PYTHONPATH": os.pathsep.join([*site, str(REPO / "daemon")])}
    python = _user_python(env)
    if python is None:
        pytest.skip(f"no Python that uid {UID} can run with rig2nwb installed")
    log = lab.state / "rig2nwb.log"
    err_path = base / "daemon.stderr"
    with err_path.open("wb") as err:
        daemon = subprocess.Popen([*_setpriv(), python, "-m", "rig2nwb", "run", "--config",
                                   str(lab.config_path)], stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            def checked_or_dead() -> bool:
                return (log.exists() and '"nwb checked"' in log.read_text()) or daemon.poll() is not None
            wait_for(checked_or_dead, timeout=180, interval=0.5, what="the session converted and checked")
            running = daemon.poll() is None
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
    # the same user, trying what a daemon gone wrong could try on the rig folder
    session = lab.session_dir()
    attempts = {
        "create a file": f"open({str(session / 'evil.txt')!r}, 'w')",
        "write into a TIFF": f"open({str(session / 'x_00001.tif')!r}, 'r+b').write(b'x')",
        "delete a TIFF": f"import os; os.unlink({str(session / 'x_00002.tif')!r})",
        "rename a TIFF": f"import os; os.rename({str(session / 'x_00002.tif')!r}, "
                         f"{str(session / 'y.tif')!r})",
        "chmod a TIFF": f"import os; os.chmod({str(session / 'x_00001.tif')!r}, 0o666)",
        "make a folder": f"import os; os.mkdir({str(lab.root / 'new')!r})",
    }
    denied = {}
    for what, code in attempts.items():
        child = subprocess.run([*_setpriv(), python, "-c", code], capture_output=True, text=True,
                               timeout=60, env=env)
        denied[what] = child.returncode != 0 and "PermissionError" in child.stderr
    rig_changes = diff(rig_before, snapshot(lab.root))
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in [*lab.out.rglob("*"), *lab.state.rglob("*")]}
    converted = lab.nwb().exists() and np.array_equal(nwb_frames(lab.nwb()), frames)
    record("security", test="unprivileged user, read-only rig", tried=len(attempts),
           refused=sum(denied.values()),
           passed=bool(running and converted and not rig_changes and all(denied.values())),
           detail=f"denied {denied}; rig changes {rig_changes}; owners {owners}")
    assert running, err_path.read_text()[-2000:]
    assert converted
    assert '"valid' in log.read_text() or "valid;" in log.read_text()
    assert rig_changes == []
    assert denied == dict.fromkeys(attempts, True)
    assert owners == {(UID, GID)}, "a file in output/state is not the service user's"


@pytest.mark.parametrize("subject", ["..", ".", "a/b", "..\\..", "c:d", "\u2215", "~", "x" * 100, "a\nb"])
@pytest.mark.parametrize("session", ["..", "s1", "/abs", "*?", "<>|\""])
def test_picture_paths_stay_in_the_picture_folder(tmp_path: Path, subject: str, session: str) -> None:
    """Even for names the watcher refuses, the picture paths are one plain file in the folder."""
    from rig2nwb.config.paths import picture_folder, preview_png, summary_png
    cfg = Lab(tmp_path).config()
    for path in (summary_png(cfg, subject, session), preview_png(cfg, subject, session)):
        assert path.parent == picture_folder(cfg)
        assert path.name not in (".", "..") and "/" not in path.name and "\\" not in path.name
        assert path.resolve().parent == picture_folder(cfg).resolve()
