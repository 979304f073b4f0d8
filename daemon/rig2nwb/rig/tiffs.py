"""Reading the rig's TIFFs: a cheap completeness check and bounded-memory page streaming.

Rig files are opened read-only, through rigfs (no links, no FIFOs, the file that was looked at),
and never modified. Pages are streamed in batches sized in bytes so memory stays flat whatever
the file size (``tifffile.memmap`` cannot be used: ScanImage pages are not contiguous, and
``imread`` of a whole file holds it all in RAM). A frame is checked against the memory budget
before any pixel is decoded: a small compressed file can declare gigabytes of pixels.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from rig2nwb.errors import TiffProblem, UnsafeRigPath
from rig2nwb.rig.safeopen import FileId, open_rig_file
from rig2nwb.states import Problem

# A frame larger than this is refused before it is decoded (``frame_limit`` narrows it to the
# configured memory budget): 64 MB is a 4096 x 8192 int16 frame.
MAX_FRAME_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class TiffInfo:
    pages: int
    shape: tuple[int, int]
    dtype: str
    size: int
    mtime_ns: int
    datetime_tag: datetime | None
    file_id: FileId | None = None  # the version that was inspected (device, inode, size, mtime)

    @property
    def frame_bytes(self) -> int:
        return self.shape[0] * self.shape[1] * np.dtype(self.dtype).itemsize


FULL_PARSE_EVERY = 64  # pages between full header parses (plus the last page)


def inspect_tiff(path: Path, *, root: Path | None = None, expect: FileId | None = None,
                 max_frame_bytes: int = MAX_FRAME_BYTES) -> TiffInfo:
    """Check, without decoding pixels, that a TIFF is complete and holds uniform 2-D frames.

    ``root``: the folder it must lie in, reached without links (default: its own folder);
    ``expect``: the version that was looked at (see rigfs). A frame over ``max_frame_bytes`` is
    refused before anything is decoded.

    A TIFF still being written (or truncated for good) fails here: tifffile happily lists pages
    whose data runs past the end of the file, so the data-extent check is what proves
    completeness. Pages are listed as light TiffFrames (~4x faster than full headers: 1 s saved
    per 4 GB); each uncompressed page must hold exactly one frame's bytes, and every 64th page
    and the last get a full header parse, which catches a different shape or type.
    """
    try:
        with open_tiff(path, root=root, expect=expect) as tf:
            st = os.fstat(tf.filehandle.fileno())
            tf.pages.cache = False
            tf.pages.useframes = True
            n = len(tf.pages)
            if n == 0:
                if (nxt := _chain_end(tf, 0)) != 0:
                    raise _chain_problem(path, 0, nxt, st.st_size)
                raise TiffProblem(Problem.NO_PAGES, f"{path.name}: TIFF holds no image pages")
            first = tf.pages.first
            shape, dtype = first.shape, first.dtype
            if len(shape) != 2 or first.samplesperpixel != 1:
                raise TiffProblem(
                    "bad_page", f"{path.name}: pages of shape {shape} are not single-channel 2-D "
                    "frames (RGB or tiled stacks are not supported)"
                )
            frame_bytes = int(shape[0]) * int(shape[1]) * np.dtype(dtype).itemsize
            if frame_bytes > max_frame_bytes:
                raise TiffProblem(Problem.TOO_LARGE, f"{path.name}: frames of {shape[0]} x {shape[1]} "
                                  f"{dtype} ({frame_bytes / 2**20:,.0f} MiB each) are larger than "
                                  f"the {max_frame_bytes / 2**20:,.0f} MiB a frame may have "
                                  "(append.memory_mb / 4); not read")
            uncompressed = first.compression == 1
            dt_tag = _datetime_tag(first)
            end = 0
            try:
                for i in range(n):
                    page = tf.pages[i]
                    counts = page.databytecounts
                    if uncompressed and sum(counts) != frame_bytes:
                        raise _mixed(path, i, f"{sum(counts)} bytes of pixel data", shape, dtype)
                    for off, cnt in zip(page.dataoffsets, counts, strict=True):
                        end = max(end, off + cnt)
            except (TiffProblem, ValueError, RuntimeError):
                _find_mixed_page(tf, path, n, shape, dtype)  # the real cause, when there is one
                raise
            if end > st.st_size:
                # TiffFrames borrow the first page's layout, so a page of another shape can look
                # like data past the end: on this (rare) path, full headers name the real cause.
                _find_mixed_page(tf, path, n, shape, dtype)
                raise TiffProblem(
                    "truncated",
                    f"{path.name}: truncated, page data ends at byte {end} but the file has "
                    f"{st.st_size} bytes",
                )
            tf.pages.useframes = False
            for i in sorted({*range(FULL_PARSE_EVERY, n, FULL_PARSE_EVERY), n - 1}):
                page = tf.pages[i]
                if page.shape != shape or page.dtype != dtype:
                    raise _mixed(path, i, f"{page.shape} {page.dtype}", shape, dtype)
            # Last, once the listed pages are known to be sound: did the chain end cleanly?
            if (nxt := _chain_end(tf, n)) != 0:
                raise _chain_problem(path, n, nxt, st.st_size)
    except TiffProblem:
        raise
    except OSError as exc:
        raise os_problem(path, exc) from exc
    except Exception as exc:  # tifffile raises many types for damaged files
        raise TiffProblem(Problem.NOT_TIFF, f"{path.name}: not a readable TIFF ({exc})") from exc
    return TiffInfo(n, (int(shape[0]), int(shape[1])), str(dtype), st.st_size, st.st_mtime_ns,
                    dt_tag, FileId.of(st))


def _chain_end(tf: tifffile.TiffFile, n: int) -> int:
    """The "next IFD" offset stored after the last listed page (0 in a sound file), or after
    the header when no page was listed. tifffile stops listing at a link that points past the
    end of the file, back into the chain or at a damaged IFD, and only logs it (rig2nwb silences
    that log), listing the pages before the break as if that were the whole file: pages would
    be lost silently. Reads a few bytes; the pages are not touched."""
    t = tf.tiff
    fh = tf.filehandle
    if n == 0:
        fh.seek(4 if t.offsetsize == 4 else 8)
    else:
        fh.seek(tf.pages[n - 1].offset)
        tagno = struct.unpack(t.tagnoformat, fh.read(t.tagnosize))[0]
        fh.seek(tagno * t.tagsize, os.SEEK_CUR)
    raw = fh.read(t.offsetsize)
    if len(raw) < t.offsetsize:
        return -1  # the field itself is cut off
    return int(struct.unpack(t.offsetformat, raw)[0])


def _chain_problem(path: Path, n: int, nxt: int, size: int) -> TiffProblem:
    where = f"after page {n - 1}" if n else "of page 0"
    if nxt < 0 or nxt >= size:
        # As in a file cut short (or still being written): "truncated", retried if it changes.
        at = f"at byte {nxt}" if nxt >= 0 else "past the end"
        return TiffProblem(Problem.TRUNCATED, f"{path.name}: truncated or corrupt IFD chain, the IFD "
                           f"{where} would be {at} but the file has {size} bytes")
    return TiffProblem(Problem.CORRUPT_IFD, f"{path.name}: corrupt IFD chain {where} (it points to "
                       f"byte {nxt}, back into the chain or at a damaged IFD); the pages after "
                       "it cannot be found")


def _find_mixed_page(tf: tifffile.TiffFile, path: Path, n: int, shape: tuple[int, ...],
                     dtype: Any) -> None:
    """Parse every page header fully; raise 'mixed_pages' for the first page that differs.
    Any other failure here is left to the caller's own diagnosis."""
    tf.pages.useframes = False
    for i in range(1, n):
        try:
            page = tf.pages[i]
        except Exception:  # a damaged header: not what we are looking for
            return
        if page.shape != shape or page.dtype != dtype:
            raise _mixed(path, i, f"{page.shape} {page.dtype}", shape, dtype)


def _mixed(path: Path, i: int, what: str, shape: tuple[int, ...], dtype: Any) -> TiffProblem:
    return TiffProblem(Problem.MIXED_PAGES, f"{path.name}: page {i} is {what}, page 0 is {shape} "
                       f"{dtype} (pages of mixed shape or type)")


@contextmanager
def open_tiff(path: Path, *, root: Path | None = None,
              expect: FileId | None = None) -> Iterator[tifffile.TiffFile]:
    """Open a rig TIFF safely (rigfs) so that its real IFD chain is listed.

    For classic (non-Big) TIFFs that look like ScanImage <= 2015, tifffile otherwise *computes*
    the page list from the first pages' spacing and the file size ("virtual frames"): pages
    whose descriptions differ in length are then silently missed, and a file still being written
    looks complete. Walking the chain costs a little time and never loses a page.

    Refusals (a link, a FIFO, another file than ``expect``) come as TiffProblem; OSError as
    the OS raised it."""
    try:
        fh = open_rig_file(path.parent if root is None else root, path, expect=expect)
    except UnsafeRigPath as exc:
        raise TiffProblem(exc.code, exc.message, transient=exc.transient) from None
    try:
        if os.fstat(fh.fileno()).st_size == 0:
            raise TiffProblem(Problem.EMPTY, f"{path.name}: the file is empty (0 bytes)")
        with tifffile.TiffFile(fh, is_scanimage=False, name=path.name) as tf:
            yield tf
    finally:
        fh.close()


def batch_frames(frame_bytes: int, budget_bytes: int, most: int) -> int:
    """Frames per batch: at most ``most``, and a batch in flight (the decoded pages, the copies
    that split them into series and the compressed chunks: about four times the batch) within
    ``budget_bytes``. At least one."""
    return max(1, min(most, budget_bytes // max(1, 4 * frame_bytes)))


def read_batches(path: Path, start: int, stop: int, batch: int, *, root: Path | None = None,
                 expect: FileId | None = None) -> Iterator[np.ndarray]:
    """Yield pages ``start`` .. ``stop-1`` as arrays of shape (n, rows, cols), n <= batch."""
    try:
        with open_tiff(path, root=root, expect=expect) as tf:
            tf.pages.cache = False
            tf.pages.useframes = True
            shape = tf.pages.first.shape[-2:]
            for a in range(start, stop, batch):
                b = min(stop, a + batch)
                # No local name for the batch: a suspended generator would keep it alive while
                # the next one is read, two batches in memory instead of one (the caller drops
                # its reference before asking for the next).
                yield tf.asarray(key=range(a, b), maxworkers=1).reshape((b - a, *shape))
    except TiffProblem:
        raise
    except OSError as exc:
        raise os_problem(path, exc) from exc
    except Exception as exc:
        raise TiffProblem(Problem.UNREADABLE, f"{path.name}: reading pages failed ({exc})") from exc


def stat_readable(path: Path, *, root: Path | None = None) -> os.stat_result:
    """The file's stat, proving that it may be read (stat alone does not), through rigfs."""
    try:
        with open_rig_file(path.parent if root is None else root, path) as fh:
            return os.fstat(fh.fileno())
    except UnsafeRigPath as exc:
        raise TiffProblem(exc.code, exc.message, transient=exc.transient) from None
    except OSError as exc:
        raise os_problem(path, exc) from exc


def os_problem(path: Path, exc: OSError) -> TiffProblem:
    if exc.errno == errno.ENOENT:
        return TiffProblem(Problem.VANISHED, f"{path.name}: deleted before it was appended",
                           transient=True)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return TiffProblem(Problem.UNREADABLE, f"{path.name}: permission denied (cannot read the file)",
                           transient=True)
    return TiffProblem(Problem.IO_ERROR, f"{path.name}: {exc.strerror or exc}", transient=True)


def _datetime_tag(page: tifffile.TiffPage) -> datetime | None:
    tag = page.tags.get(306)  # DateTime, "YYYY:MM:DD HH:MM:SS"
    if tag is None:
        return None
    try:
        return datetime.strptime(str(tag.value).strip(), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
