#!/usr/bin/env bash
# Creates benchmarks/.venv-peers: a venv of its own (never the project's) with the peer tools the
# benchmarks compare rig2nwb against: NeuroConv with its suite2p interface (roiextractors) and
# its ScanImage / TIFF imaging interfaces. Idempotent: re-running it only installs what is
# missing and prints the versions.
#
#   bash benchmarks/setup_peers.sh            # python3 from PATH
#   PYTHON=python3.11 bash benchmarks/setup_peers.sh
#   NEUROCONV_SPEC="neuroconv==0.10.2" bash benchmarks/setup_peers.sh   # pin a version
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-peers"
python="${PYTHON:-python3}"
spec="${NEUROCONV_SPEC:-neuroconv}"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating $venv with $("$python" --version 2>&1)"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip 2>&1 \
        | { grep -v "^WARNING: Location '.*' is ignored" || true; }
fi

# suite2p: roiextractors' Suite2pSegmentationExtractor (numpy + natsort; suite2p itself is not
# needed). scanimage / tiff: ScanImageImagingInterface and TiffImagingInterface (tifffile with
# imagecodecs, natsort). scanimage-legacy: ScanImageLegacyImagingInterface (the
# scanimage-tiff-reader wheel, ~1 MB). psutil: the benchmark's own helpers.
# (The filter drops pip's notes about configured package locations that don't exist here.)
"$venv/bin/python" -m pip install --quiet "${spec}[suite2p,scanimage,scanimage-legacy,tiff]" psutil 2>&1 \
    | { grep -v "^WARNING: Location '.*' is ignored" || true; }

"$venv/bin/python" - <<'EOF'
import importlib.metadata as md
import sys

print(f"peers venv: {sys.prefix} (Python {sys.version.split()[0]})")
for name in ("neuroconv", "roiextractors", "pynwb", "hdmf", "h5py", "numpy", "tifffile",
             "imagecodecs", "scanimage-tiff-reader", "natsort", "hdf5plugin", "psutil"):
    try:
        print(f"  {name:24s} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name:24s} (not installed)")

from neuroconv.datainterfaces import (  # noqa: F401  (import check)
    ScanImageImagingInterface,
    ScanImageLegacyImagingInterface,
    Suite2pSegmentationInterface,
    TiffImagingInterface,
)
from ScanImageTiffReader import ScanImageTiffReader  # noqa: F401

print("  Suite2p / ScanImage / ScanImageLegacy / Tiff interfaces import OK")
EOF
