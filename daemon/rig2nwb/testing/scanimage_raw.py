"""A ScanImage file as tifffile reads it, with no help from rig2nwb: its header values and the
per-page descriptions, pulled out with small regexes (the independent expectation for the
ScanImage reader and for conversions of ScanImage files)."""

from __future__ import annotations

import re
from pathlib import Path

import tifffile


class Raw:
    """The fixture as tifffile reads it, with no help from rig2nwb."""

    def __init__(self, path: Path) -> None:
        with tifffile.TiffFile(path) as tf:
            self.pages = len(tf.pages)
            self.shape = tuple(tf.pages.first.shape)
            self.software = tf.pages.first.software
            self.descriptions = [p.description for p in tf.pages if isinstance(p, tifffile.TiffPage)]
        self.si3 = self.descriptions[0].startswith("state.")
        # ScanImage 3 separates its lines with '\r': normalise so that '^'/'$' work per line
        self.header = (self.descriptions[0] if self.si3 else self.software).replace("\r", "\n")

    def value(self, key: str) -> str:
        sep = "=" if self.si3 else " = "
        m = re.search(rf"^{re.escape(key + sep)}(.*)$", self.header, re.MULTILINE)
        assert m, f"{key} not in the raw header"
        return m.group(1).strip()

    def numbers(self, key: str) -> list[float]:
        return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", self.value(key))]

    def per_page(self, key: str) -> list[float]:
        out = []
        for d in self.descriptions:
            m = re.search(rf"^{key} = (\S+)$", d, re.MULTILINE)
            assert m, f"{key} missing from a page"
            out.append(float(m.group(1)))
        return out
