"""What a failed HDF5 write or read means, told from the exception alone."""

from __future__ import annotations

import errno


def is_disk_full(exc: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain (h5py wraps it in RuntimeError inside H5Fflush)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "no space left" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def is_damaged_read(exc: BaseException) -> bool:
    """HDF5 failed to decompress a stored chunk (torn or zeroed by a power cut): a write that
    needed to read it (a partly filled chunk) fails the same way in every new worker."""
    return "filter returned failure during read" in str(exc)


def first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
