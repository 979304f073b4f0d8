"""A simulated two-photon rig: synthetic cells with calcium transients, written like a real rig.

Frames are generated deterministically from a seed, so a test can regenerate the exact pages
it expects (independent ground truth) instead of trusting what the daemon wrote. TIFFs are written
page by page with tifffile, flushed after every page, optionally in real time, so a watcher sees
them grow exactly as it would on a rig.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path

import numpy as np
import tifffile


@dataclass(frozen=True)
class MovieSpec:
    shape: tuple[int, int] = (512, 512)
    rate: float = 30.0
    n_cells: int = 40
    seed: int = 0
    baseline: float = 400.0
    noise: float = 30.0


class SyntheticMovie:
    """Gaussian cells on a smooth background; each cell fires spikes that decay as GCaMP does."""

    def __init__(self, spec: MovieSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        rows, cols = spec.shape
        margin = min(rows, cols) // 10
        self.centers = np.stack([
            rng.uniform(margin, rows - margin, spec.n_cells),
            rng.uniform(margin, cols - margin, spec.n_cells),
        ], axis=1)
        radius = max(2.0, min(rows, cols) / 80)
        rr, cc = np.mgrid[0:rows, 0:cols]
        self.footprints = np.exp(
            -((rr[None] - self.centers[:, 0, None, None]) ** 2
              + (cc[None] - self.centers[:, 1, None, None]) ** 2) / (2 * radius**2)
        ).astype(np.float32)
        vignette = 1.0 - 0.3 * (((rr - rows / 2) / rows) ** 2 + ((cc - cols / 2) / cols) ** 2)
        self.background = (spec.baseline * vignette).astype(np.float32)
        self.brightness = rng.uniform(300, 900, spec.n_cells).astype(np.float32)
        self.rates_hz = rng.uniform(0.05, 0.5, spec.n_cells)
        self.tau_frames = 1.0 * spec.rate  # ~1 s decay

    def frames(self, start: int, stop: int) -> Iterator[np.ndarray]:
        """Frames ``start`` .. ``stop-1`` (int16); the same indices always give the same pixels."""
        spec = self.spec
        decay = np.exp(-1.0 / self.tau_frames)
        # Calcium state is a function of the spike history; replay from frame 0 so any window
        # is reproducible on its own.
        calcium = np.zeros(spec.n_cells, dtype=np.float32)
        for t in range(stop):
            trng = np.random.default_rng((spec.seed, t))
            spikes = trng.random(spec.n_cells) < self.rates_hz / spec.rate
            calcium = calcium * decay + spikes.astype(np.float32)
            if t < start:
                continue
            signal = np.tensordot(self.brightness * calcium, self.footprints, axes=1)
            noise = trng.standard_normal(spec.shape, dtype=np.float32) * spec.noise
            frame = self.background + signal + noise
            yield np.clip(frame, -32768, 32767).astype(np.int16)


def write_tiff(path: Path, frames: Iterator[np.ndarray], *, page_interval: float = 0.0,
               stop: threading.Event | None = None, stamp: datetime | None = None) -> int:
    """Write pages one by one (flushed each time, paced by ``page_interval``); return the count.

    The file is written under its final name from the first byte, like ScanImage does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    next_due = time.monotonic()
    with tifffile.TiffWriter(path) as tw:
        for frame in frames:
            if stop is not None and stop.is_set():
                break
            tw.write(frame, contiguous=False, photometric="minisblack",
                     datetime=stamp if n == 0 else None, software="rig2nwb simrig")
            tw.filehandle.flush()
            n += 1
            if page_interval > 0:
                next_due += page_interval
                delay = next_due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
    return n


def write_scan_file(path: Path, n_frames: int, rate: float, jitter_ms: float = 0.2,
                    seed: int = 0) -> np.ndarray:
    """The lab's frame-onset file: onsets in ms, whitespace-separated, on the first line."""
    rng = np.random.default_rng(seed)
    onsets = np.arange(n_frames) * 1000.0 / rate + rng.normal(0, jitter_ms, n_frames)
    # Jitter never makes a clock run backwards or start before zero.
    onsets = np.maximum.accumulate(np.round(np.maximum(onsets, 0.0), 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(" ".join(f"{x:.3f}" for x in onsets) + "\n", encoding="ascii")
    return onsets


def write_trial_file(path: Path, duration_ms: float, seed: int = 0) -> np.ndarray:
    """The seed lab's trial file: stim_on ms, stim_dur ms, unused, sf c/deg, unused, dir deg."""
    rng = np.random.default_rng(seed)
    rows = []
    t = 1000.0
    while t + 2000.0 < duration_ms:
        rows.append([t, 1000.0, 0, rng.choice([0.04, 0.08, 0.16]), 0,
                     rng.choice(np.arange(0, 360, 45))])
        t += 3000.0
    arr = np.array(rows, dtype=float).reshape(-1, 6)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(f"{v:g}" for v in r) + "\n" for r in arr), encoding="ascii")
    return arr


@dataclass
class SimSession:
    """One session of the simulated rig; the caller decides the paths (the lab's layout)."""

    tiff_paths: list[Path]
    frames_per_file: int
    movie: MovieSpec = field(default_factory=MovieSpec)
    scan_path: Path | None = None
    trial_path: Path | None = None
    realtime: bool = True
    tz: tzinfo | None = None  # the rig's clock: the DateTime tag is local time in this zone

    @property
    def n_frames(self) -> int:
        return len(self.tiff_paths) * self.frames_per_file

    def expected_frames(self, file_index: int) -> Iterator[np.ndarray]:
        a = file_index * self.frames_per_file
        return SyntheticMovie(self.movie).frames(a, a + self.frames_per_file)

    def write(self, stop: threading.Event | None = None) -> None:
        """Write every TIFF (in real time if asked), then the scan and trial files."""
        movie = SyntheticMovie(self.movie)
        frames = movie.frames(0, self.n_frames)
        interval = 1.0 / self.movie.rate if self.realtime else 0.0
        stamp = datetime.now(self.tz).replace(microsecond=0, tzinfo=None)
        for i, path in enumerate(self.tiff_paths):
            chunk = (next(frames) for _ in range(self.frames_per_file))
            write_tiff(path, chunk, page_interval=interval, stop=stop,
                       stamp=stamp if i == 0 else None)
            if stop is not None and stop.is_set():
                return
        if self.scan_path is not None:
            write_scan_file(self.scan_path, self.n_frames, self.movie.rate, seed=self.movie.seed)
        if self.trial_path is not None:
            write_trial_file(self.trial_path, self.n_frames * 1000.0 / self.movie.rate,
                             seed=self.movie.seed)
