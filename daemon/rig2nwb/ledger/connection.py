"""The ledger's one SQLite connection: opening (WAL, synchronous=FULL, schema upgrades),
integrity checks, transactions under one lock, and memos of the queries asked every tick."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from rig2nwb.errors import LedgerDamaged
from rig2nwb.ledger.schema import ADDED_COLUMNS, SCHEMA, damaged_message, integrity_problems_of, lost_tables

T = TypeVar("T")


class LedgerConnection:
    """Thread-safe access to the ledger database (one connection, one lock)."""

    def __init__(self, path: Path, *, readonly: bool = False, verify: bool = False) -> None:
        """Open (or create) the ledger. ``verify``: run ``integrity_check`` first and refuse a
        damaged ledger (LedgerDamaged) before anything is written to it."""
        self.path = path
        try:
            self._db = self._open(path, readonly, verify)
        except sqlite3.DatabaseError as exc:
            raise LedgerDamaged(damaged_message(path, exc)) from exc
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        # Queries the service loop asks every tick (0.5 s), answered again only after a commit:
        # with 100 finished sessions they cost ~2% of a core while nothing happened.
        self._memos: dict[str, tuple[tuple[int, int], Any]] = {}

    @staticmethod
    def _open(path: Path, readonly: bool, verify: bool) -> sqlite3.Connection:
        if readonly:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                                 timeout=30)
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # "not a database"
            return db
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False, timeout=30)
        try:
            if verify:  # before anything is written to it
                problems = integrity_problems_of(db)
                if problems:
                    raise LedgerDamaged(damaged_message(path, "; ".join(problems[:3])))
            lost = lost_tables(db)
            if lost:
                raise LedgerDamaged(damaged_message(path, lost))
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            # One transaction: a reader (`rig2nwb status` while the daemon starts) sees every
            # table or none, never half a schema (executescript alone commits each statement).
            db.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}\nCOMMIT;")
            for table, columns in ADDED_COLUMNS.items():
                have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
                for name, decl in columns:
                    if name not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
        except BaseException:
            db.close()
            raise
        return db

    def integrity_problems(self) -> list[str]:
        """SQLite's own ``integrity_check`` (pages, indexes, constraints): [] when sound."""
        with self._lock:
            return integrity_problems_of(self._db)

    def verify(self) -> None:
        """Raise LedgerDamaged unless the ledger passes ``integrity_check`` and holds every
        table rig2nwb uses: a damaged ledger is reported, never trusted (it says which frames
        are committed)."""
        problems = self.integrity_problems()
        if not problems:
            with self._lock:
                lost = lost_tables(self._db)
            problems = [lost] if lost else []
        if problems:
            raise LedgerDamaged(damaged_message(self.path, "; ".join(problems[:3])))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def change_token(self) -> tuple[int, int]:
        """Changes once anything was committed, by another connection (``PRAGMA data_version``)
        or by this one (``total_changes``): a cheap "is a fresh status needed?" test."""
        with self._lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0]), self._db.total_changes

    def _memo(self, name: str, build: Callable[[], T]) -> T:
        """``build()``, cached until anything is committed (rows are frozen dataclasses)."""
        with self._lock:
            token = self.change_token()
            hit = self._memos.get(name)
            if hit is not None and hit[0] == token:
                return cast(T, hit[1])
            value = build()
            self._memos[name] = (token, value)
            return value

    def _all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())
