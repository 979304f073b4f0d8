"""Cost of reading a ScanImage file's per-page data (frameNumbers, frameTimestamps_sec).

rig2nwb reads every page's ImageDescription of a ScanImage file once (for its timestamps and
channel count) besides streaming its pixels. This prints what that costs per page on a synthetic
ScanImage-2016-style BigTIFF (header in the Software tag, per-frame data in each page), and what
it adds to a 512x512 int16 page's append at the measured ~380 MB/s. Prints figures; asserts
nothing. Usage, from the repository root: python -m benchmarks.scanimage_pages [--pages 8000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from rig2nwb.rig.scanimage import frame_data, read_scanimage

HEADER = "\n".join([
    "SI.VERSION_MAJOR = 2021", "SI.hChannels.channelSave = 1", "SI.hRoiManager.scanFrameRate = 30",
    "SI.hFastZ.enable = false", "SI.hStackManager.enable = false",
    "SI.hStackManager.framesPerSlice = 1",
    "SI.hRoiManager.imagingFovUm = [-256 -256;256 -256;256 256;-256 256]",
])


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scanimage_pages",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=8000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "si.tif"
        frame = np.zeros((64, 64), "int16")  # the cost is per page, not per pixel
        with tifffile.TiffWriter(path, bigtiff=True) as tw:
            for i in range(args.pages):
                tw.write(frame, contiguous=False, photometric="minisblack", software=HEADER,
                         description=(f"frameNumbers = {i + 1}\nframeTimestamps_sec = "
                                      f"{i / 30:.6f}\nepoch = [2025 1 1 0 0 0]\n"), metadata=None)
        best_hdr = best_pages = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            read_scanimage(path)
            best_hdr = min(best_hdr, time.perf_counter() - t)
            t = time.perf_counter()
            frame_data(path)
            best_pages = min(best_pages, time.perf_counter() - t)
    per_page = best_pages / args.pages
    append = 512 * 512 * 2 / 380e6
    print(f"header (read_scanimage): {best_hdr * 1e3:.0f} ms per file")
    print(f"per-page data (frame_data): {best_pages * 1e3:.0f} ms for {args.pages} pages = "
          f"{per_page * 1e6:.0f} us/page; a 512x512 int16 page appends in ~{append * 1e6:.0f} us "
          f"at 380 MB/s, so +{per_page / append * 100:.0f}% on ScanImage files")


if __name__ == "__main__":
    main()
