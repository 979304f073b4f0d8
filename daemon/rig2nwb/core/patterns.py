"""Folder-layout patterns: how a lab's save folder maps to subjects and sessions.

A pattern is a relative POSIX path with ``{placeholders}`` and shell wildcards, e.g. the seed
lab's ``{subject}/tif/{site}/{session}/*.tif``. A placeholder matches one path component (or a
part of one); the same placeholder used twice must match the same text. ``*`` and ``?`` never
cross a ``/``. Matching is case-insensitive for the file extension only, because Windows rigs
write ``.TIF`` as often as ``.tif``.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import PurePosixPath

from rig2nwb.errors import PatternError

PLACEHOLDER_NAMES = ("subject", "site", "session")


def placeholders(pattern: str) -> set[str]:
    """Return the placeholder names used in ``pattern``."""
    names = set()
    for _, field, spec, conv in string.Formatter().parse(pattern):
        if field is not None:
            if field == "" or spec or conv:
                raise PatternError(f"placeholder '{{{field}}}' must be a plain name like {{session}}")
            names.add(field)
    return names


def check_pattern(pattern: str, *, required: set[str], allowed: set[str] | None = None) -> list[str]:
    """Return every problem with ``pattern`` (empty when it is usable)."""
    problems: list[str] = []
    if not pattern:
        return ["pattern is empty"]
    if pattern.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", pattern):
        problems.append("pattern must be relative to rig.root, not an absolute path")
    if "\\" in pattern:
        problems.append("use '/' as the separator in patterns, also on Windows")
    if ".." in PurePosixPath(pattern).parts:
        problems.append("pattern must not contain '..'")
    try:
        names = placeholders(pattern)
    except PatternError as exc:
        return [*problems, str(exc)]
    allowed = allowed if allowed is not None else set(PLACEHOLDER_NAMES)
    unknown = sorted(names - allowed)
    if unknown:
        problems.append(
            "unknown placeholder(s) " + ", ".join("{" + n + "}" for n in unknown)
            + "; allowed: " + ", ".join("{" + n + "}" for n in sorted(allowed))
        )
    missing = sorted(required - names)
    if missing:
        problems.append("missing placeholder(s) " + ", ".join("{" + n + "}" for n in missing))
    return problems


@dataclass(frozen=True)
class Pattern:
    """A compiled layout pattern."""

    text: str
    regex: re.Pattern[str]
    names: frozenset[str]

    @classmethod
    def compile(cls, text: str) -> Pattern:
        out: list[str] = []
        seen: set[str] = set()
        for literal, field, _, _ in string.Formatter().parse(text):
            out.append(_glob_to_regex(literal))
            if field is None:
                continue
            if field in seen:
                out.append(f"(?P={field})")
            else:
                seen.add(field)
                out.append(f"(?P<{field}>[^/]+?)")
        body = "".join(out)
        # Let the extension match case-insensitively (".TIF" from Windows rigs).
        ext = re.search(r"\\\.([A-Za-z0-9]+)$", body)
        if ext:
            body = body[: ext.start()] + r"\." + f"(?i:{ext.group(1)})"
        return cls(text=text, regex=re.compile("^" + body + "$"), names=frozenset(seen))

    def match(self, rel_path: str) -> dict[str, str] | None:
        """Match a rig-relative POSIX path; return the placeholder values or None.

        Values are returned as found: callers check ``core.names.is_safe_name`` before using one
        in a path,
        so that an unsafe folder name is reported instead of silently ignored."""
        m = self.regex.match(rel_path)
        return m.groupdict() if m is not None else None

    def render(self, **values: str) -> str:
        """Fill the placeholders (wildcards are left as they are)."""
        return self.text.format(**{n: values[n] for n in self.names})


def _glob_to_regex(literal: str) -> str:
    out = []
    for ch in literal:
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(ch))
    return "".join(out)
