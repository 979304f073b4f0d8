"""How a session's TIFF pages map onto its TwoPhotonSeries (one per plane and channel).

A session is one stream of pages: the pages of its TIFFs, file after file in run order. ScanImage
(and rig2nwb's config for plain TIFFs) interleaves them as

    for each volume (cycle):
        for each slice (plane):  for each frame of the slice:  for each saved channel: one page
        then the flyback frames (each with one page per channel), which are not data

so page ``p`` of the stream belongs to exactly one series and one frame of it (or is flyback),
whatever file it sits in. That is why a file ending mid volume needs no special care: the next
file simply continues the stream. The ledger counts committed *pages* of the stream; every
series' frame count follows from that one number, which keeps crash repair a single trim.
Only a final incomplete cycle is dropped, when the session is finalized.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class SeriesSpec:
    index: int  # position in PageLayout.series
    plane: int  # 0-based slice index (suite2p's plane0, plane1, ...)
    channel: int  # the rig's channel number (ScanImage: 1-based, may skip: [1, 4])
    name: str  # TwoPhotonSeries, or TwoPhotonSeries_plane0_ch1 when there are several
    plane_name: str  # ImagingPlane / ImagingPlane_plane0_ch1
    channel_name: str  # OpticalChannel / OpticalChannel_ch1

    @property
    def path(self) -> str:
        return f"acquisition/{self.name}"


@dataclass(frozen=True)
class PageLayout:
    channels: tuple[int, ...] = (1,)  # channel numbers, in page order within a frame
    planes: int = 1
    frames_per_slice: int = 1
    flyback_frames: int = 0  # per cycle, after the last slice
    frame_rate: float = 30.0  # scan frames per second (a frame = one page per channel)
    source: str = "config"  # where the layout came from ("ScanImage header of x.tif", ...)

    def __post_init__(self) -> None:
        if not self.channels or self.planes < 1 or self.frames_per_slice < 1 or (
                self.flyback_frames < 0) or not self.frame_rate > 0:
            raise ValueError(f"impossible page layout: {self}")

    # --- shape of one cycle -------------------------------------------------------------------

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def frames_per_cycle(self) -> int:
        """Scan frames per volume, flyback included."""
        return self.planes * self.frames_per_slice + self.flyback_frames

    @property
    def pages_per_cycle(self) -> int:
        return self.frames_per_cycle * self.n_channels

    @property
    def series_rate(self) -> float:
        """Nominal frames per second of each series (the volume rate times frames per slice)."""
        return self.frame_rate * self.frames_per_slice / self.frames_per_cycle

    @property
    def series(self) -> tuple[SeriesSpec, ...]:
        single = self.planes == 1 and self.n_channels == 1
        out = []
        for p in range(self.planes):
            for ci, ch in enumerate(self.channels):
                suffix = "" if single else f"_plane{p}_ch{ch}"
                out.append(SeriesSpec(
                    index=p * self.n_channels + ci, plane=p, channel=ch,
                    name=f"TwoPhotonSeries{suffix}", plane_name=f"ImagingPlane{suffix}",
                    channel_name="OpticalChannel" if single else f"OpticalChannel_ch{ch}"))
        return tuple(out)

    # --- mapping pages to series frames -------------------------------------------------------

    def _place(self, pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(series index or -1 for flyback, frame index within the series) of stream pages."""
        cycle, r = np.divmod(pages, self.pages_per_cycle)
        frame, ch = np.divmod(r, self.n_channels)
        plane, within = np.divmod(frame, self.frames_per_slice)
        data = frame < self.planes * self.frames_per_slice
        series = np.where(data, plane * self.n_channels + ch, -1)
        k = cycle * self.frames_per_slice + within
        return series, k

    def split(self, start: int, n: int) -> list[tuple[int, int, np.ndarray]]:
        """Pages ``start .. start+n-1`` by series: (series index, its first frame index, positions
        of its pages within the batch). Each series' frames are consecutive."""
        series, k = self._place(np.arange(start, start + n, dtype=np.int64))
        out = []
        for s in range(len(self.series)):
            pos = np.flatnonzero(series == s)
            if pos.size:
                out.append((s, int(k[pos[0]]), pos))
        return out

    def locate(self, page: int) -> tuple[int, int] | None:
        """(series index, frame index) of one stream page, None for a flyback page."""
        series, k = self._place(np.array([page], dtype=np.int64))
        return None if series[0] < 0 else (int(series[0]), int(k[0]))

    def count(self, series: int, pages: int) -> int:
        """Frames of ``series`` among the first ``pages`` pages of the stream."""
        return self.first_page_after(series, pages)[0]

    def first_page_after(self, series: int, pages: int) -> tuple[int, int]:
        """(frames of the series in the first ``pages`` pages, stream page of its next frame)."""
        full, rest = divmod(pages, self.pages_per_cycle)
        plane, ci = divmod(series, self.n_channels)
        # within a cycle, the series' pages sit at plane * fps * nch + f * nch + ci, f < fps
        offsets = (plane * self.frames_per_slice + np.arange(self.frames_per_slice)) * (
            self.n_channels) + ci
        done_in_cycle = int(np.count_nonzero(offsets < rest))
        n = full * self.frames_per_slice + done_in_cycle
        return n, self.page_of(series, n)

    def page_of(self, series: int, k: int) -> int:
        """The stream page that holds frame ``k`` of ``series``."""
        plane, ci = divmod(series, self.n_channels)
        cycle, within = divmod(k, self.frames_per_slice)
        frame = plane * self.frames_per_slice + within
        return cycle * self.pages_per_cycle + frame * self.n_channels + ci

    def complete(self, pages: int) -> int:
        """The pages of whole cycles among the first ``pages`` (what a finished series keeps)."""
        return pages // self.pages_per_cycle * self.pages_per_cycle

    def scan_frame(self, pages: np.ndarray) -> np.ndarray:
        """Scan frame number (0-based, flyback frames counted) of stream pages: the index into a
        list of per-frame onsets."""
        return pages // self.n_channels

    # --- persistence --------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PageLayout:
        d = json.loads(text)
        d["channels"] = tuple(d["channels"])
        return cls(**d)

    def describe(self) -> str:
        parts = [f"{self.planes} plane(s)" + (
            f" x {self.frames_per_slice} frames per slice" if self.frames_per_slice > 1 else ""),
            f"channel(s) {', '.join(map(str, self.channels))}"]
        if self.flyback_frames:
            parts.append(f"{self.flyback_frames} flyback frame(s) per volume dropped")
        parts.append(f"{self.frame_rate:.6g} Hz scan frames, {self.series_rate:.6g} Hz per series")
        return ", ".join(parts)

    def same_acquisition(self, other: PageLayout) -> bool:
        """Do two files' layouts belong to one series (the rate may be re-measured per file)?"""
        return (self.channels, self.planes, self.frames_per_slice, self.flyback_frames) == (
            other.channels, other.planes, other.frames_per_slice, other.flyback_frames)
