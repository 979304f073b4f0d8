"""The synthetic two-photon session most benchmarks convert: 512x512 int16 frames
(``FrameSource``), written as plain TIFFs in rig2nwb's default layout (``write_dataset``), read
back page by page, and checked against an HDF5/NWB output (``verify``).

numpy and tifffile at module level; h5py and hdf5plugin only inside ``verify``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import psutil  # type: ignore[import-untyped]  # no stubs installed
import tifffile

FRAME_SHAPE = (512, 512)
DTYPE = np.dtype(np.int16)
FRAME_BYTES = FRAME_SHAPE[0] * FRAME_SHAPE[1] * DTYPE.itemsize
FRAMES_PER_FILE = 1000  # ~524 MB per TIFF
BLOCK_FRAMES = 100  # also the read/append batch of both methods (rig2nwb's default batch_frames)
SUBJECT = "mouse01"
SITE = "site1"
SERIES_DATA = "acquisition/TwoPhotonSeries/data"

Frames = npt.NDArray[np.int16]


class FrameSource:
    """Synthetic two-photon frames: a smooth vignetted background, a few cells that flash now
    and then, and Poisson-like shot noise (which is what limits compression on real data).

    Noise is the costly part, so only ``n_blocks`` distinct blocks of BLOCK_FRAMES frames are
    generated; block ``b`` of a session is distinct block ``b % n_blocks`` plus a small offset
    ``b % 97``, so no two blocks of a session are bit-identical (a misplaced block would fail
    verification) and a 4 GB session never sits in RAM.
    """

    def __init__(self, seed: int, n_blocks: int = 4, n_cells: int = 30, gain: float = 2.0) -> None:
        rng = np.random.default_rng(seed)
        rows, cols = FRAME_SHAPE
        rr, cc = np.mgrid[0:rows, 0:cols].astype(np.float32)
        vignette = 1.0 - 0.3 * (((rr - rows / 2) / rows) ** 2 + ((cc - cols / 2) / cols) ** 2)
        self._background = (400.0 * vignette).astype(np.float32)
        centers = rng.uniform(40, min(rows, cols) - 40, (n_cells, 2)).astype(np.float32)
        dist2 = ((rr[None] - centers[:, 0, None, None]) ** 2
                 + (cc[None] - centers[:, 1, None, None]) ** 2)
        self._footprints = np.exp(-dist2 / (2 * 6.0**2)).astype(np.float32).reshape(n_cells, -1)
        self._gain = gain
        self.blocks = [self._make_block(rng) for _ in range(n_blocks)]

    def _make_block(self, rng: np.random.Generator) -> Frames:
        rows, cols = FRAME_SHAPE
        n_cells = self._footprints.shape[0]
        out = np.empty((BLOCK_FRAMES, rows, cols), dtype=DTYPE)
        for a in range(0, BLOCK_FRAMES, 10):  # 10 frames at a time keeps float temporaries small
            b = min(BLOCK_FRAMES, a + 10)
            active = rng.random((b - a, n_cells)) < 0.1
            amp = (rng.exponential(300.0, (b - a, n_cells)) * active).astype(np.float32)
            signal_ = self._background + (amp @ self._footprints).reshape(b - a, rows, cols)
            noise = rng.standard_normal(signal_.shape, dtype=np.float32)
            noisy = signal_ + noise * np.sqrt(self._gain * signal_)  # shot noise ~ sqrt(signal)
            out[a:b] = np.clip(noisy, -32768, 32767).astype(DTYPE)
        return out

    def block(self, b: int) -> Frames:
        return self.blocks[b % len(self.blocks)] + DTYPE.type(b % 97)

    def frame(self, g: int) -> Frames:
        b, i = divmod(g, BLOCK_FRAMES)
        frame: Frames = self.blocks[b % len(self.blocks)][i] + DTYPE.type(b % 97)
        return frame


@dataclass(frozen=True)
class Dataset:
    label: str  # "1 GB"
    session: str
    folder: Path
    tiffs: tuple[Path, ...]
    frames: int

    @property
    def raw_bytes(self) -> int:
        return self.frames * FRAME_BYTES


def session_folder(rig_root: Path, session: str) -> Path:
    """The default rig layout: {subject}/tif/{site}/{session}/*.tif."""
    return rig_root / SUBJECT / "tif" / SITE / session


def write_dataset(rig_root: Path, gb: float, source: FrameSource) -> Dataset:
    """Write ``gb`` GB (1e9 bytes) of frames as TIFFs of FRAMES_PER_FILE pages, one page a frame."""
    frames = max(1, round(gb * 1e9 / FRAME_BYTES))
    session = f"bench_{gb:g}gb".replace(".", "p")
    folder = session_folder(rig_root, session)
    folder.mkdir(parents=True)
    tiffs: list[Path] = []
    # FRAMES_PER_FILE is a multiple of BLOCK_FRAMES, so every file starts on a block boundary.
    for i, start in enumerate(range(0, frames, FRAMES_PER_FILE)):
        path = folder / f"{session}_{i + 1:05d}.tif"
        stop = min(frames, start + FRAMES_PER_FILE)
        with tifffile.TiffWriter(path) as tw:
            for a in range(start, stop, BLOCK_FRAMES):
                for frame in source.block(a // BLOCK_FRAMES)[: stop - a]:
                    tw.write(frame, contiguous=False, photometric="minisblack")
        tiffs.append(path)
    return Dataset(f"{gb:g} GB", session, folder, tuple(tiffs), frames)


def tiff_page(ds: Dataset, g: int) -> Frames:
    path = ds.tiffs[g // FRAMES_PER_FILE]
    with tifffile.TiffFile(path) as tf:
        page: Frames = tf.pages[g % FRAMES_PER_FILE].asarray()
    return page


def verify(path: Path, dataset: str, ds: Dataset) -> str:
    """Cheap correctness check: shape, and the first, middle and last frame against the TIFFs."""
    import h5py
    import hdf5plugin  # noqa: F401  (registers the Blosc filter; without it reads fail)

    try:
        with h5py.File(path, "r") as f:
            data = f[dataset]
            if tuple(data.shape) != (ds.frames, *FRAME_SHAPE):
                return f"MISMATCH shape {tuple(data.shape)}"
            for g in sorted({0, ds.frames // 2, ds.frames - 1}):
                if not np.array_equal(data[g], tiff_page(ds, g)):
                    return f"MISMATCH frame {g}"
    except (OSError, KeyError) as exc:
        return f"MISMATCH ({exc})"
    return "OK"


def child_timeout(ds: Dataset, compression: str = "none") -> float:
    # Generous: only a hung child should ever reach it (gzip 1 + shuffle converts at ~70 MB/s on 2 cores).
    floor_mbps = 10.0 if compression == "gzip" else 40.0
    return 120.0 + ds.raw_bytes / 1e6 / floor_mbps


def cache_note(ds: Dataset) -> str:
    # The page cache cannot be dropped reliably without root; just say what to expect.
    avail = psutil.virtual_memory().available
    likely = "yes" if ds.raw_bytes * 1.2 < avail else "partly at best"
    return (f"{ds.label}: {ds.frames} frames in {len(ds.tiffs)} TIFF(s), "
            f"{ds.raw_bytes / 1e6:.0f} MB raw; TIFFs likely in the page cache: {likely} "
            f"(just written, {avail / 1e9:.1f} GB RAM available)")
