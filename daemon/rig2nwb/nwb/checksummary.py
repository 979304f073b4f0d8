"""What the ledger keeps of a finished file's check: counts by importance, the first messages,
whether it opens without filter plugins, and its summary picture. Light on purpose: `rig2nwb
status` reads these without importing h5py or pynwb (the check itself is nwb.check)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

IMPORTANCES = ("CRITICAL", "BEST_PRACTICE_VIOLATION", "BEST_PRACTICE_SUGGESTION", "ERROR")


MAX_MESSAGES = 50


MAX_MESSAGE_CHARS = 400


NOT_CHECKED = "not checked (output.check_files = false)"


# Most important first: the first two decide ``ok``.
_ORDER = {"VALIDATION": 0, "CRITICAL": 1, "ERROR": 2, "BEST_PRACTICE_VIOLATION": 3,
          "BEST_PRACTICE_SUGGESTION": 4}


def _zero_counts() -> dict[str, int]:
    return dict.fromkeys(IMPORTANCES, 0)


@dataclass(frozen=True)
class CheckSummary:
    """What the ledger stores about one finished file's checks (and its summary picture).

    ``checked`` is False when the child only drew the picture (``output.check_files = false``):
    then nothing was validated, ``short()`` says "not checked" and ``ok`` is True (no check
    failed; it is not a verdict on the file). ``picture`` is the PNG written, ``picture_error``
    why none was (a picture never fails the check)."""

    validation_errors: int = 0
    counts: dict[str, int] = field(default_factory=_zero_counts)
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0
    failed: str | None = None
    checked: bool = True
    picture: str | None = None
    picture_error: str | None = None
    # Datasets whose filters need a plugin in the reader ("/path: blosc"); [] = the file opens
    # in every reader; None = not looked at (a summary from before this was checked).
    plugin_datasets: list[str] | None = None

    @classmethod
    def failure(cls, reason: str, *, seconds: float = 0.0) -> CheckSummary:
        return cls(failed=reason, seconds=round(seconds, 3))

    @classmethod
    def not_checked(cls, *, seconds: float = 0.0, picture_error: str | None = None) -> CheckSummary:
        return cls(checked=False, seconds=round(seconds, 3), picture_error=picture_error)

    @property
    def ok(self) -> bool:
        """No check failed (also True when nothing was checked: see ``checked``)."""
        return self.failed is None and self.validation_errors == 0 and self.counts.get("CRITICAL", 0) == 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CheckSummary:
        """Parse ``to_json`` output; raises ValueError on anything else."""
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise TypeError("not a JSON object")
            counts_raw = raw["counts"]
            if not isinstance(counts_raw, dict):
                raise TypeError("counts is not an object")
            counts = _zero_counts()
            counts.update({str(k): int(v) for k, v in counts_raw.items()})
            messages = raw.get("messages", [])
            if not isinstance(messages, list):
                raise TypeError("messages is not a list")
            failed = raw.get("failed")
            picture, picture_error = raw.get("picture"), raw.get("picture_error")
            plugins = raw.get("plugin_datasets")
            if plugins is not None and not isinstance(plugins, list):
                raise TypeError("plugin_datasets is not a list")
            return cls(
                validation_errors=int(raw["validation_errors"]),
                counts=counts,
                messages=[str(m) for m in messages],
                seconds=float(raw.get("seconds", 0.0)),
                failed=None if failed is None else str(failed),
                checked=bool(raw.get("checked", True)),  # summaries stored before pictures existed
                picture=None if picture is None else str(picture),
                picture_error=None if picture_error is None else str(picture_error),
                plugin_datasets=None if plugins is None else [str(p) for p in plugins],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a check summary: {e}") from e

    def short(self) -> str:
        """One human line, e.g. ``valid; nwbinspector: 0 critical, 2 violations, 5 suggestions``."""
        if not self.checked:
            return NOT_CHECKED
        if self.failed is not None:
            n = self.validation_errors
            extra = f" ({_plural(n, 'validation error')})" if n else ""
            return f"check failed: {self.failed}{extra}"
        head = "valid" if self.validation_errors == 0 else _plural(self.validation_errors, "validation error")
        c = self.counts
        line = (f"{head}; nwbinspector: {c.get('CRITICAL', 0)} critical, "
                f"{_plural(c.get('BEST_PRACTICE_VIOLATION', 0), 'violation')}, "
                f"{_plural(c.get('BEST_PRACTICE_SUGGESTION', 0), 'suggestion')}")
        if c.get("ERROR", 0):
            line += f", {_plural(c['ERROR'], 'check error')}"
        if self.plugin_datasets:
            line += f"; needs filter plugins ({_plural(len(self.plugin_datasets), 'dataset')})"
        return line


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
