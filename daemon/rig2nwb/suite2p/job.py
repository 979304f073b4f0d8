"""The default suite2p job: ``python -m rig2nwb.suite2p.job --session-folder ... --suite2p-folder
... --fs ... --nplanes ... --nchannels ... [--settings FILE]``.

It runs in the job's own process (locally or on a cluster node), never in the daemon: it imports
suite2p 1.x (``pip install 'rig2nwb[suite2p]'``), runs its pipeline on the session's TIFFs and
writes the results where the attach stage looks (the suite2p folder holding plane0/, ...).
The lab's settings file (suite2p's own settings.npy, or JSON or TOML with the same keys) is
applied over suite2p's defaults; the session's rate, planes and channels come from rig2nwb
(what the data said), and override the file's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

EXIT_NO_SUITE2P = 3
EXIT_BAD_SETTINGS = 4


def read_settings(path: Path) -> dict[str, Any]:
    """A settings file as a dict: .npy (read without running pickled code), .json or .toml."""
    if path.suffix == ".npy":
        from rig2nwb.suite2p.safepickle import load_npy

        array = load_npy(path, root=path.parent)
        value: Any = array.item() if getattr(array, "shape", None) == () else array
    elif path.suffix == ".json":
        value = json.loads(path.read_text(encoding="utf-8"))
    elif path.suffix == ".toml":
        value = tomllib.loads(path.read_text(encoding="utf-8"))
    else:
        raise ValueError(f"{path.name}: a settings file is .npy, .json or .toml")
    if not isinstance(value, dict):
        raise ValueError(f"{path.name}: holds {type(value).__name__}, not a dict of settings")
    return value


def merged(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """suite2p 1.x settings are nested (``registration``, ``detection``, ...): a file that sets
    one key of a section keeps the section's other defaults."""
    out = dict(base)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # no torch, or a broken CUDA install: suite2p would fail the same way
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rig2nwb.suite2p.job",
                                description="Run suite2p 1.x on one session for rig2nwb.")
    p.add_argument("--session-folder", type=Path, required=True)
    p.add_argument("--suite2p-folder", type=Path, required=True)
    p.add_argument("--fs", type=float, required=True, help="frames per second of one plane")
    p.add_argument("--nplanes", type=int, default=1)
    p.add_argument("--nchannels", type=int, default=1)
    p.add_argument("--settings", default="", help="the lab's settings file ('' for none)")
    args = p.parse_args(argv)
    try:
        import suite2p
        from suite2p.run_s2p import run_s2p
    except ImportError as exc:
        print(f"rig2nwb job: suite2p cannot be imported in {sys.executable} ({exc}); install it "
              "with: pip install 'rig2nwb[suite2p]'", file=sys.stderr)
        return EXIT_NO_SUITE2P
    settings: dict[str, Any] = dict(suite2p.default_settings())
    if args.settings:
        try:
            settings = merged(settings, read_settings(Path(args.settings)))
        except (OSError, ValueError) as exc:
            print(f"rig2nwb job: settings file {args.settings}: {exc}", file=sys.stderr)
            return EXIT_BAD_SETTINGS
    settings["fs"] = args.fs
    if str(settings.get("torch_device", "")).startswith("cuda") and not _cuda():
        print("rig2nwb job: no CUDA device here: suite2p runs on the CPU", flush=True)
        settings["torch_device"] = "cpu"
    out = args.suite2p_folder
    out.parent.mkdir(parents=True, exist_ok=True)
    # As the fixtures' runs: TIFFs read with tifffile (ScanImage's own reader is optional),
    # the first channel functional, no raw movie kept beside the registered one.
    db = {**suite2p.default_db(), "data_path": [str(args.session_folder)],
          "input_format": "tif", "force_sktiff": True, "functional_chan": 1,
          "keep_movie_raw": False, "nplanes": args.nplanes, "nchannels": args.nchannels,
          "save_path0": str(out.parent), "save_folder": out.name}
    print(f"rig2nwb job: suite2p {getattr(suite2p, 'version', '?')} on {args.session_folder} "
          f"({args.nplanes} plane(s), {args.nchannels} channel(s), {args.fs:g} Hz) -> {out}",
          flush=True)
    t0 = time.monotonic()
    run_s2p(db=db, settings=settings)
    print(f"rig2nwb job: done in {time.monotonic() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
