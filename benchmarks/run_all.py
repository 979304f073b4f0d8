#!/usr/bin/env python3
"""One command for the whole benchmark suite: runs each benchmark script, one after the other,
as a child, and prints the machine, every benchmark's table and one table of all the goals.

    python -m benchmarks.run_all [--quick] [--only batch,live,idle,compression,suite2p]
                                 [--workdir DIR] [--json OUT] [--markdown OUT.md]

(from the repository root; each benchmark runs as ``python -m benchmarks.<script>``).

Each script writes its results with ``--json`` in the shared format (benchmark, title, command,
machine, params, columns, rows, goals, notes; see benchmarks/README.md). A missing script is
reported as NOT RUN and a failing one as FAILED (with the end of its stderr); the others still
run. Exit status 1 if any benchmark failed or was not run, never because a goal was missed.

Standard library only at module level (and the kit's machine and report modules, which are too).
"""

from __future__ import annotations

import argparse
import collections
import json
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from benchmarks.kit.machine import machine_description, machine_lines
from benchmarks.kit.paths import BENCHMARKS_DIR, REPO_ROOT, command_line, module_command, module_env
from benchmarks.kit.report import format_table, format_value, markdown_table

MODULE = "benchmarks.run_all"
# name -> script (a module of this package), in the order they run. Never in parallel: each one
# measures the machine.
BENCHMARKS: dict[str, str] = {
    "batch": "batch_convert",
    "live": "live_rig",
    "idle": "idle",
    "compression": "compression_table",
    "suite2p": "suite2p_attach",
}
STDERR_TAIL = 15  # lines of a failed benchmark's stderr shown in the report


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


def run_benchmark(name: str, script: Path, module: str | None, args: argparse.Namespace,
                  tmp: Path) -> Outcome:
    """Run one script as a child (``python -m module``, or ``python script`` when ``module`` is
    None), stream its output prefixed with its name, read its JSON."""
    out = Outcome(name, script)
    if not script.exists():
        out.why = f"{script} does not exist"
        print(f"[{name}] NOT RUN: {out.why}", flush=True)
        return out
    result = tmp / f"{name}.json"
    args_ = ["--json", str(result)]
    cmd = module_command(module, *args_) if module else [sys.executable, str(script), *args_]
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
    # The repository root as cwd and on PYTHONPATH: the scripts run as ``python -m benchmarks...``.
    env = {**module_env(), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", env=env, cwd=REPO_ROOT)
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
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                description="Run every benchmark, one after the other, and print "
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
    # name -> (the script's file, its module; None: run the file itself)
    args.scripts = {n: (BENCHMARKS_DIR / f"{m}.py", f"benchmarks.{m}") for n, m in BENCHMARKS.items()}
    for item in args.script:
        name, sep, path = item.partition("=")
        if not sep or name not in BENCHMARKS:
            p.error(f"--script {item!r}: expected NAME=PATH with NAME one of {', '.join(BENCHMARKS)}")
        args.scripts[name] = (Path(path).resolve(), None)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = command_line(MODULE, argv)
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
            script, module = args.scripts[name]
            outcomes.append(run_benchmark(name, script, module, args, Path(tmp)))
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
