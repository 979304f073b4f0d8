"""What the engine's parts share: configuration, ledger, the rig index, the reporter and the
caches of what was read from the rig. One object, made by the Engine facade, handed to each
part, so no part needs another part's private attributes."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from rig2nwb.config.schema import Config
from rig2nwb.engine.diskguard import DiskGuard
from rig2nwb.engine.reporter import Reporter
from rig2nwb.errors import TiffProblem
from rig2nwb.ledger.rows import SessionRow
from rig2nwb.ledger.store import Ledger
from rig2nwb.logs import Logger
from rig2nwb.rig.acquisition import FileAcquisition
from rig2nwb.rig.index import LabFiles, RigIndex
from rig2nwb.rig.tiffs import TiffInfo

Inspected = tuple[int, int, TiffInfo | TiffProblem]  # (size, mtime_ns, what inspection found)


@dataclass
class Context:
    cfg: Config
    ledger: Ledger
    index: RigIndex
    report: Reporter
    disk: DiskGuard
    log: Logger
    stop_event: threading.Event
    convert: bool = False  # one-shot backfill of one folder (`rig2nwb convert`)
    inspected: dict[str, Inspected] = field(default_factory=dict)
    acquired: dict[str, tuple[int, int, FileAcquisition]] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.cfg.rig.root

    @property
    def budget(self) -> int:
        """append.memory_mb in bytes: what one file's append may hold in memory."""
        return self.cfg.append.memory_mb * 2**20

    def session_log(self, sess: SessionRow) -> Logger:
        return self.log.bind(subject=sess.subject, session=sess.session)

    def lab_of(self, sess: SessionRow) -> LabFiles:
        return self.index.lab_of((sess.subject, sess.session))

    def missing_lab_files(self, sess: SessionRow) -> list[str]:
        """The configured lab files (scan, trial) this session does not have: their patterns."""
        lab = self.lab_of(sess)
        return [pat for kind, pat in (("scan", self.cfg.rig.scan_file),
                                      ("trial", self.cfg.rig.trial_file))
                if pat and not getattr(lab, kind)]

    def stopping(self) -> bool:
        return self.stop_event.is_set()
