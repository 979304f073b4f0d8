"""The one writer of rig2nwb config files (TOML) for the tests and the benchmarks.

A config is a dict of sections, each a dict of keys: ``write_config`` writes a whole file,
``append_config`` adds tables to one (``[[notify.targets]]`` entries, a section the file does not
have yet). Values are TOML booleans, numbers, strings and lists of them (``toml_value``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Section = Mapping[str, Any]


def toml_value(v: Any) -> str:
    """``v`` as a TOML value: a boolean, a number, a list, else a basic string."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _table(header: str, values: Section) -> list[str]:
    return [header, *(f"{k} = {toml_value(v)}" for k, v in values.items())]


def write_config(path: Path, sections: Mapping[str, Section], *, comment: str | None = None) -> Path:
    """Write ``sections`` as a config file at ``path`` (replacing it), after an optional
    ``# comment`` line; every key not written keeps rig2nwb's default."""
    lines = [f"# {comment}", ""] if comment else []
    for name, values in sections.items():
        lines += _table(f"[{name}]", values)
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def append_config(path: Path, tables: Mapping[str, Section | Sequence[Section]]) -> Path:
    """Add tables at the end of the config at ``path``: a dict is one ``[name]`` table (a section
    the file does not have yet), a list of dicts an array of tables, ``[[name]]`` each."""
    lines: list[str] = []
    for name, value in tables.items():
        for values, header in ([(value, f"[{name}]")] if isinstance(value, Mapping)
                               else [(v, f"[[{name}]]") for v in value]):
            lines += ["", *_table(header, values)]
    with path.open("a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path
