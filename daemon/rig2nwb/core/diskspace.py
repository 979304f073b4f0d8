"""The disk-space rule, pure: may a write of ``needed`` bytes go ahead?"""

from __future__ import annotations


def has_room(free: int | None, reserve: int, needed: int) -> bool:
    """Room for ``needed`` more bytes while keeping ``reserve`` free (output.min_free_mb).
    Unknown free space (None) lets the write go ahead: the write itself then tells."""
    return free is None or free >= reserve + needed
