"""Command line: ``rig2nwb run | convert | attach | process | retry | repack | status | lab |
check-config | demo``.

Every command takes ``--config PATH`` (default ``./config.toml``). Errors are one clear line (or
one list, for configuration problems), never a traceback; exit codes: 0 done, 1 the job could
not be completed (``check-config``: the config is valid but DANDI metadata is incomplete or a
``rig2nwb.toml`` is invalid), 2 bad configuration or usage. An error nobody foresaw is one line
too, naming the log that holds its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import tzinfo
from pathlib import Path
from typing import Any, NoReturn

from rig2nwb import __version__
from rig2nwb.config.loading import load_config
from rig2nwb.config.logsetup import setup_from_config
from rig2nwb.config.schema import DEFAULT_CONFIG, Config
from rig2nwb.core.names import printable
from rig2nwb.errors import ConfigError, LedgerDamaged, UsageError


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="configuration file (default: ./config.toml)")
    p = argparse.ArgumentParser(prog="rig2nwb", parents=[common], description=(
        "Watch a two-photon rig's save folder and turn its TIFFs into NWB files."))
    p.add_argument("--version", action="version", version=f"rig2nwb {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("run", parents=[common], help="run the daemon (until SIGTERM / Ctrl+C)")
    r.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # the supervised child
    c = sub.add_parser("convert", parents=[common],
                       help="one-shot conversion of a finished session folder")
    c.add_argument("session_folder", type=Path)
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("--notify", action="store_true",
                   help="send the notifications the daemon would (needs the notify secrets)")
    a = sub.add_parser("attach", parents=[common],
                       help="attach (or replace) a finished session's suite2p results now")
    a.add_argument("session_folder", type=Path, help="the folder holding the session's TIFFs")
    a.add_argument("--wait", type=float, default=3600.0,
                   help="seconds to wait for a running daemon to do it (default 3600)")
    a.add_argument("--notify", action="store_true",
                   help="send the notifications the daemon would (needs the notify secrets)")
    pr = sub.add_parser("process", parents=[common],
                        help="run suite2p on a finished session now (suite2p.run), or again")
    pr.add_argument("session_folder", type=Path, help="the folder holding the session's TIFFs")
    pr.add_argument("--executor", choices=["local", "slurm"],
                    help="where the job runs (default: suite2p.run.executor)")
    pr.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                    help="follow the job to its end and until its results are attached")
    lb = sub.add_parser("lab", help="every rig of a lab server in one table or page")
    lb.add_argument("configs", nargs="+", type=Path, metavar="CONFIG",
                    help="each rig's config file, or a folder of them (every *.toml)")
    lb.add_argument("--json", action="store_true", help="one JSON object per session")
    lb.add_argument("--page", type=Path, metavar="PATH",
                    help="write the lab page (HTML) here, and its JSON twin beside it")
    lb.add_argument("--watch", type=float, metavar="SECONDS",
                    help="again every SECONDS until stopped")
    q = sub.add_parser("retry", parents=[common],
                       help="lift a session's quarantine (after fixing the cause or upgrading)")
    q.add_argument("session", help="SUBJECT/SESSION, or SESSION when it is unique")
    rp = sub.add_parser("repack", parents=[common],
                        help="rewrite a finished NWB file with filters every reader has")
    rp.add_argument("target", help="an NWB file, or SUBJECT/SESSION")
    s = sub.add_parser("status", parents=[common], help="where every session stands")
    s.add_argument("session", nargs="?", help="show one session's full history")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    k = sub.add_parser("check-config", parents=[common],
                       help="validate a configuration file and the DANDI metadata")
    k.add_argument("path", nargs="?", type=Path, help="config file (default: --config)")
    d = sub.add_parser("demo", parents=[common],
                       help="simulated rig feeding the daemon, ending with a finished NWB file")
    d.add_argument("--files", type=int, default=3, help="TIFF files to write (default 3)")
    d.add_argument("--frames-per-file", type=int, default=150, help="pages per TIFF (150)")
    d.add_argument("--size", type=int, default=512, help="frame size in pixels (512)")
    d.add_argument("--rate", type=float, default=30.0, help="frame rate in Hz (30)")
    d.add_argument("--idle", type=float, default=5.0, help=(
        "seconds without new TIFFs before the session counts as finished (demo only; "
        "default 5, the config's completion.session_idle_seconds is for real rigs)"))
    d.add_argument("--suite2p", action="store_true", help=(
        "then run real suite2p on the session and attach its ROIs (needs "
        "pip install 'rig2nwb[suite2p]')"))
    return p


def _load(path: Path, *, check_paths: bool = True, check_secrets: bool | None = None) -> Config:
    return load_config(path, check_paths=check_paths, check_secrets=check_secrets)


def main(argv: list[str] | None = None) -> int:
    """Run one command; every message on the terminal is printable (see layout.printable)."""
    sys.stdout = _Printable(sys.stdout)
    sys.stderr = _Printable(sys.stderr)
    args = _parser().parse_args(argv)
    if args.command == "lab":  # its configs are its arguments
        return _lab(args)
    config_path: Path | None = getattr(args, "config", None)
    if config_path is None:
        config_path = DEFAULT_CONFIG
        explicit = args.command == "check-config" and args.path is not None
        if not explicit and not DEFAULT_CONFIG.exists():
            print(f"rig2nwb: no {DEFAULT_CONFIG} in {Path.cwd()} (the folder looked in); give "
                  "the configuration with --config PATH", file=sys.stderr)
            return 2
    try:
        return _dispatch(args, config_path)
    except ConfigError as exc:
        print(f"rig2nwb: {exc}", file=sys.stderr)
        return 2
    except LedgerDamaged as exc:
        print(f"rig2nwb: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: one line here, the traceback in the log
        return _internal_error(exc)


class _Printable:
    """A text stream that shows control characters other than newline and tab as escapes: a
    name or file name from the rig (``\\x1b[2J``) cannot clear the terminal or set its title."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return int(self._stream.write("\n".join(
            "\t".join(printable(part) for part in line.split("\t"))
            for line in text.split("\n"))))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _internal_error(exc: BaseException) -> int:
    import tempfile
    import traceback

    from rig2nwb.ledger.quarantine import describe
    from rig2nwb.logs import get_logger, log_files

    files = log_files()
    if files:
        get_logger("rig2nwb.commands.cli").error("internal error", error=describe(exc), exc_info=exc)
        where = str(files[0])
    else:  # no log file configured (or logging not set up yet): the traceback gets its own
        fd, where = tempfile.mkstemp(prefix="rig2nwb-error-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("".join(traceback.format_exception(exc)))
    print(f"rig2nwb: internal error: {describe(exc)}; the traceback is in {where}. Please "
          "report it with that file.", file=sys.stderr)
    return 1


def _dispatch(args: argparse.Namespace, config_path: Path) -> int:
    cmd = args.command
    if cmd == "check-config":
        path = args.path or config_path
        cfg = _load(path)
        print(f"{path}: OK (rig {cfg.rig.name!r}, watching {cfg.rig.root}, "
              f"writing to {cfg.output.folder})")
        from rig2nwb.config.loading import config_warnings

        for warning in config_warnings(cfg):
            print(f"warning: {warning}")
        from rig2nwb.rig.sidecars import readiness_report

        # 1: the config is valid (the daemon runs) but NWB/DANDI metadata is missing or a
        # rig2nwb.toml sidecar is invalid.
        lines, n_problems = readiness_report(cfg)
        print("\n".join(lines))
        return 1 if n_problems else 0
    if cmd == "status":
        from rig2nwb.outputs.status import collect, history, render_json, render_table, rig_problems

        cfg = _load(config_path, check_paths=False)
        _check_ledger_readonly(cfg)
        if not args.json and not cfg.rig.root.is_dir():
            print(f"rig2nwb: warning: rig.root {cfg.rig.root} does not exist or is not "
                  "reachable (not mounted?); nothing new can be converted", file=sys.stderr)
        if args.session:
            record = history(cfg, args.session)
            if record is None:
                print(f"rig2nwb: no session {args.session!r} in the ledger", file=sys.stderr)
                return 1
            print(render_json([record]) if args.json else _history_text(record, cfg.tz))
            return 0
        rows = collect(cfg)
        print(render_json(rows) if args.json else render_table(rows, rig_problems(cfg), cfg.tz))
        return 0
    if cmd == "demo":
        return _demo(args, config_path)
    if cmd == "repack":
        from rig2nwb.commands.repack import repack_command

        cfg = _load(config_path, check_paths=False)
        setup_from_config(cfg, one_shot=True)
        ok, message = repack_command(cfg, args.target)
        print(("" if ok else "rig2nwb: ") + message, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    if cmd == "retry":
        from rig2nwb.commands.retry import retry

        cfg = _load(config_path, check_paths=False)
        ok, message = retry(cfg, args.session)
        print(("" if ok else "rig2nwb: ") + message, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    # Only what sends notifications needs their secrets in its environment.
    cfg = _load(config_path, check_secrets=cmd == "run" or bool(getattr(args, "notify", False)))
    if cmd == "run" and not args.worker:
        from rig2nwb.logs import setup_logging
        from rig2nwb.service.supervisor import supervise

        # The supervisor logs to the terminal/journal only: the worker owns the log file.
        setup_logging(level=cfg.logging.level, fmt=cfg.logging.format, rig=cfg.rig.name,
                      tz=cfg.tz)
        worker = [sys.executable, "-m", "rig2nwb", "run", "--worker", "--config",
                  str(config_path.resolve())]
        return supervise(worker)
    # One-shot commands show log lines on the terminal, but tracebacks only go to the log file.
    setup_from_config(cfg, one_shot=cmd != "run")
    if cmd == "run":
        from rig2nwb.errors import AlreadyRunning, WriterPoisoned
        from rig2nwb.service.loop import Service
        from rig2nwb.service.priority import lower_priority
        from rig2nwb.service.supervisor import (
            ALREADY_RUNNING_CODE,
            LEDGER_DAMAGED_CODE,
            RESTART_CODE,
            die_with_supervisor,
        )

        lower_priority(cfg.service.nice)  # before any thread exists (see its docstring)
        die_with_supervisor()
        service = Service(cfg)
        service.install_signal_handlers()
        try:
            return service.run()
        except AlreadyRunning as exc:
            print(f"rig2nwb: {exc}", file=sys.stderr)
            return ALREADY_RUNNING_CODE
        except LedgerDamaged as exc:
            service.log.error("ledger damaged; not starting", stage="service", error=str(exc))
            print(f"rig2nwb: {exc}", file=sys.stderr)
            return LEDGER_DAMAGED_CODE
        except WriterPoisoned:
            _exit_now(RESTART_CODE)
    if cmd == "convert":
        from rig2nwb.commands.convert import convert
        from rig2nwb.errors import AlreadyRunning, WriterPoisoned

        try:
            result = convert(cfg, args.session_folder, progress=False if args.no_progress else None,
                             notify=args.notify)
        except (AlreadyRunning, UsageError) as exc:
            print(f"rig2nwb: {exc}", file=sys.stderr)
            return 1
        except WriterPoisoned as exc:
            print(f"rig2nwb: incomplete: writing the NWB file failed ({exc}); what was committed "
                  "is kept, run convert again once the problem is fixed", file=sys.stderr)
            _exit_now(1)
        print(("done: " if result.ok else "rig2nwb: ") + result.message,
              file=sys.stdout if result.ok else sys.stderr)
        return 0 if result.ok else 1
    if cmd == "attach":
        from rig2nwb.commands.attach import attach

        try:
            res = attach(cfg, args.session_folder, wait_seconds=args.wait, notify=args.notify)
        except UsageError as exc:
            print(f"rig2nwb: {exc}", file=sys.stderr)
            return 1
        print(("attached: " if res.ok else "rig2nwb: ") + res.message,
              file=sys.stdout if res.ok else sys.stderr)
        return 0 if res.ok else 1
    if cmd == "process":
        from rig2nwb.commands.process import process

        try:
            pres = process(cfg, args.session_folder, executor=args.executor,
                           wait_seconds=args.wait)
        except UsageError as exc:
            print(f"rig2nwb: {exc}", file=sys.stderr)
            return 1
        print(("ok: " if pres.ok else "rig2nwb: ") + pres.message,
              file=sys.stdout if pres.ok else sys.stderr)
        return 0 if pres.ok else 1
    raise AssertionError(cmd)  # pragma: no cover


def _lab(args: argparse.Namespace) -> int:
    from rig2nwb.commands.lab import lab

    try:
        return lab(args.configs, as_json=args.json, page=args.page, watch=args.watch)
    except UsageError as exc:
        print(f"rig2nwb: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence, as for every command
        return _internal_error(exc)


def _check_ledger_readonly(cfg: Config) -> None:
    """``status`` reports a ledger that fails SQLite's integrity_check instead of showing it."""
    from rig2nwb.config.paths import ledger_path
    from rig2nwb.ledger.store import Ledger

    path = ledger_path(cfg)
    if not path.exists():
        return
    ledger = Ledger(path, readonly=True)
    try:
        ledger.verify()
    finally:
        ledger.close()


def _exit_now(code: int) -> NoReturn:
    """Leave without Python's cleanup: it would close an HDF5 handle whose writes failed, which
    crashes the interpreter. Logs are flushed first; the ledger is already committed."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _demo(args: argparse.Namespace, config_path: Path) -> int:
    from rig2nwb.commands.demo import DemoOptions, run_demo
    from rig2nwb.config.loading import validate_config
    from rig2nwb.errors import AlreadyRunning

    # The demo creates the folders it writes to, so they need not exist yet.
    cfg = _load(config_path, check_paths=False)
    for folder in (cfg.rig.root, cfg.output.folder, cfg.state.folder):
        folder.mkdir(parents=True, exist_ok=True)
    raw = cfg.model_dump(mode="json")
    raw["completion"]["session_idle_seconds"] = args.idle
    cfg = validate_config(raw, base=Path.cwd(), source=str(config_path))
    setup_from_config(cfg, one_shot=True)
    opts = DemoOptions(files=args.files, frames_per_file=args.frames_per_file, size=args.size,
                       rate=args.rate, suite2p=args.suite2p)
    from rig2nwb.errors import WriterPoisoned

    try:
        return run_demo(cfg, opts)
    except (AlreadyRunning, UsageError) as exc:
        print(f"rig2nwb: {exc}", file=sys.stderr)
        return 1
    except WriterPoisoned as exc:
        print(f"rig2nwb demo: writing the NWB file failed ({exc}); see the log", file=sys.stderr)
        _exit_now(1)


def _history_text(record: dict[str, object], tz: tzinfo | None = None) -> str:
    from rig2nwb.outputs.status import local_time, zone_line

    unit = "TIFF pages" if len(record.get("series") or {}) > 1 else "frames"  # type: ignore[arg-type]
    lines = [f"{record['subject']}/{record['session']}: {record['state']}, "
             f"{record['frames']} {unit} -> {record['nwb_path']}",
             f"session start {record['start_time']} (from {record['start_source']})",
             f"timestamps: {record['timestamps']}"]
    if record.get("layout"):
        lines.append(f"layout: {record['layout']}")
    for name, n in (record.get("series") or {}).items():  # type: ignore[attr-defined]
        lines.append(f"  {name}: {n} frames")
    if record.get("validation"):
        lines.append(f"check: {record['validation']}")
        lines += [f"  {m}" for m in record.get("validation_messages") or []]  # type: ignore[attr-defined]
        from rig2nwb.nwb.filters import describe as plugins_line

        lines.append("opens without filter plugins: " + plugins_line(
            record.get("plugin_datasets")))  # type: ignore[arg-type]
    lines.append("files:")
    for f in record["files"]:  # type: ignore[attr-defined]
        lines.append(f"  {f['state']:<12} {f['frames'] or '':>6} frames  {f['path']}"
                     + (f"  ({f['error']})" if f["error"] else ""))
    lines.append("problems:")
    for p in record["problems"] or [{"message": "none", "active": False, "since": ""}]:  # type: ignore[attr-defined]
        flag = ("WARNING " if p.get("severity") == "warning" else "ACTIVE  ") if p["active"] else " " * 8
        lines.append(f"  {flag}{local_time(p['since'], tz)} {p['message']}")
    from rig2nwb.outputs.status import timing_lines

    lines += timing_lines(record, tz)
    for job in record.get("jobs") or []:  # type: ignore[attr-defined]
        lines.append(f"suite2p job (attempt {job['attempt']}, {job['executor']} "
                     f"{job['job_id'] or '-'}): {job['state']}"
                     + (f", exit status {job['exit_code']}" if job["exit_code"] is not None else "")
                     + (f" ({job['detail']})" if job["detail"] else "") + f"  log: {job['log']}")
    if record.get("job_log_tail"):
        lines.append("latest suite2p job's log, last lines:")
        lines += [f"  | {line}" for line in record["job_log_tail"]]  # type: ignore[attr-defined]
    lines.append("history:")
    for e in record["events"]:  # type: ignore[attr-defined]
        lines.append(f"  {local_time(e['at'], tz)} [{e['stage']}] {e['message']}")
    lines.append(zone_line(tz, str(tz)))
    return "\n".join(lines)
