"""Synthetic ScanImage 2016+ BigTIFFs, laid out byte for byte the way ScanImage writes them.

ScanImage (2016 and later) writes a BigTIFF whose 16-byte header is followed by a ScanImage block:
magic 0x07030301, format version, the byte sizes of the frame-invariant ``SI.*`` header and of the
ROI-groups JSON, then both texts. Every page repeats the ``SI.*`` header in its Software tag and the
ROI JSON in its Artist tag, and carries its own per-frame data (``frameNumbers``,
``frameTimestamps_sec``, ``epoch``, ...) in its ImageDescription. Pixels are stored uncompressed,
one strip per page. Readers differ in which copy they use: tifffile's ``scanimage_metadata`` (and
so NeuroConv's ``ScanImageImagingInterface``) needs the block after the file header, rig2nwb
reads the block and the pages. tifffile cannot write that block, so this module writes the file
itself (standard library and numpy only).

The header lists the keys readers look up (channels saved and their names, frame rate, stack and
fastZ settings, frames per file, acquisition state, FOV) with the values of a planar single-channel
resonant-scanner acquisition, modelled on real ScanImage 2021-2023 files; a real header has ~450
keys (~18 KB), this one ~100 (~5 KB), so the per-page tag overhead is smaller than on a rig.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

SI_MAGIC = 0x07030301
SI_FORMAT = 3  # the ScanImage block version of SI 2016-2021 (SI.TIFF_FORMAT_VERSION = 3)

# TIFF field types
_SHORT, _ASCII, _RATIONAL, _LONG8 = 3, 2, 5, 16


@dataclass(frozen=True)
class Acquisition:
    """What the header states: a planar acquisition of one saved channel."""

    shape: tuple[int, int] = (512, 512)
    frame_rate: float = 30.0
    frames_per_file: int = 1000
    epoch: tuple[int, int, int, int, int, float] = (2025, 3, 14, 10, 30, 5.125)
    fov_um: float = 600.0  # square field of view, micrometres


def header_text(acq: Acquisition) -> str:
    """The frame-invariant ``SI.*`` header (MATLAB syntax, one key per line)."""
    rows, cols = acq.shape
    half = acq.fov_um / 2
    line_period = 1.0 / acq.frame_rate / rows * 0.85  # resonant scanning: most of the frame
    lines = {
        "SI.LINE_FORMAT_VERSION": "1",
        "SI.TIFF_FORMAT_VERSION": str(SI_FORMAT),
        "SI.VERSION_COMMIT": "'0000000000000000000000000000000000000000'",
        "SI.VERSION_MAJOR": "2021", "SI.VERSION_MINOR": "1", "SI.VERSION_UPDATE": "0",
        "SI.acqState": "'grab'", "SI.acqsPerLoop": "1", "SI.extTrigEnable": "false",
        "SI.loopAcqInterval": "10", "SI.objectiveResolution": "15",
        "SI.hBeams.enablePowerBox": "false", "SI.hBeams.powers": "20",
        "SI.hBeams.pzAdjust": "scanimage.types.BeamAdjustTypes.None",
        "SI.hChannels.channelInputRange": "{[-1 1] [-1 1] [-1 1] [-1 1]}",
        "SI.hChannels.channelName": "{'Channel 1' 'Channel 2' 'Channel 3' 'Channel 4'}",
        "SI.hChannels.channelOffset": "[-96 -81 0 0]",
        "SI.hChannels.channelSave": "1",
        "SI.hChannels.channelType": "{'stripe' 'stripe' 'stripe' 'stripe'}",
        "SI.hChannels.channelsActive": "1",
        "SI.hChannels.loggingEnable": "1",
        "SI.hCycleManager.enabled": "false",
        "SI.hDisplay.displayRollingAverageFactor": "1",
        "SI.hDisplay.name": "'SI Display'",
        "SI.hDisplay.volumeDisplayStyle": "'3D'",
        "SI.hFastZ.discardFlybackFrames": "false", "SI.hFastZ.enable": "false",
        "SI.hFastZ.enableFieldCurveCorr": "false", "SI.hFastZ.flybackTime": "0",
        "SI.hFastZ.hasFastZ": "false", "SI.hFastZ.numDiscardFlybackFrames": "0",
        "SI.hFastZ.waveformType": "'sawtooth'",
        "SI.hMotors.axesPosition": "[1000.5 -2000.25 -350]",
        "SI.hMotors.samplePosition": "[1000.5 -2000.25 -350]",
        "SI.hPmts.gains": "[0.6]", "SI.hPmts.names": "{'PMT1'}", "SI.hPmts.powersOn": "true",
        "SI.hRoiManager.imagingFovDeg": "[-7.5 -7.5;7.5 -7.5;7.5 7.5;-7.5 7.5]",
        "SI.hRoiManager.imagingFovUm":
            f"[{-half:g} {-half:g};{half:g} {-half:g};{half:g} {half:g};{-half:g} {half:g}]",
        "SI.hRoiManager.linePeriod": f"{line_period:.6g}",
        "SI.hRoiManager.linesPerFrame": str(rows),
        "SI.hRoiManager.mroiEnable": "false",
        "SI.hRoiManager.pixelsPerLine": str(cols),
        "SI.hRoiManager.scanFramePeriod": f"{1 / acq.frame_rate:.6g}",
        "SI.hRoiManager.scanFrameRate": f"{acq.frame_rate:.6g}",
        "SI.hRoiManager.scanType": "'frame'",
        "SI.hRoiManager.scanVolumeRate": f"{acq.frame_rate:.6g}",
        "SI.hRoiManager.scanZoomFactor": "2",
        "SI.hScan2D.bidirectional": "true",
        "SI.hScan2D.channelsDataType": "'int16'",
        "SI.hScan2D.fillFractionSpatial": "0.9",
        "SI.hScan2D.fillFractionTemporal": "0.712867",
        "SI.hScan2D.flybackTimePerFrame": "0.001",
        "SI.hScan2D.logAverageFactor": "1",
        "SI.hScan2D.logFramesPerFile": str(acq.frames_per_file),
        "SI.hScan2D.logFramesPerFileLock": "true",
        "SI.hScan2D.name": "'ImagingScanner'",
        "SI.hScan2D.sampleRate": "1.2e+08",
        "SI.hScan2D.scanMode": "'resonant'",
        "SI.hScan2D.scannerFrequency": "7910.4",
        "SI.hScan2D.scannerType": "'RG'",
        "SI.hStackManager.actualNumSlices": "1", "SI.hStackManager.actualNumVolumes": "1",
        "SI.hStackManager.enable": "false", "SI.hStackManager.framesPerSlice": "1",
        "SI.hStackManager.numFramesPerVolume": "1",
        "SI.hStackManager.numFramesPerVolumeWithFlyback": "1",
        "SI.hStackManager.numSlices": "1", "SI.hStackManager.numVolumes": "1",
        "SI.hStackManager.stackDefinition": "'uniform'",
        "SI.hStackManager.stackMode": "'fast'",
        "SI.hStackManager.zs": "-350", "SI.hStackManager.zsRelative": "0",
        "SI.hUserFunctions.name": "'SI UserFunctions'",
        "SI.hUserFunctions.userFunctionsCfg": "[]",
    }
    return "\n".join(f"{k} = {v}" for k, v in lines.items()) + "\n"


def roi_groups_json(acq: Acquisition) -> str:
    """The ROI groups (one default scanfield), as ScanImage stores them in the Artist tag."""
    rows, cols = acq.shape
    scanfield = {"ver": 1, "classname": "scanimage.mroi.scanfield.fields.RotatedRectangle",
                 "name": "Default Imaging Scanfield", "centerXY": [0, 0], "sizeXY": [15, 15],
                 "rotationDegrees": 0, "enable": 1, "pixelResolutionXY": [cols, rows]}
    roi = {"ver": 1, "classname": "scanimage.mroi.Roi", "name": "Default Imaging Roi", "zs": 0,
           "scanfields": scanfield, "discretePlaneMode": 0, "enable": 1}
    group = {"ver": 1, "classname": "scanimage.mroi.RoiGroup", "name": "Default Imaging ROI Group",
             "rois": roi}
    return json.dumps({"RoiGroups": {"imagingRoiGroup": group, "photostimRoiGroups": None,
                                     "integrationRoiGroup": None}})


def frame_description(g: int, acq: Acquisition, file_index: int) -> str:
    """Per-frame data of global frame ``g`` (0-based): what ScanImage writes into each page."""
    epoch = " ".join(f"{v:g}" for v in acq.epoch)
    trigger = "0.000000000" if file_index == 0 else "-1.000000000"  # only the first file's
    return (f"frameNumbers = {g + 1}\nacquisitionNumbers = 1\nframeNumberAcquisition = {g + 1}\n"
            f"frameTimestamps_sec = {g / acq.frame_rate:.9f}\n"
            f"acqTriggerTimestamps_sec = {trigger}\nnextFileMarkerTimestamps_sec = -1.000000000\n"
            f"endOfAcquisition = 0\nendOfAcquisitionMode = 0\ndcOverVoltage = 0\n"
            f"epoch = [{epoch}]\nauxTrigger0 = []\nauxTrigger1 = []\nauxTrigger2 = []\n"
            f"auxTrigger3 = []\nI2CData = {{}}\n")


def _ascii(text: str) -> bytes:
    return text.encode("ascii") + b"\0"


def _pad8(n: int) -> int:
    return -n % 8


def _ifd(tags: list[tuple[int, int, int, int | bytes]], next_ifd: int) -> bytes:
    """A BigTIFF IFD: entries (code, type, count, value or offset), sorted by code."""
    out = [struct.pack("<Q", len(tags))]
    for code, typ, count, value in sorted(tags, key=lambda t: t[0]):
        field = value if isinstance(value, bytes) else struct.pack(
            "<H" if typ == _SHORT else "<Q", value)
        out.append(struct.pack("<HHQ", code, typ, count) + field.ljust(8, b"\0"))
    out.append(struct.pack("<Q", next_ifd))
    return b"".join(out)


def write_scanimage_tiff(path: Path, frames: Iterable[npt.NDArray[np.int16]], n_frames: int,
                         first_frame: int, file_index: int, acq: Acquisition) -> None:
    """Write ``n_frames`` int16 frames (global frame numbers from ``first_frame``) as one
    ScanImage BigTIFF: file header, ScanImage block, then per page IFD, its tag texts, pixels."""
    rows, cols = acq.shape
    header, rois = _ascii(header_text(acq)), _ascii(roi_groups_json(acq))
    si_block = struct.pack("<IIII", SI_MAGIC, SI_FORMAT, len(header), len(rois)) + header + rois
    first_ifd = 16 + len(si_block) + _pad8(16 + len(si_block))
    n_tags = 17
    ifd_bytes = 8 + 20 * n_tags + 8
    page_bytes = rows * cols * 2
    res = struct.pack("<II", 1, 1)  # XResolution / YResolution 1/1 (no unit), as ScanImage
    written = 0
    with open(path, "wb") as f:
        f.write(b"II" + struct.pack("<HHHQ", 43, 8, 0, first_ifd))
        f.write(si_block + b"\0" * _pad8(16 + len(si_block)))
        offset = first_ifd
        for i, frame in enumerate(frames):
            if frame.shape != acq.shape or frame.dtype != np.int16:
                raise ValueError(f"frame {i}: expected int16 {acq.shape}, got {frame.dtype} "
                                 f"{frame.shape}")
            desc = _ascii(frame_description(first_frame + i, acq, file_index))
            desc_at = offset + ifd_bytes
            soft_at = desc_at + len(desc)
            artist_at = soft_at + len(header)
            data_at = artist_at + len(rois)
            data_at += _pad8(data_at)
            end = data_at + page_bytes
            next_ifd = end + _pad8(end) if i + 1 < n_frames else 0
            tags: list[tuple[int, int, int, int | bytes]] = [
                (256, _SHORT, 1, cols), (257, _SHORT, 1, rows), (258, _SHORT, 1, 16),
                (259, _SHORT, 1, 1), (262, _SHORT, 1, 1), (270, _ASCII, len(desc), desc_at),
                (273, _LONG8, 1, data_at), (274, _SHORT, 1, 1), (277, _SHORT, 1, 1),
                (278, _SHORT, 1, rows), (279, _LONG8, 1, page_bytes), (282, _RATIONAL, 1, res),
                (283, _RATIONAL, 1, res), (284, _SHORT, 1, 1), (305, _ASCII, len(header), soft_at),
                (315, _ASCII, len(rois), artist_at), (339, _SHORT, 1, 2),  # signed integers
            ]
            ifd = _ifd(tags, next_ifd)
            assert len(ifd) == ifd_bytes
            f.write(ifd)
            f.write(desc + header + rois + b"\0" * (data_at - artist_at - len(rois)))
            f.write(np.ascontiguousarray(frame, dtype="<i2").tobytes())
            f.write(b"\0" * (next_ifd - end if next_ifd else 0))
            offset = next_ifd
            written += 1
    if written != n_frames:
        raise ValueError(f"{path.name}: {written} frames written, {n_frames} announced")
