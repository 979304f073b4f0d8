"""The live preview: a small PNG of the latest frames of every session still acquiring.

``PreviewHook`` (a ServiceHook) runs on the worker thread between appends. For each session
whose NWB file is open for appending (``view.writers``) and whose committed page count changed
since its last preview, at most every ``status.preview_interval_seconds``, it reads the latest
``status.preview_frames`` committed frames of the session's first series (plane 0, first
channel: the functional one in the usual layouts) straight from the open h5py dataset, averages
them, shrinks the mean to at most ``MAX_SIDE`` pixels on its long side (block mean), stretches
the 1st to 99.5th percentile to 8 bits and writes a greyscale PNG (Pillow) atomically to
``status_files.preview_png``.

Why it is cheap enough for the worker thread: frames are read in blocks of ``READ_BLOCK`` into a
float64 sum (memory: one block plus one frame), and nothing else is drawn; only frames the ledger
counts as committed are read (the dataset may hold more after a crash, or zeros where a batch was
allocated but not written). Measured cost: see docs/pictures.md.

When the session finishes, the last preview stays until the summary picture is written; then the
engine removes it (``CheckQueue._record``), so the output folder holds one picture per session:
the preview while acquiring, the summary once finished. With ``status.summary_picture = false``
the last preview stays.
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING

import numpy as np

from rig2nwb.config.paths import preview_png
from rig2nwb.config.schema import Config
from rig2nwb.fsutil import write_atomic
from rig2nwb.logs import get_logger

if TYPE_CHECKING:
    from rig2nwb.engine.view import LoopView
    from rig2nwb.nwb.writer import SessionAppender

MAX_SIDE = 256
MAX_READ = 200  # frames read per preview at most (blosc-lz4 512x512: ~0.45 ms a frame)
READ_BLOCK = 16  # frames per read: 16 x 512 x 512 int16 = 8 MB as int16, 32 MB as float64


def latest_frames_mean(appender: SessionAppender, pages: int,
                       n: int) -> tuple[np.ndarray, int, int, int] | None:
    """(mean image, first frame, end frame, frames read) of the latest ``n`` committed frames of the first
    series, given the ledger's committed ``pages``; None before the first frame. More than
    MAX_READ frames are sampled evenly (the cost on the worker thread stays bounded)."""
    ds = appender.data[0]
    end = min(appender.layout.count(0, pages), int(ds.shape[0]))
    if end <= 0:
        return None
    start = max(0, end - n)
    total = np.zeros(ds.shape[1:], dtype=np.float64)
    if end - start <= MAX_READ:
        for a in range(start, end, READ_BLOCK):
            total += np.asarray(ds[a:min(a + READ_BLOCK, end)]).sum(axis=0, dtype=np.float64)
        return total / (end - start), start, end, end - start
    picks = np.unique(np.linspace(start, end - 1, MAX_READ).round().astype(np.int64))
    for i in picks:
        total += np.asarray(ds[int(i)], dtype=np.float64)
    return total / len(picks), start, end, len(picks)


def shrink(img: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """Block mean by the smallest integer factor that brings the long side to <= max_side
    (edge rows/columns that do not fill a block are dropped)."""
    f = -(-max(img.shape) // max_side)
    if f <= 1:
        return img
    rows, cols = img.shape[0] // f * f, img.shape[1] // f * f
    if rows == 0 or cols == 0:  # a very thin image: keep one row/column of blocks
        return np.asarray(img[::f, ::f])
    return np.asarray(img[:rows, :cols].reshape(rows // f, f, cols // f, f).mean(axis=(1, 3)))


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Stretch the 1st..99.5th percentile to 0..255 (NaN-safe; a flat image becomes mid grey)."""
    finite = img[np.isfinite(img)]
    if not finite.size:
        return np.zeros(img.shape, dtype=np.uint8)
    lo, hi = (float(v) for v in np.percentile(finite, [1.0, 99.5]))
    if hi <= lo:
        return np.full(img.shape, 128, dtype=np.uint8)
    scaled = (np.nan_to_num(img, nan=lo) - lo) * (255.0 / (hi - lo))
    return np.asarray(np.clip(np.rint(scaled), 0, 255), dtype=np.uint8)


def encode_png(img: np.ndarray, description: str) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Description", description)
    info.add_text("Software", "rig2nwb")
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def render_preview(appender: SessionAppender, pages: int, n: int) -> bytes | None:
    """The preview PNG of a session (None before its first committed frame)."""
    got = latest_frames_mean(appender, pages, n)
    if got is None:
        return None
    mean, start, end, used = got
    name = appender.layout.series[0].name
    how = f"{used} frames" if used == end - start else f"{used} evenly spaced frames"
    return encode_png(to_uint8(shrink(mean)), f"rig2nwb live preview: mean of frames {start}-{end - 1} "
                      f"of {name} ({how}; frames of {mean.shape[0]}x{mean.shape[1]} px)")


class PreviewHook:
    """Writes each acquiring session's preview PNG (see the module docstring)."""

    name = "preview"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.interval = cfg.status.preview_interval_seconds
        self.frames = cfg.status.preview_frames
        self.log = get_logger("rig2nwb.outputs.preview")
        self.done: dict[int, tuple[int, float]] = {}  # session id -> (pages shown, monotonic time)
        self.failing: dict[int, str] = {}  # session id -> last error logged (one line per error)

    def started(self, view: LoopView) -> None:
        pass

    def stopping(self, view: LoopView) -> None:
        pass

    def tick(self, view: LoopView) -> None:
        now = time.monotonic()
        for sid, appender in view.open_appenders():
            pages = view.ledger.frames_committed(sid)
            last = self.done.get(sid)
            if pages <= 0 or (last is not None and (last[0] == pages or now - last[1] < self.interval)):
                continue
            self.done[sid] = (pages, now)  # also after a failure: retried with later frames
            self._write(view, sid, appender, pages)

    def _write(self, view: LoopView, sid: int, appender: SessionAppender, pages: int) -> None:
        sess = view.ledger.session_by_id(sid)
        path = preview_png(self.cfg, sess.subject, sess.session)
        t0 = time.perf_counter()
        try:
            png = render_preview(appender, pages, self.frames)
            if png is None:
                return
            write_atomic(path, png)
        except (OSError, ValueError, KeyError) as exc:  # unreadable dataset, output not writable
            error = f"{type(exc).__name__}: {exc}"
            if self.failing.get(sid) != error:
                self.failing[sid] = error
                self.log.warning("preview not written; will retry", stage="preview",
                                 subject=sess.subject, session=sess.session, picture=str(path),
                                 error=error)
            return
        seconds = time.perf_counter() - t0
        if self.failing.pop(sid, None) is not None:
            self.log.info("preview written again", stage="preview", subject=sess.subject,
                          session=sess.session, picture=str(path))
        self.log.debug("preview written", stage="preview", subject=sess.subject,
                       session=sess.session, pages=pages, ms=round(seconds * 1000, 1),
                       bytes=len(png), picture=str(path))
