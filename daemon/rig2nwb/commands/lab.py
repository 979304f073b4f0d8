"""``rig2nwb lab CONFIG [CONFIG ...]``: one view over every rig of a lab server.

A CONFIG may be a folder: every ``*.toml`` in it (``/etc/rig2nwb/``). Prints the table (or
``--json``), or writes the lab page (``--page PATH``, with its JSON twin beside it); with
``--watch SECONDS`` it does so again every SECONDS until stopped (what ``rig2nwb-lab.service``
runs). Read-only: see outputs.lab. Exit status 1 when a rig could not be read (it is shown
all the same), else 0.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from rig2nwb.errors import UsageError
from rig2nwb.outputs.lab import collect_lab, config_files, lab_json, render_lab_table
from rig2nwb.outputs.labpage import write_lab_page


def lab(configs: list[Path], *, as_json: bool = False, page: Path | None = None,
        watch: float | None = None) -> int:
    if not config_files(configs):
        raise UsageError("no configuration files given (or none in the folder given)")
    if page is not None and not page.parent.is_dir():
        raise UsageError(f"--page {page}: the folder {page.parent} does not exist")
    if watch is not None and watch <= 0:
        raise UsageError("--watch: a number of seconds above 0")
    stop = threading.Event()
    if watch is not None:
        def handler(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
    if watch is not None and page is not None:  # one line for the journal, not one a refresh
        print(f"rig2nwb lab: {len(config_files(configs))} rig(s) -> {page}, every {watch:g} s",
              file=sys.stderr, flush=True)
    failing = False
    while True:
        rigs = collect_lab(configs)
        unreadable = any(r.error is not None for r in rigs)
        if page is not None:
            try:
                write_lab_page(rigs, page)
                if failing:
                    print(f"rig2nwb lab: {page} written again", file=sys.stderr, flush=True)
                failing = False
            except OSError as exc:
                if not failing:  # once per outage
                    print(f"rig2nwb: cannot write {page}: {exc}", file=sys.stderr, flush=True)
                failing = True
                if watch is None:
                    return 1
        elif as_json:
            print(json.dumps(lab_json(rigs), indent=1))
        else:
            print(render_lab_table(rigs), flush=True)
        if watch is None or stop.wait(watch):
            return 1 if unreadable else 0
