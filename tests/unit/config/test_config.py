"""Configuration validation: every problem reported at once, each with its location."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rig2nwb.config.loading import load_config
from rig2nwb.errors import ConfigError
from rig2nwb.testing.configs import write_config
from rig2nwb.testing.paths import REPO


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_shipped_config_is_valid_once_its_folders_exist(tmp_path: Path) -> None:
    text = (REPO / "config.toml").read_text()
    cfg_path = tmp_path / "config.toml"
    cfg_path.write_text(text)
    for sub in ("demo-run/rig", "demo-run/nwb"):
        (tmp_path / sub).mkdir(parents=True)
    cfg = load_config(cfg_path)
    assert cfg.rig.root == tmp_path / "demo-run/rig"  # relative to the config file's folder
    assert cfg.rig.frames == "{subject}/tif/{site}/{session}/*.tif"
    assert cfg.output.nwb_name == "sub-{subject}_ses-{session}.nwb"
    assert cfg.completion.settle_seconds == 5


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write_config(tmp_path / "bad.toml", {
        "rig": {"root": str(tmp_path / "nope"), "frames": "{subject}/*.tif", "colour": "red",
                "scan_file": "{animal}/scan.txt"},
        "output": {"nwb_name": "out.nwb", "compression": "zip"},
        "state": {"folder": str(tmp_path / "a" / "b")},
        "completion": {"settle_seconds": "five"},
        "session": {"timezone": "Mars/Olympus"},
    })
    problems = _problems(path)
    text = "\n".join(problems)
    expected = [
        "rig.root: path does not exist",
        "rig.colour: unknown key",
        "rig.frames: missing placeholder(s) {session}",
        "rig.scan_file: unknown placeholder(s) {animal}",
        "output.folder: missing required key",
        "output.nwb_name: missing placeholder(s) {session}, {subject}",
        "output.compression: Input should be",
        "state.folder: cannot be created",
        "completion.settle_seconds: Input should be a valid number",
        "session.timezone: unknown time zone 'Mars/Olympus'",
    ]
    for fragment in expected:
        assert any(fragment in p for p in problems), f"{fragment!r} not in:\n{text}"
    assert len(problems) >= len(expected)


def test_missing_sections_and_wrong_types(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", {"rig": {"root": 5}})
    problems = _problems(path)
    assert any(p.startswith("rig.root: Input is not a valid path") and "(got 5)" in p
               for p in problems)
    assert "output: missing required key" in problems
    assert "state: missing required key" in problems


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.toml"
    bad.write_text("[rig\nroot = ")
    assert any("not valid TOML" in p for p in _problems(bad))
    assert _problems(tmp_path / "absent.toml") == ["file not found"]


def test_scanimage_layout_is_expressible(tmp_path: Path) -> None:
    for d in ("rig", "out"):
        (tmp_path / d).mkdir()
    path = write_config(tmp_path / "si.toml", {
        "rig": {"root": str(tmp_path / "rig"), "frames": "{session}/{session}_*.tif",
                "subject": "mouse7", "scan_file": "", "trial_file": "",
                "end_marker": "{session}/done"},
        "output": {"folder": str(tmp_path / "out")},
        "state": {"folder": str(tmp_path / "state")},
    })
    cfg = load_config(path)
    pat = cfg.frames_pattern
    assert pat.match("exp3/exp3_00001_00002.tif") == {"session": "exp3"}
    assert pat.match("exp3/exp3_00001_00002.TIF") == {"session": "exp3"}
    assert pat.match("exp3/other_00001.tif") is None  # the repeated placeholder must agree
    assert pat.match("exp3/sub/exp3_00001.tif") is None  # '*' never crosses a folder


def test_subject_needed_when_pattern_has_none(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", {
        "rig": {"root": str(tmp_path), "frames": "{session}/*.tif"},
        "output": {"folder": str(tmp_path)}, "state": {"folder": str(tmp_path)},
    })
    assert any(p.startswith("rig.subject: required") for p in _problems(path))


def test_check_config_command_prints_every_problem(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", {
        "rig": {"root": str(tmp_path / "missing"), "frames": "*.tif"},
        "output": {"folder": str(tmp_path / "missing-too")},
        "state": {"folder": str(tmp_path)},
    })
    proc = subprocess.run([sys.executable, "-m", "rig2nwb", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "rig.root: path does not exist" in proc.stderr
    assert "output.folder: path does not exist" in proc.stderr
    assert "rig.frames: missing placeholder(s) {session}" in proc.stderr
    # `run` refuses to start with the same message.
    run = subprocess.run([sys.executable, "-m", "rig2nwb", "run", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "rig.root: path does not exist" in run.stderr


def test_check_config_ok(tmp_path: Path) -> None:
    (tmp_path / "rig").mkdir()
    path = write_config(tmp_path / "c.toml", {
        "rig": {"root": "rig"}, "output": {"folder": "."}, "state": {"folder": "state"},
        "subject": {"age": "P90D"},  # DANDI-complete, else check-config exits 1
    })
    proc = subprocess.run([sys.executable, "-m", "rig2nwb", "check-config", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
