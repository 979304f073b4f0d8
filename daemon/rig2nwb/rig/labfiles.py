"""The lab's own text files: frame onsets (``<session>_scan.txt``) and stimuli (``_trial.txt``).

Both are written by the lab's stimulus software, often on Windows (CRLF, sometimes a BOM).
Parsing is strict: a file that cannot be read exactly as configured is rejected with an error
that names the file, the line and the problem, so that frames are never silently misaligned with
wrong onsets or stimuli. Rig files are only read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rig2nwb.config.schema import ScanConfig, TrialsConfig
from rig2nwb.errors import LabFileProblem, UnsafeRigPath
from rig2nwb.rig.safeopen import read_rig_bytes

_TO_SECONDS = {"ms": 1e-3, "s": 1.0}
SKIPPED = ("", "-")


@dataclass(frozen=True)
class ScanOnsets:
    seconds: np.ndarray  # float64, strictly increasing
    ignored_lines: int  # further non-empty lines after the onset line (reported, not used)


@dataclass(frozen=True)
class TrialTable:
    """Trials in seconds on the scan clock; ``columns`` keeps the configured extra columns."""

    start_time: np.ndarray
    stop_time: np.ndarray
    stim_on: np.ndarray
    stim_off: np.ndarray
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.start_time)


MAX_LAB_FILE_BYTES = 64 * 1024 * 1024  # 4 h of 30 Hz onsets is ~5 MB of text


def _lines(path: Path, root: Path | None = None) -> list[str]:
    # Through rigfs: no links (a link to a file elsewhere is not the rig's data), no FIFOs, and
    # a bounded size.
    try:
        raw = read_rig_bytes(path.parent if root is None else root, path,
                             max_bytes=MAX_LAB_FILE_BYTES)
    except UnsafeRigPath as exc:
        raise LabFileProblem(path, exc.message) from None
    except OSError as exc:
        raise LabFileProblem(path, f"cannot be read ({exc.strerror or exc})") from exc
    try:
        text = raw.decode("utf-8-sig")  # a BOM from Windows editors is not data
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.splitlines()  # LF, CRLF and CR line ends alike


def _number(path: Path, line: int, token: str, what: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise LabFileProblem(path, f"{what}: {token!r} is not a number", line) from None
    if not math.isfinite(value):
        raise LabFileProblem(path, f"{what}: {token!r} is not a finite number", line)
    return value


def read_scan_file(path: Path, cfg: ScanConfig, *, root: Path | None = None) -> ScanOnsets:
    """Frame onsets from the first non-empty line, converted to seconds. With ``root``, a file
    that resolves outside it is refused."""
    lines = _lines(path, root)
    numbered = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip()]
    if not numbered:
        raise LabFileProblem(path, "the file is empty (no frame onsets)")
    lineno, first = numbered[0]
    tokens = first.split()
    values = np.array([_number(path, lineno, t, f"onset {k + 1}") for k, t in enumerate(tokens)])
    if (values < 0).any():
        k = int(np.argmax(values < 0))
        raise LabFileProblem(path, f"onset {k + 1} is negative ({tokens[k]})", lineno)
    steps = np.diff(values)
    if (steps <= 0).any():
        k = int(np.argmax(steps <= 0)) + 1
        raise LabFileProblem(
            path, f"onsets must increase: onset {k + 1} ({tokens[k]}) is not after onset {k} "
            f"({tokens[k - 1]})", lineno)
    return ScanOnsets(values * _TO_SECONDS[cfg.time_unit], ignored_lines=len(numbered) - 1)


def read_trial_file(path: Path, cfg: TrialsConfig,
                    recording: tuple[float, float] | None = None, *,
                    root: Path | None = None) -> TrialTable:
    """Trials with padded start/stop times; ``recording`` (seconds) bounds where trials may lie.
    With ``root``, a file that resolves outside it is refused."""
    names = cfg.columns
    shown = " ".join(n if n not in SKIPPED else "-" for n in names)
    rows: list[tuple[int, list[float]]] = []
    for i, text in enumerate(_lines(path, root)):
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        tokens = stripped.split()
        if len(tokens) != len(names):
            raise LabFileProblem(path, f"{len(tokens)} columns, expected {len(names)} ({shown})",
                                 i + 1)
        rows.append((i + 1, [_number(path, i + 1, t, f"column {k + 1} ({names[k] or '-'})")
                             for k, t in enumerate(tokens)]))
    if not rows:
        raise LabFileProblem(path, "the file is empty (no trials)")
    unit = _TO_SECONDS[cfg.time_unit]
    on_col, dur_col = names.index("stim_on"), names.index("stim_dur")
    prev_line, prev_on = 0, -math.inf
    for lineno, values in rows:
        on, dur = values[on_col], values[dur_col]
        if dur <= 0:
            raise LabFileProblem(path, f"stim_dur must be positive, not {dur:g}", lineno)
        if on <= prev_on:
            raise LabFileProblem(path, f"trials must be in time order: stim_on {on:g} is not "
                                 f"after {prev_on:g} on line {prev_line}", lineno)
        if recording is not None:
            start_s, end_s = on * unit, (on + dur) * unit
            if start_s < recording[0] or end_s > recording[1]:
                raise LabFileProblem(
                    path, f"trial from {start_s:.3f} s to {end_s:.3f} s lies outside the "
                    f"recording ({recording[0]:.3f} s to {recording[1]:.3f} s)", lineno)
        prev_line, prev_on = lineno, on
    table = np.array([v for _, v in rows], dtype=float)
    stim_on = table[:, on_col] * unit
    stim_off = (table[:, on_col] + table[:, dur_col]) * unit
    extra = {n: table[:, k] for k, n in enumerate(names)
             if n not in SKIPPED and n not in ("stim_on", "stim_dur")}
    return TrialTable(
        # NWB times are not negative: a pad before a trial at the very start stops at 0.
        start_time=np.maximum(stim_on - cfg.pad_before_ms / 1000.0, 0.0),
        stop_time=stim_off + cfg.pad_after_ms / 1000.0,
        stim_on=stim_on,
        stim_off=stim_off,
        columns=extra,
    )
