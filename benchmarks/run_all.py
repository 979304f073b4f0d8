#!/usr/bin/env python3
"""One command for the whole benchmark suite: runs each benchmark script, one after the other,
as a child, and prints the machine, every benchmark's table and one table of all the goals.

    python benchmarks/run_all.py [--quick] [--only batch,live,idle,compression,suite2p]
                                 [--workdir DIR] [--json OUT] [--markdown OUT.md]

Each script writes its results with ``--json`` in the shared format (benchmark, title, command,
machine, params, columns, rows, goals, notes; see benchmarks/README.md). A missing script is
reported as NOT RUN and a failing one as FAILED (with the end of its stderr); the others still
run. Exit status 1 if any benchmark failed or was not run, never because a goal was missed.

Also a small library for the scripts: ``machine_description`` and ``format_table``. Standard
library only at module level.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS_PYTHON = HERE / ".venv-peers" / "bin" / "python"

# name -> script, in the order they run. Never in parallel: each one measures the machine.
BENCHMARKS: dict[str, str] = {
    "batch": "batch_convert.py",
    "live": "live_rig.py",
    "idle": "idle.py",
    "compression": "compression_table.py",
    "suite2p": "suite2p_attach.py",
}
STDERR_TAIL = 15  # lines of a failed benchmark's stderr shown in the report


# --- machine description (also used by the benchmark scripts for their JSON) ------------------


def _run(cmd: Sequence[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 1e9, 1)
    except (OSError, ValueError):
        pass
    return None


def _disk(path: Path) -> str:
    """``df -T -h`` of the folder: device, file system, size, free space, mount point."""
    lines = _run(["df", "-T", "-h", str(path)]).splitlines()
    if len(lines) < 2:
        return "?"
    dev, fstype, size, _used, avail, _pct, *mount = lines[-1].split()
    return f"{dev} ({fstype}, {size}, {avail} free) at {' '.join(mount)}"


def _git() -> tuple[str | None, bool | None]:
    head = _run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or None
    if head is None:
        return None, None
    # Only daemon/ counts: benchmark scripts being edited do not change what is measured.
    return head, bool(_run(["git", "-C", str(REPO), "status", "--porcelain", "daemon"]))


def _neuroconv_version() -> str | None:
    if not PEERS_PYTHON.exists():
        return None
    code = "import importlib.metadata as m; print(m.version('neuroconv'))"
    return _run([str(PEERS_PYTHON), "-c", code]) or None


def machine_description(workdir: Path | None = None) -> dict[str, Any]:
    """What the figures were measured on: hardware, the workdir's disk and software versions."""
    where = workdir if workdir is not None and workdir.exists() else Path(tempfile.gettempdir())
    hdf5: str | None = None
    try:
        import h5py

        hdf5 = h5py.version.hdf5_version
    except ImportError:
        pass
    head, dirty = _git()
    uname = platform.uname()
    return {
        "cpu": _cpu_model(), "cpus": os.cpu_count(), "ram_gb": _ram_gb(),
        "disk": f"{where}: {_disk(where)}",
        "kernel": f"{uname.system} {uname.release} {uname.machine}",
        "python": platform.python_version(),
        "h5py": _version("h5py"), "hdf5": hdf5, "pynwb": _version("pynwb"), "hdmf": _version("hdmf"),
        "hdf5plugin": _version("hdf5plugin"), "tifffile": _version("tifffile"),
        "numpy": _version("numpy"), "rig2nwb": _version("rig2nwb"), "git": head,
        "daemon_dirty": dirty, "neuroconv": _neuroconv_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def machine_lines(m: dict[str, Any]) -> list[str]:
    git = m.get("git") or "?"
    if m.get("daemon_dirty"):
        git += ", daemon/ has uncommitted changes"
    neuroconv = m.get("neuroconv") or f"not installed ({PEERS_PYTHON.relative_to(REPO)} missing)"
    return [
        f"CPU: {m.get('cpu')}, {m.get('cpus')} cores; RAM {m.get('ram_gb')} GB; load average "
        f"{', '.join(str(x) for x in m.get('load_average') or [])}",
        f"disk: {m.get('disk')}",
        f"kernel: {m.get('kernel')}; Python {m.get('python')}",
        f"h5py {m.get('h5py')} / HDF5 {m.get('hdf5')}; pynwb {m.get('pynwb')}; hdmf {m.get('hdmf')}; "
        f"hdf5plugin {m.get('hdf5plugin')}; tifffile {m.get('tifffile')}; numpy {m.get('numpy')}",
        f"rig2nwb {m.get('rig2nwb')} (git {git}); NeuroConv {neuroconv}",
        f"date: {m.get('date')}",
    ]


# --- tables -------------------------------------------------------------------------------------


def _decimals(size: float) -> int:
    """About 3 significant digits, never an exponent: 1234 -> 0, 12.3 -> 1, 1.23 -> 2."""
    return 0 if size >= 100 else 1 if size >= 10 else 2 if size >= 0.1 or size == 0 else 3


def format_value(value: Any, decimals: int | None = None) -> str:
    """Numbers to a sensible precision (``decimals``, else from the value), None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{_decimals(abs(value)) if decimals is None else decimals}f}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cells(columns: Sequence[str], rows: list[dict[str, Any]]) -> tuple[list[list[str]], list[bool]]:
    """Formatted cells, and which columns are numeric. One precision per column (from its
    largest value), so a column's decimals line up: 55 and 164 MB, not 55.0 and 164."""
    numeric: list[bool] = []
    decimals: list[int | None] = []
    for c in columns:
        floats = [abs(r[c]) for r in rows if isinstance(r.get(c), float) and not math.isnan(r[c])]
        numeric.append(any(_is_number(r.get(c)) for r in rows))
        decimals.append(_decimals(max(floats)) if floats else None)
    cells = [[format_value(r.get(c), d) for c, d in zip(columns, decimals, strict=True)] for r in rows]
    return cells, numeric


def format_table(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> list[str]:
    """A plain-text table: numbers right-aligned, text left-aligned."""
    cells, numeric = _cells(columns, list(rows))
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    head = line(list(columns))
    return [head, "-" * len(head), *(line(row) for row in cells)]


def markdown_table(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> list[str]:
    cells, numeric = _cells(columns, list(rows))

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(columns) + " |",
            "|" + "|".join("---:" if num else "---" for num in numeric) + "|",
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in cells)]


# --- running the benchmarks ---------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    script: Path
    status: str = "NOT RUN"  # OK / FAILED / NOT RUN
    rc: int | None = None
    wall: float | None = None
    why: str = ""  # for FAILED / NOT RUN
    stderr_tail: list[str] = field(default_factory=list)
    result: dict[str, Any] | None = None  # the script's JSON


def _pump(stream: IO[str], prefix: str, keep: collections.deque[str] | None) -> None:
    for line in stream:
        line = line.rstrip("\n")
        print(f"{prefix}{line}", flush=True)
        if keep is not None:
            keep.append(line)


def run_benchmark(name: str, script: Path, args: argparse.Namespace, tmp: Path) -> Outcome:
    """Run one script as a child, stream its output prefixed with its name, read its JSON."""
    out = Outcome(name, script)
    if not script.exists():
        out.why = f"{script} does not exist"
        print(f"[{name}] NOT RUN: {out.why}", flush=True)
        return out
    result = tmp / f"{name}.json"
    cmd = [sys.executable, str(script), "--json", str(result)]
    if args.quick:
        cmd.append("--quick")
    if args.workdir is not None:
        cmd += ["--workdir", str(args.workdir)]
    if args.keep:
        cmd.append("--keep")
    print(f"[{name}] $ {shlex.join(cmd)}", flush=True)
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
    t0 = time.perf_counter()
    # Unbuffered: progress lines should appear as the child prints them, not when it ends.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", env=env, cwd=HERE)
    assert proc.stdout is not None and proc.stderr is not None
    # stderr on its own thread: a full pipe would block the child.
    err = threading.Thread(target=_pump, args=(proc.stderr, f"[{name}] ! ", tail), daemon=True)
    err.start()
    _pump(proc.stdout, f"[{name}] ", None)
    out.rc = proc.wait()
    err.join()
    out.wall = time.perf_counter() - t0
    out.stderr_tail = list(tail)
    if result.exists():
        try:
            out.result = json.loads(result.read_text(encoding="utf-8"))
        except ValueError as exc:
            out.why = f"unreadable JSON: {exc}"
    if out.rc != 0:
        out.status = "FAILED"
        out.why = f"exit status {out.rc}" + (f"; {out.why}" if out.why else "")
    elif out.result is None:
        out.status = "FAILED"
        out.why = out.why or "exit status 0 but no JSON written"
    else:
        out.status = "OK"
    print(f"[{name}] {out.status} in {out.wall:.0f} s{': ' + out.why if out.why else ''}", flush=True)
    return out


# --- the report ---------------------------------------------------------------------------------

GOAL_COLUMNS = ["benchmark", "goal", "target", "measured", "verdict"]


def goal_rows(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for o in outcomes:
        if o.status == "NOT RUN" or (o.result is None and o.status == "FAILED"):
            rows.append({"benchmark": o.name, "goal": f"(benchmark {o.status})", "target": "",
                         "measured": o.why, "verdict": "n/a"})
            continue
        for g in (o.result or {}).get("goals") or []:
            met = g.get("met")
            rows.append({"benchmark": o.name, "goal": g.get("goal"), "target": g.get("target"),
                         "measured": g.get("measured"),
                         "verdict": "MET" if met is True else "MISSED" if met is False else "n/a"})
    return rows


def _header(o: Outcome) -> str:
    title = (o.result or {}).get("title") or o.script.name
    wall = f", {o.wall:.0f} s" if o.wall is not None else ""
    return f"{o.name}: {title} [{o.status}{wall}]"


def _params(o: Outcome) -> str:
    params = (o.result or {}).get("params") or {}
    # Parameters are given, not measured: 5.0 minutes reads better as "5" than as "5.00".
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {format_value(v)}"
                     for k, v in params.items())


def text_report(machine: dict[str, Any], outcomes: Sequence[Outcome], total: float,
                command: str) -> list[str]:
    lines = ["", "=" * 100, "MACHINE", *machine_lines(machine)]
    for o in outcomes:
        lines += ["", "=" * 100, _header(o)]
        if o.why:
            lines.append(f"{o.status}: {o.why}")
        if o.status == "FAILED" and o.stderr_tail:
            lines += ["last lines of its stderr:", *(f"  {ln}" for ln in o.stderr_tail)]
        if o.result:
            if _params(o):
                lines.append(f"params: {_params(o)}")
            lines += format_table(o.result.get("columns") or [], o.result.get("rows") or [])
            lines += [f"note: {n}" for n in o.result.get("notes") or []]
            if o.result.get("command"):
                lines.append(f"command: {o.result['command']}")
    lines += ["", "=" * 100, "GOALS", *format_table(GOAL_COLUMNS, goal_rows(outcomes)), "",
              f"total wall time: {total:.0f} s ({total / 60:.1f} min)", f"command: {command}"]
    return lines


def markdown_report(machine: dict[str, Any], outcomes: Sequence[Outcome], total: float,
                    command: str) -> list[str]:
    lines = ["## Benchmark results", "", "Machine:", "", *(f"- {ln}" for ln in machine_lines(machine))]
    for o in outcomes:
        lines += ["", f"### {_header(o)}", ""]
        if o.why:
            lines += [f"**{o.status}**: {o.why}", ""]
        if o.status == "FAILED" and o.stderr_tail:
            lines += ["```", *o.stderr_tail, "```", ""]
        if o.result:
            if _params(o):
                lines += [f"Parameters: {_params(o)}", ""]
            lines += markdown_table(o.result.get("columns") or [], o.result.get("rows") or [])
            notes = o.result.get("notes") or []
            if notes:
                lines += ["", *(f"- {n}" for n in notes)]
            if o.result.get("command"):
                lines += ["", f"Command: `{o.result['command']}`"]
    lines += ["", "### Goals", "", *markdown_table(GOAL_COLUMNS, goal_rows(outcomes)), "",
              f"Total wall time: {total:.0f} s ({total / 60:.1f} min). Command:", "",
              "```sh", command, "```"]
    # One blank line between blocks, however the optional parts above came together.
    return [ln for i, ln in enumerate(lines) if ln or (i and lines[i - 1])]


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run every benchmark, one after the other, and print "
                                            "one report. Prints figures; asserts nothing.")
    p.add_argument("--quick", action="store_true", help="each benchmark's smoke-test size")
    p.add_argument("--only", default=",".join(BENCHMARKS),
                   help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all)")
    p.add_argument("--workdir", type=Path, help="passed to every benchmark: each makes a fresh "
                   "folder inside it (default: their own folders under /tmp)")
    p.add_argument("--keep", action="store_true", help="passed to every benchmark")
    p.add_argument("--json", type=Path, help="write the whole report as JSON")
    p.add_argument("--markdown", type=Path, help="write the report as Markdown tables")
    p.add_argument("--script", action="append", default=[], metavar="NAME=PATH",
                   help="run PATH instead of a benchmark's usual script (for testing the runner)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    bad = [n for n in names if n not in BENCHMARKS]
    if bad or not names:
        p.error(f"unknown benchmark(s) {', '.join(bad)}; choose from {', '.join(BENCHMARKS)}")
    args.only = [n for n in BENCHMARKS if n in names]  # always the documented order
    args.scripts = {n: HERE / s for n, s in BENCHMARKS.items()}
    for item in args.script:
        name, sep, path = item.partition("=")
        if not sep or name not in BENCHMARKS:
            p.error(f"--script {item!r}: expected NAME=PATH with NAME one of {', '.join(BENCHMARKS)}")
        args.scripts[name] = Path(path).resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = shlex.join([sys.executable, str(Path(__file__)), *argv])
    if args.workdir is not None:
        args.workdir = args.workdir.resolve()
        args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Described before the runs: the load average then is the one the benchmarks start from.
    machine = machine_description(args.workdir)
    for line in machine_lines(machine):
        print(line, flush=True)
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="rig2nwb-run-all-") as tmp:
        for name in args.only:
            outcomes.append(run_benchmark(name, args.scripts[name], args, Path(tmp)))
    total = time.perf_counter() - started
    for line in text_report(machine, outcomes, total, command):
        print(line)
    if args.markdown:
        args.markdown.write_text("\n".join(markdown_report(machine, outcomes, total, command)) + "\n",
                                 encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps({
            "command": command, "machine": machine, "total wall s": round(total, 1),
            "benchmarks": [{"name": o.name, "script": str(o.script), "status": o.status, "rc": o.rc,
                            "wall s": None if o.wall is None else round(o.wall, 1), "why": o.why,
                            "stderr tail": o.stderr_tail, "result": o.result} for o in outcomes],
            "goals": goal_rows(outcomes),
        }, indent=1), encoding="utf-8")
    return 0 if all(o.status == "OK" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
