"""rig2nwb.core.pagelayout.PageLayout against a brute-force model of the page stream.

The model walks the acquisition explicitly (volume > slice > frame of the slice > saved channel,
then the flyback frames, each with one page per channel) and writes down, page by page, which
series and which frame of it the page is (None for flyback). Every PageLayout method is checked
against lists built from that walk, for many random layouts and random page windows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest

from rig2nwb.core.pagelayout import PageLayout


@dataclass(frozen=True)
class Page:
    series: int | None  # index into the model's series list; None: a flyback page
    frame: int | None  # frame index within that series
    scan_frame: int  # scan frame number, flyback frames counted
    volume: int


class Model:
    """The page stream of ``volumes`` volumes, built with nested loops."""

    def __init__(self, channels: tuple[int, ...], planes: int, per_slice: int, flyback: int,
                 volumes: int) -> None:
        self.channels, self.planes, self.per_slice, self.flyback = channels, planes, per_slice, flyback
        # series in order: planes outer, channels inner
        self.keys = [(p, c) for p in range(planes) for c in channels]
        frames = {key: 0 for key in self.keys}
        self.pages: list[Page] = []
        scan = 0
        for v in range(volumes):
            for p in range(planes):
                for _ in range(per_slice):
                    for c in channels:
                        key = (p, c)
                        self.pages.append(Page(self.keys.index(key), frames[key], scan, v))
                        frames[key] += 1
                    scan += 1
            for _ in range(flyback):
                for _ in channels:
                    self.pages.append(Page(None, None, scan, v))
                scan += 1
        self.volumes = volumes

    def frames_of(self, series: int, pages: int) -> int:
        return sum(1 for pg in self.pages[:pages] if pg.series == series)

    def page_of(self, series: int, frame: int) -> int:
        for i, pg in enumerate(self.pages):
            if pg.series == series and pg.frame == frame:
                return i
        raise AssertionError(f"the model is too short for frame {frame} of series {series}")

    def whole_volume_pages(self, pages: int) -> int:
        """Pages in the volumes that are complete among the first ``pages``."""
        last_complete = -1
        for v in range(self.volumes):
            in_v = [i for i, pg in enumerate(self.pages) if pg.volume == v]
            if in_v[-1] < pages:
                last_complete = in_v[-1]
        return last_complete + 1

    def split(self, start: int, n: int) -> list[tuple[int, int, list[int]]]:
        out = []
        for s in range(len(self.keys)):
            pos = [i - start for i in range(start, start + n) if self.pages[i].series == s]
            if pos:
                frames = [f for i in pos if (f := self.pages[start + i].frame) is not None]
                assert frames == list(range(frames[0], frames[0] + len(frames)))  # consecutive
                out.append((s, frames[0], pos))
        return out


def random_layout(rng: np.random.Generator) -> tuple[tuple[int, ...], int, int, int]:
    n_ch = int(rng.integers(1, 4))
    channels = tuple(sorted(int(c) for c in rng.choice(np.arange(1, 7), n_ch, replace=False)))
    return channels, int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(0, 4))


LAYOUTS = [
    ((1,), 1, 1, 0), ((2,), 1, 1, 0), ((1, 4), 1, 1, 0), ((1, 4), 2, 2, 0), ((1,), 9, 1, 7),
    ((1, 2, 3), 5, 3, 3), ((3,), 1, 3, 2), ((1, 4), 1, 1, 1),
    *[random_layout(np.random.default_rng(seed)) for seed in range(60)],
]


def _id(layout: tuple[tuple[int, ...], int, int, int]) -> str:
    ch, planes, per_slice, flyback = layout
    return f"ch{'-'.join(map(str, ch))}_p{planes}_fps{per_slice}_fb{flyback}"


@pytest.mark.parametrize("shape", LAYOUTS, ids=[f"{i}-{_id(x)}" for i, x in enumerate(LAYOUTS)])
def test_against_the_brute_force_model(shape: tuple[tuple[int, ...], int, int, int]) -> None:
    channels, planes, per_slice, flyback = shape
    layout = PageLayout(channels=channels, planes=planes, frames_per_slice=per_slice,
                        flyback_frames=flyback, frame_rate=30.0)
    model = Model(channels, planes, per_slice, flyback, volumes=6)
    n_pages = len(model.pages)
    cycle = n_pages // 6
    assert layout.pages_per_cycle == cycle
    assert layout.frames_per_cycle == cycle // len(channels)
    assert len(layout.series) == len(model.keys)

    # every page: locate, page_of (inverse), scan_frame
    for i, pg in enumerate(model.pages):
        where = layout.locate(i)
        assert where == (None if pg.series is None else (pg.series, pg.frame)), i
        if pg.series is not None:
            assert layout.page_of(pg.series, pg.frame) == i  # type: ignore[arg-type]
    assert layout.scan_frame(np.arange(n_pages)).tolist() == [pg.scan_frame for pg in model.pages]

    # every prefix of up to 4 volumes (the model's 6 hold the next frame of every series)
    for pages in range(4 * cycle + 1):
        for s in range(len(model.keys)):
            n = model.frames_of(s, pages)
            assert layout.count(s, pages) == n, (s, pages)
            assert layout.first_page_after(s, pages) == (n, model.page_of(s, n)), (s, pages)
        assert layout.complete(pages) == model.whole_volume_pages(pages), pages

    # random windows of the stream
    rng = np.random.default_rng(len(channels) * 1000 + planes * 100 + per_slice * 10 + flyback)
    windows = [(0, 0), (0, 1), (0, n_pages), (cycle - 1, 2)]
    windows += [(int(a), int(rng.integers(0, n_pages - a + 1)))
                for a in rng.integers(0, n_pages, size=40)]
    for start, n in windows:
        got = [(s, k0, pos.tolist()) for s, k0, pos in layout.split(start, n)]
        assert got == model.split(start, n), (start, n)
        for _, _, pos in layout.split(start, n):
            assert pos.dtype.kind == "i"


def test_a_long_stream_far_from_the_start() -> None:
    """The arithmetic holds at large page numbers (a 10-hour session), not just the first volumes."""
    layout = PageLayout(channels=(1, 4), planes=3, frames_per_slice=2, flyback_frames=1)
    model = Model((1, 4), 3, 2, 1, volumes=2)
    cycle = layout.pages_per_cycle
    base_volume = 10**7
    for i, pg in enumerate(model.pages):
        page = base_volume * cycle + i
        expect = None if pg.series is None else (pg.series, base_volume * 2 + pg.frame)  # type: ignore[operator]
        assert layout.locate(page) == expect
        if expect is not None:
            assert layout.page_of(*expect) == page
            assert layout.count(expect[0], page) == expect[1]


@pytest.mark.parametrize("seed", range(10))
def test_json_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    channels, planes, per_slice, flyback = random_layout(rng)
    layout = PageLayout(channels=channels, planes=planes, frames_per_slice=per_slice,
                        flyback_frames=flyback, frame_rate=float(rng.uniform(0.5, 1000.0)),
                        source=f"ScanImage 2023 header of run_{seed:05d}.tif ü")
    text = layout.to_json()
    assert json.loads(text)["channels"] == list(channels)  # plain JSON, readable without rig2nwb
    back = PageLayout.from_json(text)
    assert back == layout and isinstance(back.channels, tuple)
    assert back.frame_rate == layout.frame_rate  # bit-exact
    assert back.series == layout.series
    assert back.same_acquisition(layout)


def test_series_naming() -> None:
    one = PageLayout(channels=(2,))
    [s] = one.series
    assert (s.index, s.plane, s.channel) == (0, 0, 2)
    assert (s.name, s.plane_name, s.channel_name, s.path) == (
        "TwoPhotonSeries", "ImagingPlane", "OpticalChannel", "acquisition/TwoPhotonSeries")

    two_ch = PageLayout(channels=(1, 4))
    assert [s.name for s in two_ch.series] == ["TwoPhotonSeries_plane0_ch1", "TwoPhotonSeries_plane0_ch4"]
    assert [s.plane_name for s in two_ch.series] == ["ImagingPlane_plane0_ch1", "ImagingPlane_plane0_ch4"]
    assert [s.channel_name for s in two_ch.series] == ["OpticalChannel_ch1", "OpticalChannel_ch4"]

    two_planes = PageLayout(channels=(3,), planes=2, flyback_frames=1)
    assert [(s.name, s.plane_name, s.channel_name) for s in two_planes.series] == [
        ("TwoPhotonSeries_plane0_ch3", "ImagingPlane_plane0_ch3", "OpticalChannel_ch3"),
        ("TwoPhotonSeries_plane1_ch3", "ImagingPlane_plane1_ch3", "OpticalChannel_ch3")]

    grid = PageLayout(channels=(1, 2, 4), planes=3, frames_per_slice=2)
    expected = [(p, c) for p in range(3) for c in (1, 2, 4)]
    assert [(s.plane, s.channel) for s in grid.series] == expected
    assert [s.index for s in grid.series] == list(range(9))
    assert [s.name for s in grid.series] == [f"TwoPhotonSeries_plane{p}_ch{c}" for p, c in expected]
    assert len({s.plane_name for s in grid.series}) == 9
    assert all(s.path == f"acquisition/{s.name}" for s in grid.series)


@pytest.mark.parametrize("shape", LAYOUTS[:20], ids=[_id(x) for x in LAYOUTS[:20]])
def test_series_rate(shape: tuple[tuple[int, ...], int, int, int]) -> None:
    """Frames of one series per second: per_slice of them in each volume of frames_per_cycle
    scan frames."""
    channels, planes, per_slice, flyback = shape
    layout = PageLayout(channels=channels, planes=planes, frames_per_slice=per_slice,
                        flyback_frames=flyback, frame_rate=60.0)
    volume_s = (planes * per_slice + flyback) / 60.0
    assert layout.series_rate == pytest.approx(per_slice / volume_s)


def test_same_acquisition_ignores_rate_and_source() -> None:
    a = PageLayout(channels=(1, 4), planes=2, frames_per_slice=2, frame_rate=58.2, source="a.tif")
    assert a.same_acquisition(PageLayout(channels=(1, 4), planes=2, frames_per_slice=2,
                                         frame_rate=57.9, source="b.tif"))
    for other in (PageLayout(channels=(1,), planes=2, frames_per_slice=2),
                  PageLayout(channels=(1, 4), planes=1, frames_per_slice=2),
                  PageLayout(channels=(1, 4), planes=2, frames_per_slice=1),
                  PageLayout(channels=(1, 4), planes=2, frames_per_slice=2, flyback_frames=1)):
        assert not a.same_acquisition(other)


@pytest.mark.parametrize("kwargs", [
    {"channels": ()}, {"planes": 0}, {"frames_per_slice": 0}, {"flyback_frames": -1},
    {"frame_rate": 0.0}, {"frame_rate": -30.0}, {"frame_rate": math.nan},
])
def test_impossible_layouts_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="impossible page layout"):
        PageLayout(**kwargs)  # type: ignore[arg-type]
