"""rig2nwb's own exceptions (the tree grows in one place)."""

from __future__ import annotations


class Rig2NwbError(Exception):
    """Root of rig2nwb's exceptions."""


class LedgerDamaged(Rig2NwbError):
    """The ledger cannot be used: not an SQLite file, fails ``integrity_check``, or a newer
    schema than this version knows. The message says what and how to recover."""
