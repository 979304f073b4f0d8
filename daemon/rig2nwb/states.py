"""The names rig2nwb gives to where things stand: states and problem codes.

Each is a ``StrEnum``: a member is its own string, so the ledger stores and `rig2nwb status
--json` shows exactly these words, and code compares against the enum, never against a literal
typed twice.
"""

from __future__ import annotations

from enum import StrEnum


class SessionState(StrEnum):
    WAITING = "waiting"  # files seen, no NWB file yet
    ACQUIRING = "acquiring"  # frames are being appended
    PAUSED = "paused"  # the output disk is full; resumes by itself
    FINISHED = "finished"  # finalized (timestamps, trials); checked next
    QUARANTINED = "quarantined"  # shown by status for a quarantined session (see engine.quarantine)


class FileState(StrEnum):
    WAITING = "waiting"
    APPENDING = "appending"  # partly appended (a commit point inside the file)
    COMMITTED = "committed"
    FAILED = "failed"
    VANISHED = "vanished"
    OUT_OF_ORDER = "out_of_order"


RESOLVED_FILE_STATES = frozenset({FileState.COMMITTED, FileState.FAILED, FileState.VANISHED,
                                  FileState.OUT_OF_ORDER})


class Suite2pState(StrEnum):
    INCOMPLETE = "incomplete"  # the folder exists, files are missing
    SETTLING = "settling"  # complete, waiting for the files to stop changing
    READY = "ready"  # queued for the worker
    ATTACHING = "attaching"  # written into a copy of the file
    STAGED = "staged"  # the copy is complete; the rename is pending
    ATTACHED = "attached"
    PROBLEM = "problem"  # loads badly or does not fit; retried when the files change
    STALE = "stale"  # written by versions before 0.2 (a late TIFF dropped the results)


class AttachState(StrEnum):
    """How one attach of suite2p results ended (an AttachOutcome; not stored)."""

    ATTACHED = "attached"  # written and swapped in
    UNCHANGED = "unchanged"  # the same results are attached already
    PROBLEM = "problem"  # the folder does not load or fit (reported)
    SETTLING = "settling"  # files still changing
    BUSY = "busy"  # the NWB file is held by another program, or cannot be written now
    WAITING = "waiting"  # nothing to attach yet (session not finished, no folder, incomplete)


class JobState(StrEnum):
    """Where a suite2p job stands (the ledger's ``jobs`` table; `rig2nwb status` shows it)."""

    QUEUED = "queued"  # submitted (or being submitted); waiting for a CPU
    RUNNING = "running"
    DONE = "done"  # exited 0: the attach stage takes its results over
    FAILED = "failed"  # exited non-zero, timed out, or would not start
    CANCELLED = "cancelled"  # cancelled by someone (scancel), or by rig2nwb process --cancel
    LOST = "lost"  # gone without a trace of how it ended (a node lost, a process killed)


ACTIVE_JOB_STATES = frozenset({JobState.QUEUED, JobState.RUNNING})


class CheckState(StrEnum):
    """What `rig2nwb status` says of a finished file's check."""

    PENDING = "pending"
    OK = "ok"
    FAILED = "FAILED"
    NOT_CHECKED = "not checked"


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"  # recorded and shown; nothing is held back


class Problem(StrEnum):
    """Problem codes: stable, shown in status and the log (``code``)."""

    # a TIFF
    EMPTY = "empty"
    NO_PAGES = "no_pages"
    BAD_PAGE = "bad_page"
    MIXED_PAGES = "mixed_pages"
    TRUNCATED = "truncated"
    CORRUPT_IFD = "corrupt_ifd"
    NOT_TIFF = "not_tiff"
    UNREADABLE = "unreadable"
    IO_ERROR = "io_error"
    VANISHED = "vanished"
    TOO_LARGE = "too_large"
    BAD_HEADER = "bad_header"
    WRONG_SITE = "wrong_site"
    SHAPE_MISMATCH = "shape_mismatch"
    LAYOUT_MISMATCH = "layout_mismatch"
    CHANGED_AFTER_COMMIT = "changed_after_commit"
    OUT_OF_ORDER = "out_of_order"
    # anything read from the rig folder
    NOT_REGULAR = "not_regular"
    SYMLINK = "symlink"
    OUTSIDE_ROOT = "outside_root"
    REPLACED = "replaced"
    CHANGED = "changed"
    UNSAFE_NAME = "unsafe_name"
    RIG_UNREACHABLE = "rig_unreachable"
    # lab files and metadata
    LAB_FILE = "lab_file"  # a LabFileProblem before it is told apart (scan_file, trial_file)
    SCAN_FILE = "scan_file"
    SCAN_MISMATCH = "scan_mismatch"
    TRIAL_FILE = "trial_file"
    LAB_FILES_MISSING = "lab_files_missing"
    WAITING_FOR_LAB_FILES = "waiting_for_lab_files"
    METADATA = "metadata"
    INCOMPLETE_CYCLE = "incomplete_cycle"
    HEADER_MISMATCH = "header_mismatch"  # + ":<hash>" of the header's words
    # output
    NWB_LOCKED = "nwb_locked"
    OUTPUT_ERROR = "output_error"
    OUTPUT_EXISTS = "output_exists"
    OUTPUT_TAKEN = "output_taken"
    NWB_REBUILT = "nwb_rebuilt"
    NWB_DAMAGED = "nwb_damaged"  # the next worker sets the file aside and rebuilds it
    DISK_FULL = "disk_full"
    DISK_LOW = "disk_low"
    VALIDATION = "validation"
    # suite2p
    SUITE2P = "suite2p"
    NPY = "npy"  # a .npy file that cannot be read
    SUITE2P_WARNING = "suite2p_warning"
    SUITE2P_PARTIAL = "suite2p_partial"
    SUITE2P_JOB = "suite2p_job"  # the job that runs suite2p failed, timed out or was lost
    SCHEDULER = "scheduler"  # the cluster's scheduler cannot be reached (submits wait)
    # the service
    QUARANTINED = "quarantined"
    INTERNAL_ERROR = "internal_error"


# Codes of failures a later look may clear (a permission fixed, a share back).
TRANSIENT_PROBLEMS = frozenset({Problem.UNREADABLE, Problem.IO_ERROR, Problem.VANISHED})
