"""Notifications through apprise, end to end: the real daemon converts a simulated session and
real receivers (an HTTP server for json://, an SMTP server for mailto://) take what it sends.

Expectations come from what the test wrote (frames, file names, the secret) and from the
receivers, never from the notifier's own formatting code."""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest

from rig2nwb.config.loading import load_config
from rig2nwb.config.paths import summary_png
from rig2nwb.errors import ConfigError
from rig2nwb.ledger.store import Ledger
from rig2nwb.outputs.status import collect
from rig2nwb.testing.configs import append_config
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.nwbfiles import nwb_frames
from rig2nwb.testing.receivers import HttpReceiver, SmtpReceiver
from rig2nwb.testing.services import run_service
from rig2nwb.testing.tiffs import random_frames

SECRET = "s3cr3t Pa55@word/x:y"  # characters a URL cannot hold as they are
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = {"attempts": 3, "retry_delays_seconds": [0.1, 0.2], "timeout_seconds": 10,
        "stop_flush_seconds": 5}


@pytest.fixture
def http() -> Iterator[HttpReceiver]:
    r = HttpReceiver()
    yield r
    r.close()


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    r = SmtpReceiver("rig2nwb", SECRET)
    yield r
    r.close()


def add_targets(lab: Lab, targets: list[dict[str, Any]]) -> None:
    """Append [[notify.targets]] tables to the lab's config.toml."""
    append_config(lab.config_path, {"notify.targets": targets})


def tiny_png() -> bytes:
    """A valid 1x1 grey PNG, built from the format's definition."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b""))


def log_lines(lab: Lab) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (lab.state / "rig2nwb.log").read_text().splitlines()
            if line.startswith("{")]


def titles(posts: list[Any]) -> list[str]:
    return [p.title for p in posts]


# --- the daemon converting a session -------------------------------------------------------------


def test_session_problem_routing_retries_and_mail(make_lab, http: HttpReceiver, smtp: SmtpReceiver,  # type: ignore[no-untyped-def]
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_USER", "rig2nwb")
    monkeypatch.setenv("SMTP_PASSWORD", SECRET)
    lab: Lab = make_lab(notify=FAST, status={"summary_picture": True})
    http.failing.add("/broken")
    add_targets(lab, [
        {"url": http.url("/all")},  # default kinds
        {"url": http.url("/problems"), "tags": ["problem"]},
        {"url": http.url("/broken")},  # answers 500: retried, given up, others unaffected
        {"url": f"mailto://${{SMTP_USER}}:${{SMTP_PASSWORD}}@127.0.0.1:{smtp.port}"
                "?mode=insecure&from=rig@example.org&to=lab@example.org", "tags": ["converted"]},
    ])
    cfg = lab.config()
    frames = random_frames(12, seed=3)
    lab.tiff("x_00001.tif", frames[:5])
    lab.tiff("x_00002.tif", frames[5:])
    lab.lab_files(n_frames=len(frames))
    bad = lab.session_dir("s2") / "bad_00001.tif"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not a TIFF file at all\n" * 20)
    picture = summary_png(cfg, "m1", "s1")
    if not picture.exists():  # the summary picture may be drawn by the check child already
        picture.parent.mkdir(parents=True, exist_ok=True)
        picture.write_bytes(tiny_png())

    def everything_arrived(engine: Any) -> bool:
        broken_converted = [t for t in titles(http.at("/broken")) if "converted" in t]
        return (any("converted" in t for t in titles(http.at("/all")))
                and any("problem" in t for t in titles(http.at("/all")))
                and bool(http.at("/problems")) and bool(smtp.mails)
                and len(broken_converted) >= FAST["attempts"])

    run_service(lab, everything_arrived, timeout=120)

    # conversion went on, whatever the broken target did
    assert np.array_equal(nwb_frames(lab.nwb()), frames)
    status = {r["session"]: r for r in collect(cfg)}
    assert status["s1"]["state"] == "finished"

    got = http.at("/all")
    kinds = [re.sub(r"^rig2nwb rig1: ", "", t) for t in titles(got)]
    assert kinds[0] == "daemon started" and kinds[-1] == "daemon stopped", kinds
    assert sum("converted" in k for k in kinds) == 1
    assert sum("problem" in k for k in kinds) == 1
    assert len(kinds) == 4, kinds

    converted = next(p for p in got if "converted" in p.title)
    assert converted.title == "rig2nwb rig1: sub-m1 ses-s1 converted"
    assert "Finished: 12 frames" in converted.body
    assert str(lab.nwb()) in converted.body
    check = status["s1"]["validation"]
    assert check.startswith("valid;") and f"Check: {check}" in converted.body
    [(name, data)] = converted.attachments()
    assert name == picture.name and data.startswith(PNG_SIGNATURE)
    assert converted.payload["type"] == "success"

    problem = next(p for p in got if "problem" in p.title)
    assert problem.title == "rig2nwb rig1: sub-m1 ses-s2 problem"
    assert "bad_00001.tif" in problem.body
    # routing: the problems-only target got the problem and nothing else
    assert titles(http.at("/problems")) == [problem.title]

    # the broken target: every message tried `attempts` times, then given up and logged
    broken = titles(http.at("/broken"))
    for kind in ("started", "problem", "converted", "stopped"):
        assert sum(kind in t for t in broken) == FAST["attempts"], broken
    given_up = [e for e in log_lines(lab) if e["event"] == "notification not delivered; given up"]
    assert len(given_up) == 4
    assert all(e["target"].startswith(f"json://127.0.0.1:{http.port}/broken") for e in given_up)
    assert {e["kind"] for e in given_up} == {"daemon", "problem", "converted"}

    # mail: plain SMTP with the login from the environment, converted only, picture attached
    assert smtp.logins and all(ok and user == "rig2nwb" for user, ok in smtp.logins)
    [mail] = smtp.mails
    assert mail.recipients == ["lab@example.org"]
    assert mail.subject == "rig2nwb rig1: sub-m1 ses-s1 converted"
    assert str(lab.nwb()) in mail.text() and "12 frames" in mail.text()
    [(mail_name, mail_data)] = mail.attachments()
    assert mail_name == picture.name and mail_data.startswith(PNG_SIGNATURE)

    # the secret is nowhere: log, ledger (incl. its WAL), status
    for text in [(lab.state / "rig2nwb.log").read_text(), json.dumps(collect(cfg))]:
        assert SECRET not in text and quote(SECRET, safe="") not in text
    for f in lab.state.glob("ledger.sqlite*"):
        assert SECRET.encode() not in f.read_bytes()
        assert quote(SECRET, safe="").encode() not in f.read_bytes()


def test_undelivered_message_is_sent_after_restart(make_lab, http: HttpReceiver) -> None:  # type: ignore[no-untyped-def]
    lab: Lab = make_lab(notify={**FAST, "attempts": 20, "retry_delays_seconds": [60],
                                "stop_flush_seconds": 0.5})
    add_targets(lab, [{"url": http.url("/t")}])
    old = Ledger(lab.state / "ledger.sqlite")
    old.add_event(None, "problem", "an old problem from before notifications were set up")
    old.close()
    http.failing.add("/t")  # the receiver is down during the first run

    run_service(lab, lambda engine: len(http.at("/t")) >= 1, timeout=60)
    assert not http.at("/t", delivered=True)

    http.failing.clear()
    run_service(lab, lambda engine: len(http.at("/t", delivered=True)) >= 3, timeout=60)
    delivered = [t.removeprefix("rig2nwb rig1: ") for t in titles(http.at("/t", delivered=True))]
    # run 1's started and stopped (kept across the restart), run 2's started and stopped;
    # each once, and the history from before the first start never
    assert delivered == ["daemon started", "daemon stopped", "daemon started", "daemon stopped"]
    assert not any("old problem" in p.body for p in http.at("/t"))


def test_disk_low_goes_to_problem_targets(make_lab, http: HttpReceiver) -> None:  # type: ignore[no-untyped-def]
    lab: Lab = make_lab(notify=FAST, output={"warn_free_mb": 10**12})  # 1 EB: always short
    add_targets(lab, [{"url": http.url("/w")},  # default kinds: problems included
                      {"url": http.url("/d"), "tags": ["converted", "daemon", "warning"]}])
    run_service(lab, lambda engine: bool(http.at("/w")), timeout=60)

    [warning] = [n for n in http.at("/w") if "daemon" not in n.title]
    assert warning.title == "rig2nwb rig1: problem"
    assert "output disk almost full" in warning.body and str(lab.out) in warning.body
    assert {p.title for p in http.at("/d")} <= {"rig2nwb rig1: daemon started",
                                                "rig2nwb rig1: daemon stopped"}
    ledger = Ledger(lab.state / "ledger.sqlite", readonly=True)
    try:
        [p] = [p for p in ledger.problems() if p.code == "disk_low"]
        assert p.session_id is None and p.severity == "warning"
    finally:
        ledger.close()


def test_converted_without_check_is_sent_when_the_session_finishes(make_lab, http: HttpReceiver) -> None:  # type: ignore[no-untyped-def]
    """No check child at all (checks and pictures off): no validate event will ever come."""
    lab: Lab = make_lab(notify=FAST, output={"check_files": False},
                        status={"summary_picture": False})
    add_targets(lab, [{"url": http.url("/c"), "tags": ["converted"]}])
    lab.tiff("x_00001.tif", random_frames(7, seed=5))
    lab.lab_files(n_frames=7)
    run_service(lab, lambda engine: bool(http.at("/c")), timeout=60)
    [note] = http.at("/c")
    assert note.title == "rig2nwb rig1: sub-m1 ses-s1 converted"
    assert "Finished: 7 frames" in note.body and "Check: off" in note.body
    assert not note.attachments()


def test_suite2p_attached_message(tmp_path: Path, http: HttpReceiver) -> None:
    from rig2nwb.testing.suite2p_folders import raw_npy
    from rig2nwb.testing.suite2p_sessions import SESSION, SUBJECT, make_session

    lab, _, s2p = make_session(tmp_path / "s2p", "twochan", channels=2)  # converted already
    append_config(lab.config_path, {"notify": FAST})
    add_targets(lab, [{"url": http.url("/s2p"), "tags": ["suite2p", "converted"]}])
    run_service(lab, lambda engine: bool(http.at("/s2p")), timeout=120)

    # the session was converted before the daemon first ran: that history is not sent
    [note] = http.at("/s2p")
    assert note.title == f"rig2nwb rig1: sub-{SUBJECT} ses-{SESSION} suite2p attached"
    planes = sorted(s2p.glob("plane*"))
    rois = sum(len(raw_npy(p / "stat.npy")) for p in planes)
    cells = sum(int((raw_npy(p / "iscell.npy")[:, 0] > 0).sum()) for p in planes)
    assert f"{rois} ROIs, {cells} cells, {len(planes)} plane(s)" in note.body
    assert str(lab.nwb(SESSION, SUBJECT)) in note.body and str(s2p) in note.body
    assert re.search(r"^Check: valid; nwbinspector: 0 critical", note.body, re.M), note.body


# --- configuration: secrets and URLs ---------------------------------------------------------


def config_with(lab: Lab, url: str, **target: Any) -> Path:
    add_targets(lab, [{"url": url, **target}])
    return lab.config_path


def problems_of(path: Path, **kw: Any) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(path, **kw)
    return exc.value.problems


def test_secret_from_environment_is_filled_in_and_never_shown(
        make_lab, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HOOK_PW", SECRET)
    cfg = load_config(config_with(make_lab(), "json://rig:${HOOK_PW}@127.0.0.1:8080/hook"))
    [target] = cfg.notify.targets
    assert target.url == "json://rig:${HOOK_PW}@127.0.0.1:8080/hook"
    assert target.secret_url() == f"json://rig:{quote(SECRET, safe='')}@127.0.0.1:8080/hook"
    assert target.tags == ["converted", "suite2p", "problem", "daemon"]
    for shown in (repr(cfg), str(cfg.model_dump()), cfg.model_dump_json()):
        assert SECRET not in shown and quote(SECRET, safe="") not in shown


def test_secret_from_systemd_credentials_directory(make_lab, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "NTFY_TOKEN").write_text("tk_abcdef123456\n")
    monkeypatch.delenv("NTFY_TOKEN", raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = load_config(config_with(make_lab(), "ntfy://${NTFY_TOKEN}@ntfy.example.org/rig1"))
    assert cfg.notify.targets[0].secret_url() == "ntfy://tk_abcdef123456@ntfy.example.org/rig1"


def test_missing_variable_is_a_configuration_error(make_lab, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("RIG2NWB_TEST_UNSET", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = config_with(make_lab(), "mailto://rig:${RIG2NWB_TEST_UNSET}@smtp.example.org")
    assert problems_of(path) == [
        "notify.targets[0].url: ${RIG2NWB_TEST_UNSET} is not set in the environment"]
    # `rig2nwb status` (no environment checks) still reads the config without the secret
    assert load_config(path, check_paths=False).notify.targets[0].url.endswith("smtp.example.org")


@pytest.mark.parametrize(("url", "secret", "expected"), [
    ("mailto://rig:hunter2secret@smtp.example.org", "hunter2secret",
     "holds a password written in the URL itself"),
    ("tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/12315544", "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
     "holds a secret (token or password) written literally"),
    ("bogus://somewhere", None, "apprise cannot use this URL"),
    ("json://127.0.0.1/${not valid}", None, "is not a valid reference"),
])
def test_bad_urls_are_configuration_errors(make_lab, url: str, secret: str | None,  # type: ignore[no-untyped-def]
                                           expected: str) -> None:
    [problem] = problems_of(config_with(make_lab(), url))
    assert problem.startswith("notify.targets[0].url: ") and expected in problem
    if secret is not None:
        assert secret not in problem


def test_unknown_kind_is_a_configuration_error(make_lab) -> None:  # type: ignore[no-untyped-def]
    problems = problems_of(config_with(make_lab(), "json://127.0.0.1/x", tags=["converted", "finished"]))
    assert any(p.startswith("notify.targets.0.tags.1:") and "'finished'" in p for p in problems)


# --- paths in messages -----------------------------------------------------------------------------


@pytest.mark.parametrize(("prefix", "expected"), [
    ("", None),
    ("https://lab.example.org/nwb/", "https://lab.example.org/nwb/sub-m1_ses-a%20b.nwb"),
    ("\\\\fileserver\\nwb", "\\\\fileserver\\nwb\\sub-m1_ses-a b.nwb"),
    ("/mnt/nwb", "/mnt/nwb/sub-m1_ses-a b.nwb"),
])
def test_link_prefix_replaces_the_output_folder(make_lab, prefix: str, expected: str | None) -> None:  # type: ignore[no-untyped-def]
    from rig2nwb.config.paths import display_path

    lab: Lab = make_lab(notify={"link_prefix": prefix})
    cfg = lab.config()
    inside = lab.out / "sub-m1_ses-a b.nwb"
    assert display_path(cfg, inside) == (expected or str(inside))
    assert display_path(cfg, lab.base / "elsewhere.nwb") == str(lab.base / "elsewhere.nwb")


def test_no_targets_costs_nothing() -> None:
    """The demo config has no targets: the daemon's hooks never import apprise."""
    import subprocess
    import sys

    from rig2nwb.testing.paths import REPO

    code = ("import sys; from rig2nwb.config.loading import load_config; "
            "from rig2nwb.outputs.notify import NotifyHook; "
            f"hook = NotifyHook(load_config({str(REPO / 'config.toml')!r}, check_paths=False)); "
            "print(hook.active, 'apprise' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr
