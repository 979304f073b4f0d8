"""One command for the fault, bad-input and security suites, with a table of what they proved.

Runs pytest as a child over the suites that record figures (rig2nwb/testing/figures.py) with
``--figures <tmp file>`` (and ``--run-slow --crash-trials N`` unless ``--quick``), then prints
crash trials survived / run, frames lost and duplicated, power-loss repairs, bad inputs handled,
disk-full recoveries, outages survived, long-run RSS/fds/threads and security checks, plus
pytest's pass/fail counts and the wall time. Exit status 1 if a test failed or any data was
lost or duplicated, else 0.

    .venv/bin/python -m benchmarks.selftest --quick        # the CI sizes, ~10 min
    .venv/bin/python -m benchmarks.selftest                # 200 crash trials each: hours

(from the repository root; pytest runs with the repository root as its cwd either way).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SUITES = ["e2e/test_crash.py", "e2e/test_power_loss.py", "e2e/test_soak.py",
          "integration/test_bad_corpus.py", "integration/test_bad_inputs.py",
          "integration/test_suite2p_stage.py", "unit/suite2p/test_safepickle.py", "e2e/test_security.py"]


def suite_files() -> tuple[list[Path], list[str]]:
    """The named suites that exist, plus any other test file that records figures; and the
    named ones missing (written by others, maybe not there yet)."""
    tests = REPO / "tests"
    found = [tests / n for n in SUITES if (tests / n).exists()]
    missing = [n for n in SUITES if not (tests / n).exists()]
    for path in sorted(tests.rglob("test_*.py")):
        if path not in found and "from rig2nwb.testing.figures import record" in path.read_text("utf-8"):
            found.append(path)
    return found, missing


def read_figures(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text("utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def junit_counts(path: Path) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    if not path.exists():
        return counts
    for case in ET.parse(path).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        if "failure" in tags:
            counts["failed"] += 1
        elif "error" in tags:
            counts["errors"] += 1
        elif "skipped" in tags:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def table(figures: list[dict[str, Any]]) -> tuple[list[str], bool]:
    """The report's lines, and whether the figures show lost/duplicated data or a failure."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in figures:
        by[str(row.get("kind"))].append(row)
    lines: list[str] = []
    bad = False

    def n(row: dict[str, Any], key: str) -> int:
        return int(row.get(key) or 0)

    crash = by["crash"]
    if crash:
        lines.append("crash trials (SIGKILL at random instants):")
        for r in crash:
            phases = r.get("phases") or {}
            extra = ""
            if "suite2p_old" in r:
                extra = f"  old/none {n(r, 'suite2p_old')}, new {n(r, 'suite2p_new')}"
            lines.append(f"  {r.get('test')}: survived {n(r, 'trials_survived')}/{n(r, 'trials_run')},"
                         f" frames {n(r, 'frames_expected')}, lost {n(r, 'frames_lost')},"
                         f" duplicated {n(r, 'frames_duplicated')}{extra}")
            if phases:
                lines.append("    kills by phase: " + ", ".join(f"{k} {v}" for k, v in phases.items()))
        run = sum(n(r, "trials_run") for r in crash)
        survived = sum(n(r, "trials_survived") for r in crash)
        lost = sum(n(r, "frames_lost") for r in crash)
        dup = sum(n(r, "frames_duplicated") for r in crash)
        lines.append(f"  TOTAL: survived {survived}/{run}, frames lost {lost}, duplicated {dup}")
        bad |= survived < run or lost > 0 or dup > 0
    power = by["power_loss"]
    if power:
        run = sum(n(r, "trials_run") for r in power)
        repaired = sum(n(r, "trials_repaired") for r in power)
        lost = sum(n(r, "frames_lost") for r in power)
        dup = sum(n(r, "frames_duplicated") for r in power)
        lines.append(f"power-loss copies repaired: {repaired}/{run}, frames lost {lost}, "
                     f"duplicated {dup}")
        bad |= repaired < run or lost > 0 or dup > 0
    inputs = by["bad_input"]
    if inputs:
        handled = sum(bool(r.get("handled")) for r in inputs)
        lines.append(f"bad inputs handled: {handled}/{len(inputs)}")
        lines += [f"  not handled: {r.get('case')}: {r.get('detail')}" for r in inputs
                  if not r.get("handled")]
    disk = by["disk_full"]
    if disk:
        lost = sum(n(r, "frames_lost") for r in disk)
        lines.append(f"disk-full recoveries: {sum(n(r, 'recoveries') for r in disk)} in "
                     f"{len(disk)} tests, frames lost {lost}")
        bad |= lost > 0
    outages = by["outage"]
    if outages:
        lines.append(f"outages survived: {sum(bool(r.get('survived')) for r in outages)}/{len(outages)}")
    for r in by["soak"]:
        lines.append(f"long run {r.get('test')}: {r.get('sessions')} sessions, {r.get('files')} files, "
                     f"{r.get('frames')} frames in {r.get('seconds')} s; RSS {r.get('rss_start_mb')} -> "
                     f"{r.get('rss_end_mb')} MB, fds {r.get('fds_start')} -> {r.get('fds_end')}, "
                     f"threads {r.get('threads_start')} -> {r.get('threads_end')}")
    security = by["security"]
    if security:
        passed = sum(bool(r.get("passed", n(r, "refused") >= n(r, "tried"))) for r in security)
        lines.append(f"security checks passed: {passed}/{len(security)} "
                     f"(attempts refused {sum(n(r, 'refused') for r in security)}/"
                     f"{sum(n(r, 'tried') for r in security)})")
        lines += [f"  failed: {r.get('test')}: {r.get('detail')}" for r in security
                  if not r.get("passed", True)]
    if not lines:
        lines.append("no figures were recorded")
    return lines, bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.selftest",
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true",
                    help="the CI sizes: no --run-slow, each test's default crash trials")
    ap.add_argument("--crash-trials", type=int, default=200,
                    help="SIGKILLs per crash test in the full run (default 200)")
    ap.add_argument("--keep-figures", type=Path, default=None,
                    help="also keep the figures (JSON lines) in this file")
    ap.add_argument("pytest_args", nargs="*", help="passed on to pytest (e.g. -k crash)")
    args = ap.parse_args(argv)

    files, missing = suite_files()
    for name in missing:
        print(f"selftest: tests/{name} not present; skipped")
    if not files:
        print("selftest: no suites found", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="rig2nwb-selftest-") as tmp:
        figures, junit = Path(tmp) / "figures.jsonl", Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", *map(str, files),
               "--figures", str(figures), "--junitxml", str(junit)]
        if not args.quick:
            cmd += ["--run-slow", "--crash-trials", str(args.crash_trials)]
        cmd += args.pytest_args
        print("selftest: " + " ".join(cmd), flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(cmd, cwd=REPO)
        wall = time.monotonic() - t0
        rows = read_figures(figures)
        counts = junit_counts(junit)
        if args.keep_figures:
            args.keep_figures.write_text(figures.read_text("utf-8") if figures.exists() else "")
    lines, bad = table(rows)
    print("\n=== rig2nwb selftest ===")
    print("\n".join(lines))
    print(f"pytest: {counts['passed']} passed, {counts['failed']} failed, {counts['errors']} errors, "
          f"{counts['skipped']} skipped (exit {rc}); wall time {wall / 60:.1f} min")
    failed = rc != 0 or counts["failed"] > 0 or counts["errors"] > 0 or bad
    print("RESULT: " + ("FAILED" if failed else "ok: nothing lost, nothing let in"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
