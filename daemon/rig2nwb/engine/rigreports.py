"""What the rig index notices, told to people: an unreachable rig folder, names that are links
or FIFOs (on their session when it exists, else rig-wide), until they are regular or gone."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from rig2nwb.config.schema import Config
from rig2nwb.engine.reporter import Reporter
from rig2nwb.states import Problem


class _Cache(Protocol):
    def pop(self, key: str, default: None, /) -> object: ...


class RigReports:
    """The engine's :class:`rig2nwb.rig.index.RigEvents`."""

    def __init__(self, cfg: Config, report: Reporter, inspected: _Cache) -> None:
        self.cfg = cfg
        self.report = report
        self.ledger = report.ledger
        self.inspected = inspected
        # Rig names reported as links or FIFOs -> their session (None: rig-wide), until regular.
        self.not_regular_names: dict[str, int | None] = {
            p.file: p.session_id for p in self.ledger.problems()
            if p.code == Problem.NOT_REGULAR}

    def unreachable(self, root: Path) -> None:
        message = f"rig folder not reachable: {root}"
        self.report.log.warning("rig folder not reachable; waiting for it to return",
                                stage="watch", path=str(root))
        if self.ledger.report_problem(None, Problem.RIG_UNREACHABLE, message):
            self.ledger.add_event(None, "problem", message)

    def reachable(self, root: Path) -> None:
        self.report.log.info("rig folder reachable again", stage="watch", path=str(root))
        self.ledger.clear_problem(None, Problem.RIG_UNREACHABLE)

    def not_regular(self, rel: str, message: str, values: dict[str, str] | None) -> None:
        sess = None if values is None else self.ledger.session(
            values.get("subject") or self.cfg.rig.subject, values.get("session", ""))
        if sess is not None:
            self.report.problem(sess, Problem.NOT_REGULAR, message, rel)
        else:
            self.report.rig_problem(Problem.NOT_REGULAR, rel, message)
        self.not_regular_names[rel] = sess.id if sess is not None else None

    def regular(self, rel: str) -> None:
        if rel in self.not_regular_names:
            self.ledger.clear_problem(self.not_regular_names.pop(rel), Problem.NOT_REGULAR, rel)

    def gone_except(self, present: set[str]) -> None:
        """After a complete walk: names reported before and no longer there are over."""
        for rel in [r for r in self.not_regular_names if r not in present]:
            self.regular(rel)

    def forgotten(self, rel: str) -> None:
        self.inspected.pop(rel, None)


