"""The check child: ``python -m rig2nwb.commands.checkchild NWB [--picture PNG]`` validates one
finished file (nwb.check), notes the datasets that need filter plugins, draws the summary
picture (outputs.summary) and prints one JSON line, a CheckSummary. The engine starts it through
nwb.check.CheckRun, at lower priority; whatever happens in here, the daemon only reads a line."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

from rig2nwb.core.humanize import clip
from rig2nwb.nwb.check import EXIT_COULD_NOT_RUN, check_nwb, exception_text, plugin_list
from rig2nwb.nwb.checksummary import (
    MAX_MESSAGE_CHARS,
    CheckSummary,
)


def draw_picture(nwb: Path, png: Path, rig: str = "") -> str | None:
    """Write the summary picture of ``nwb`` to ``png`` (and its thumbnail beside it, see
    status_files.thumbnail_of); None when done, else why not (one line). Run after the checks,
    in the same child: the engine does not write the file meanwhile."""
    try:
        from rig2nwb.config.paths import thumbnail_of
        from rig2nwb.fsutil import write_atomic
        from rig2nwb.outputs.summary import render_both

        picture, thumb = render_both(nwb, rig=rig)
        write_atomic(png, picture)
        if thumb is not None:
            write_atomic(thumbnail_of(png), thumb)
    except Exception as e:  # whatever the file holds, the picture never fails the check
        traceback.print_exc()
        return clip(f"{png.name}: {exception_text(e)}", MAX_MESSAGE_CHARS)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rig2nwb.commands.checkchild",
                                     description="Validate and inspect one NWB file; print a JSON summary.")
    parser.add_argument("path", type=Path)
    parser.add_argument("--nice", type=int, default=0, help="lower this process's priority (POSIX)")
    parser.add_argument("--picture", type=Path, default=None, metavar="PNG",
                        help="also write the summary picture of the file here (after the checks)")
    parser.add_argument("--rig", default="", help="the rig's name, shown on the picture")
    parser.add_argument("--no-check", action="store_true", help="skip the checks (picture only)")
    args = parser.parse_args(argv)
    if args.nice and hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(args.nice)
    t0 = time.monotonic()
    try:
        summary = CheckSummary.not_checked() if args.no_check else check_nwb(args.path)
    except Exception as e:  # check_nwb should not raise; if it does, still print a summary
        summary = CheckSummary.failure(f"check crashed: {exception_text(e)}")
        traceback.print_exc()
    summary = replace(summary, plugin_datasets=plugin_list(args.path))
    if args.picture is not None:
        error = draw_picture(args.path, args.picture, args.rig)
        summary = replace(summary, picture=None if error else str(args.picture), picture_error=error)
    if not summary.checked:
        summary = replace(summary, seconds=round(time.monotonic() - t0, 3))
    sys.stdout.write(summary.to_json() + "\n")
    sys.stdout.flush()
    return EXIT_COULD_NOT_RUN if summary.failed is not None else 0
if __name__ == "__main__":
    sys.exit(main())
