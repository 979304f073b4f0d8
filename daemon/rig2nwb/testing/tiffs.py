"""TIFFs written and read back by tifffile, page by page: the tests' input and their expectation.

(``simrig.write_tiff`` writes pages over time, as a rig does; ``write_tiff`` here writes a whole
file at once.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile


def write_tiff(path: Path, frames: np.ndarray) -> None:
    """One page per frame, each its own series (as a rig writing page by page does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path) as tw:
        for f in frames:
            tw.write(f, contiguous=False, photometric="minisblack")


def append_pages(path: Path, frames: np.ndarray) -> None:
    """Add pages to an existing TIFF, as a writer that reopens its file does."""
    with tifffile.TiffWriter(path, append=True) as tw:
        for f in frames:
            tw.write(f, contiguous=False, photometric="minisblack")


def random_frames(n: int, shape: tuple[int, int] = (32, 48), seed: int = 0,
                  dtype: str = "int16") -> np.ndarray:
    """``n`` frames of uniform random integers over the whole range of ``dtype``, from ``seed``."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=(n, *shape), dtype=dtype, endpoint=True)


def tiff_pages(path: Path) -> np.ndarray:
    """Every page of the TIFF, read one by one by tifffile: the independent expectation.

    (``tifffile.imread`` would return only the first series, and each ``write()`` call of a
    rig that writes page by page starts a new series.)"""
    with tifffile.TiffFile(path) as tf:
        return np.stack([page.asarray() for page in tf.pages])
