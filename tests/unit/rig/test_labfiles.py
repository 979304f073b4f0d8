"""The lab's scan and trial files: the seed format, and every malformed case with file + line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rig2nwb.config.schema import ScanConfig, TrialsConfig
from rig2nwb.errors import LabFileProblem
from rig2nwb.rig.labfiles import read_scan_file, read_trial_file
from rig2nwb.testing.figures import record
from rig2nwb.testing.simrig import write_scan_file, write_trial_file

SCAN = ScanConfig()
TRIALS = TrialsConfig()  # the seed lab: stim_on ms, stim_dur ms, -, sf, -, dir


def _write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def test_seed_scan_file(tmp_path: Path) -> None:
    onsets_ms = write_scan_file(tmp_path / "s1_scan.txt", 300, 30.0, seed=3)
    got = read_scan_file(tmp_path / "s1_scan.txt", SCAN)
    np.testing.assert_allclose(got.seconds, onsets_ms / 1000.0, rtol=0, atol=1e-9)
    assert got.ignored_lines == 0


def test_scan_file_with_windows_line_ends_bom_and_a_footer(tmp_path: Path) -> None:
    p = _write(tmp_path, "s_scan.txt", b"\xef\xbb\xbf0 33.3 66.7\r\nend of scan\r\n")
    got = read_scan_file(p, SCAN)
    np.testing.assert_allclose(got.seconds, [0.0, 0.0333, 0.0667])
    assert got.ignored_lines == 1


@pytest.mark.parametrize(("content", "fragment"), [
    ("", "the file is empty"),
    ("\n  \n", "the file is empty"),
    ("0 33.3 abc 100", "line 1: onset 3: 'abc' is not a number"),
    ("0 33.3 nan 100", "onset 3: 'nan' is not a finite number"),
    ("-5 33.3 66.6", "onset 1 is negative (-5)"),
    ("0 33.3 33.3 66.6", "onsets must increase: onset 3 (33.3) is not after onset 2 (33.3)"),
    ("0 50 40 60", "onset 3 (40) is not after onset 2 (50)"),
])
def test_malformed_scan_files(tmp_path: Path, content: str, fragment: str) -> None:
    p = _write(tmp_path, "m1_scan.txt", content)
    with pytest.raises(LabFileProblem) as info:
        read_scan_file(p, SCAN)
    record("bad_input", case=f"scan_file: {content!r}", detail=str(info.value),
           handled=str(info.value).startswith("m1_scan.txt") and fragment in str(info.value))
    assert str(info.value).startswith("m1_scan.txt")
    assert fragment in str(info.value)


def test_seed_trial_file(tmp_path: Path) -> None:
    rows = write_trial_file(tmp_path / "s1_trial.txt", duration_ms=30_000, seed=2)
    table = read_trial_file(tmp_path / "s1_trial.txt", TRIALS, recording=(0.0, 30.0))
    assert len(table) == len(rows) > 3
    np.testing.assert_allclose(table.stim_on, rows[:, 0] / 1000)
    np.testing.assert_allclose(table.stim_off, (rows[:, 0] + rows[:, 1]) / 1000)
    np.testing.assert_allclose(table.start_time, rows[:, 0] / 1000 - 0.5)  # 500 ms padding
    np.testing.assert_allclose(table.stop_time, (rows[:, 0] + rows[:, 1]) / 1000 + 0.5)
    assert sorted(table.columns) == ["dir", "sf"]  # the two unnamed columns are not stored
    np.testing.assert_array_equal(table.columns["sf"], rows[:, 3])
    np.testing.assert_array_equal(table.columns["dir"], rows[:, 5])


def test_trial_file_tolerates_crlf_bom_comments_and_blank_lines(tmp_path: Path) -> None:
    p = _write(tmp_path, "t.txt", b"\xef\xbb\xbf# stim_on dur x sf x dir\r\n\r\n"
               b"1000 500 0 0.04 0 90\r\n4000 500 0 0.08 0 180\r\n")
    cfg = TrialsConfig(pad_before_ms=250, pad_after_ms=100)
    table = read_trial_file(p, cfg)
    np.testing.assert_allclose(table.start_time, [0.75, 3.75])
    np.testing.assert_allclose(table.stop_time, [1.6, 4.6])


@pytest.mark.parametrize(("content", "recording", "fragment"), [
    ("", None, "the file is empty (no trials)"),
    ("# only a comment\n", None, "the file is empty"),
    ("1000 500 0 0.04 0\n", None, "line 1: 5 columns, expected 6 (stim_on stim_dur - sf - dir)"),
    ("1000 500 0 0.04 0 90\n2000 500 0 0.04 0 90 7\n", None, "line 2: 7 columns, expected 6"),
    ("1000 500 0 fast 0 90\n", None, "line 1: column 4 (sf): 'fast' is not a number"),
    ("1000 500 0 0.04 0 90\n900 500 0 0.04 0 90\n", None,
     "line 2: trials must be in time order: stim_on 900 is not after 1000 on line 1"),
    ("1000 0 0 0.04 0 90\n", None, "line 1: stim_dur must be positive, not 0"),
    ("1000 500 0 0.04 0 90\n9000 2000 0 0.04 0 90\n", (0.0, 10.0),
     "line 2: trial from 9.000 s to 11.000 s lies outside the recording (0.000 s to 10.000 s)"),
])
def test_malformed_trial_files(tmp_path: Path, content: str,
                               recording: tuple[float, float] | None, fragment: str) -> None:
    p = _write(tmp_path, "m1_trial.txt", content)
    with pytest.raises(LabFileProblem) as info:
        read_trial_file(p, TRIALS, recording=recording)
    record("bad_input", case=f"trial_file: {content!r}", detail=str(info.value),
           handled=str(info.value).startswith("m1_trial.txt") and fragment in str(info.value))
    assert str(info.value).startswith("m1_trial.txt")
    assert fragment in str(info.value)


def test_unreadable_file_is_a_lab_file_problem(tmp_path: Path) -> None:
    with pytest.raises(LabFileProblem, match=r"absent_scan\.txt: cannot be read"):
        read_scan_file(tmp_path / "absent_scan.txt", SCAN)


def test_trial_columns_are_validated_in_the_config(tmp_path: Path) -> None:
    from rig2nwb.config.loading import validate_config
    from rig2nwb.errors import ConfigError

    raw = {"rig": {"root": str(tmp_path)}, "output": {"folder": str(tmp_path)},
           "state": {"folder": str(tmp_path / "st")},
           "trials": {"columns": ["onset", "stim_dur", "sf", "sf", "stop_time"]}}
    with pytest.raises(ConfigError) as info:
        validate_config(raw, base=tmp_path)
    text = "\n".join(info.value.problems)
    assert "trials.columns: needs a 'stim_on' column" in text
    assert "trials.columns: repeated column name(s) sf" in text
    assert "trials.columns: stop_time is computed by rig2nwb" in text
