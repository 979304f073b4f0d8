"""Run order: where a TIFF stands in its acquisition run (``name_00001.tif``, ``_00002`` ...)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

_RUN_INDEX = re.compile(r"^(?P<stem>.*?)(?P<index>\d+)(?P<ext>\.[A-Za-z0-9]+)$")


@dataclass(frozen=True)
class RunPosition:
    """Where a TIFF stands in its acquisition run.

    ``run`` is the file name with its last number removed (``name_00001_`` for ScanImage's
    ``name_00001_00002.tif``), ``index`` that number. Files without a number form a run of their
    own with index -1. ``sort_key`` gives run order (numbers inside names compare as numbers).
    """

    folder: str
    run: str
    index: int
    name: str

    @property
    def sort_key(self) -> tuple[tuple[object, ...], tuple[object, ...], int]:
        return (_natural(self.folder), _natural(self.run), self.index)


def _natural(text: str) -> tuple[object, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def run_position(rel_path: str) -> RunPosition:
    p = PurePosixPath(rel_path)
    m = _RUN_INDEX.match(p.name)
    if m is None:
        return RunPosition(str(p.parent), p.name.lower(), -1, p.name)
    return RunPosition(
        str(p.parent), (m.group("stem") + m.group("ext")).lower(), int(m.group("index")), p.name
    )
