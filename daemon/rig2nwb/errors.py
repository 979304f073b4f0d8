"""rig2nwb's exceptions, in one tree (one module, as httpx keeps its ``_exceptions.py``).

```
Rig2NwbError                      anything rig2nwb raises on purpose
├── ConfigError                   the configuration is unusable; ``problems`` lists every one
├── SecretProblem (ValueError)    a ${NAME} in a notification URL cannot be filled in
│   └── SecretMissing             ... because NAME is not set
├── PatternError (ValueError)     a layout pattern that cannot be used
├── UsageError (ValueError)       a command was given something it cannot use (no such
│                                 folder, a session name that is unknown or not unique)
├── InputProblem                  what the rig gave cannot be used; ``code``, ``message``,
│   │                             ``file``, ``transient`` (looking again later may help)
│   ├── UnsafeRigPath             a link, a FIFO, a path outside rig.root, a file replaced
│   ├── TiffProblem               a TIFF (truncated, not a TIFF, frames too large, ...)
│   ├── LabFileProblem            the lab's scan or trial file (with its line)
│   ├── MetadataProblem           a rig2nwb.toml sidecar
│   ├── Suite2pProblem            a suite2p folder or one of its files
│   ├── AttachError               suite2p results that do not fit the session's NWB file
│   └── NpyError                  a .npy file that cannot be read
│       └── UnsafePickle          ... because its pickle asks for more than plain data
├── OutputError                   the NWB output cannot be written as asked
│   ├── NwbDamaged                not an NWB file any more: rebuilt from the TIFFs
│   ├── NwbExists                 a file not of this session is where its NWB file goes
│   ├── NwbBusy                   another program holds the file (HDF5 file lock)
│   └── RepackError               a repack that found the copy different (original kept)
├── JobError                      a suite2p job cannot be submitted
│   └── SchedulerUnavailable      ... because the cluster's scheduler cannot be reached now
├── LedgerDamaged                 the ledger fails integrity_check (reported, never trusted)
└── AlreadyRunning                another rig2nwb holds the state folder

ControlFlow                       signals between parts of the engine, not errors
├── Stopped                       the engine was asked to stop mid-append (progress committed)
├── NwbRebuilt                    the NWB file was set aside; the session plans again
└── WriterPoisoned                HDF5 failed a write: this process must end untouched
```

Control-flow signals are not ``OSError``s (handling never depends on the order of ``except``
clauses), and not Rig2NwbErrors (nothing reports them as a problem).
"""

from __future__ import annotations

from pathlib import Path

from rig2nwb.states import Problem


class Rig2NwbError(Exception):
    """Root of rig2nwb's exceptions."""


class ConfigError(Rig2NwbError):
    """The configuration is unusable; ``problems`` lists every ``location: message``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the configuration:\n{lines}")


class SecretProblem(Rig2NwbError, ValueError):
    """A ``${...}`` in a notification URL that cannot be filled in (the message says why)."""


class SecretMissing(SecretProblem):
    """A well-formed ``${NAME}`` whose variable is not set (in this environment)."""


class PatternError(Rig2NwbError, ValueError):
    """A layout pattern that cannot be used; the message says why."""


class UsageError(Rig2NwbError, ValueError):
    """A command was given something it cannot use; the message says what and what to give."""


# --- input from the rig ------------------------------------------------------------------------


class InputProblem(Rig2NwbError):
    """Something from the rig folder that cannot be used. ``code`` is stable (status, problem
    codes), ``message`` names the file and what is wrong, ``file`` is the file when known,
    ``transient``: looking again later may help (a permission fixed, a file still arriving)."""

    def __init__(self, message: str, *, code: str, file: str | Path = "",
                 transient: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.file = file
        self.transient = transient


class UnsafeRigPath(InputProblem):
    """A rig path rig2nwb refuses to read (a link, a FIFO, outside rig.root, replaced)."""

    def __init__(self, code: str, message: str, *, transient: bool = False) -> None:
        super().__init__(message, code=code, transient=transient)


class TiffProblem(InputProblem):
    """A TIFF that cannot be appended."""

    def __init__(self, code: str, message: str, *, transient: bool = False) -> None:
        super().__init__(message, code=code, transient=transient)


class LabFileProblem(InputProblem):
    """A scan or trial file that cannot be used; ``str()`` names file, line and problem (and
    ``message`` is the problem alone)."""

    def __init__(self, path: Path, message: str, line: int | None = None) -> None:
        where = f"{path.name}, line {line}" if line is not None else path.name
        super().__init__(f"{where}: {message}", code=Problem.LAB_FILE, file=path)
        self.path = path
        self.line = line
        self.message = message


class MetadataProblem(InputProblem):
    """A sidecar that cannot be used. ``message`` names the file and every problem in it."""

    file: str  # rig-relative, as a string

    def __init__(self, file: str, problems: list[str]) -> None:
        super().__init__(f"{file}: " + "; ".join(problems), code=Problem.METADATA, file=file)
        self.problems = tuple(problems)


class Suite2pProblem(InputProblem):
    """Something in a suite2p folder that stops its plane from being used; names the file."""

    def __init__(self, file: Path | str, message: str) -> None:
        super().__init__(f"{file}: {message}", code=Problem.SUITE2P, file=file)
        self.message = message


class AttachError(InputProblem):
    """The suite2p results do not fit this session's NWB file; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=Problem.SUITE2P)


class NpyError(InputProblem):
    """A .npy file that cannot be read: damaged, truncated, still being written, not a .npy."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}", code=Problem.NPY, file=path)
        self.path = path
        self.problem = problem


class UnsafePickle(NpyError):
    """The file's pickle asks for something that is not plain data; nothing of it was run."""

    WHAT_LOADS = ("only numpy arrays, numbers, strings, containers and paths are loaded; "
                  "nothing in the file was run")

    def __init__(self, path: Path | str, refused: str, what: str | None = None) -> None:
        what = what or f"asks for {refused}"
        super().__init__(path, f"refused to load: the pickle {what}, which is not plain data "
                               f"({self.WHAT_LOADS})")
        self.refused = refused


# --- output ----------------------------------------------------------------------------------


class OutputError(Rig2NwbError):
    """The NWB output cannot be written as asked."""


class NwbDamaged(OutputError):
    """The NWB file cannot be opened or lacks the series; it must be rebuilt from the TIFFs."""


class NwbExists(OutputError):
    """A file is already where a new NWB file would go, and it is not this session's."""


class NwbBusy(OutputError):
    """Another program holds the NWB file (HDF5 file lock); retry later."""


class RepackError(OutputError):
    """The file cannot be repacked (the message says why); the original is untouched."""


# --- the state folder ----------------------------------------------------------------------------


class JobError(Rig2NwbError):
    """A suite2p job cannot be submitted (the scheduler's own words in the message)."""


class SchedulerUnavailable(JobError):
    """The cluster's scheduler cannot be reached now: submits wait and are tried again."""


class LedgerDamaged(Rig2NwbError):
    """The ledger cannot be used: not an SQLite file, fails ``integrity_check``, or lacks what
    was committed. The message says what and how to recover."""


class AlreadyRunning(Rig2NwbError):
    """Another rig2nwb process holds this state folder."""


# --- control flow ----------------------------------------------------------------------------


class ControlFlow(Exception):
    """Signals between parts of the engine; never reported as problems."""


class Stopped(ControlFlow):
    """The engine was asked to stop in the middle of an append (its progress is committed)."""


class NwbRebuilt(ControlFlow):
    """The NWB file was set aside and will be rebuilt; the session re-plans from scratch."""


class WriterPoisoned(ControlFlow):
    """HDF5 failed a write; the process must end without touching that file again."""
