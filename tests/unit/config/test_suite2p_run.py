"""suite2p.run: the job settings in config.toml, and the settings file a session's job gets
(config.toml's, or a rig2nwb.toml sidecar's inside the rig folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rig2nwb.config.loading import config_warnings, load_config
from rig2nwb.errors import ConfigError, MetadataProblem
from rig2nwb.processing.settingsfile import settings_file
from rig2nwb.testing.configs import write_config


def lab(tmp_path: Path, run: dict[str, object], **suite2p: object) -> Path:
    (tmp_path / "rig").mkdir(exist_ok=True)
    (tmp_path / "nwb").mkdir(exist_ok=True)
    return write_config(tmp_path / "config.toml", {
        "rig": {"root": "rig"}, "output": {"folder": "nwb"}, "state": {"folder": "state"},
        "suite2p": dict(suite2p), "suite2p.run": run})


def test_defaults_leave_suite2p_to_the_lab(tmp_path: Path) -> None:
    cfg = load_config(lab(tmp_path, {}))
    assert cfg.suite2p.run.executor == "none"
    assert cfg.suite2p.run.command[:3] == ["{python}", "-m", "rig2nwb.suite2p.job"]
    assert not any("suite2p" in w for w in config_warnings(cfg))


def test_every_problem_of_a_run_section_at_once(tmp_path: Path) -> None:
    path = lab(tmp_path, {"executor": "cluster", "command": ["x", "{nope}"],
                          "slurm_options": ["--partition", "gpu", "-J", "--output=x.log"],
                          "settings": "ops.yaml", "max_running": 0})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = "\n".join(info.value.problems)
    assert "suite2p.run.executor" in text
    assert "unknown placeholder {nope}" in text
    assert "slurm_options[1]: 'gpu' is not an option" in text
    assert "slurm_options[2]: '-J' is set by rig2nwb" in text
    assert "slurm_options[3]: '--output=x.log' is set by rig2nwb" in text
    assert "suite2p.run.settings: ops.yaml" in text
    assert "suite2p.run.max_running" in text


def test_settings_path_is_relative_to_the_config_and_must_exist(tmp_path: Path) -> None:
    path = lab(tmp_path, {"executor": "local", "settings": "s2p/ops.json"},
               folder="/data/s2p/{subject}/{session}")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(f"no such file: {tmp_path / 's2p/ops.json'}" in p for p in info.value.problems)
    (tmp_path / "s2p").mkdir()
    (tmp_path / "s2p/ops.json").write_text("{}")
    cfg = load_config(path)
    assert cfg.suite2p.run.settings == tmp_path / "s2p/ops.json"
    assert not any("inside the rig folder" in w for w in config_warnings(cfg))


def test_jobs_writing_into_the_rig_folder_are_warned_about(tmp_path: Path) -> None:
    cfg = load_config(lab(tmp_path, {"executor": "slurm"}))  # suite2p.folder = "suite2p"
    assert any("inside the rig folder" in w and "write access" in w
               for w in config_warnings(cfg))


def test_a_sidecar_names_the_settings_of_the_sessions_below_it(tmp_path: Path) -> None:
    (tmp_path / "lab.json").write_text("{}")
    cfg = load_config(lab(tmp_path, {"executor": "local", "settings": "lab.json"}))
    session = tmp_path / "rig" / "m1" / "tif" / "site1" / "s1"
    session.mkdir(parents=True)
    assert settings_file(cfg, session) == tmp_path / "lab.json"  # config.toml's
    (tmp_path / "rig" / "m1" / "rig2nwb.toml").write_text(
        '[suite2p]\nsettings = "settings/m1.npy"\n')
    assert settings_file(cfg, session) == tmp_path / "rig" / "m1" / "settings" / "m1.npy"
    (session / "rig2nwb.toml").write_text('[suite2p]\nsettings = "../../../../../lab.json"\n')
    with pytest.raises(MetadataProblem) as info:
        settings_file(cfg, session)
    assert "outside the rig folder" in str(info.value)
    (session / "rig2nwb.toml").write_text('[suite2p]\nfolder = "x"\n')
    with pytest.raises(MetadataProblem) as info:
        settings_file(cfg, session)
    assert "suite2p.folder: unknown key" in str(info.value)
