"""Numbers and texts for people: one way of writing each, used by every output."""

from __future__ import annotations


def clip(text: str, n: int) -> str:
    """``text`` on one line (runs of white space, newlines included, become one space), cut to
    ``n`` characters, ending in "..." when cut. Every message people read goes through here: a
    status table row, a page cell or a check message never spans lines or pages."""
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def duration(seconds: float) -> str:
    """``0.4 s``, ``42 s``, ``12 min 3 s``, ``3 h 5 min``: a human interval."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def human_size(n: int) -> str:
    """``512 B``, ``1.2 MB``, ``3.4 GB`` (powers of 1000, as disks are sold)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover
