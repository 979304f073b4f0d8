"""Checking a finished NWB file: pynwb's schema validation plus nwbinspector, in a child process.

``check_nwb(path)`` runs both in-process and returns a :class:`CheckSummary`; the daemon uses
:class:`CheckRun`, which runs ``python -m rig2nwb.commands.checkchild PATH`` in a child process at lower
priority, so a long inspection never blocks the writer thread and a crash inside HDF5, pynwb or
nwbinspector cannot take the daemon down. ``poll()`` never raises for child failures: a dead
child, garbage on stdout or a timeout all become a summary with ``failed`` set.

Facts and decisions (measured with pynwb 4.2.0, hdmf 6.2.0, nwbinspector 0.7.2):
- ``pynwb.validation.validate(path=...)`` returns a plain list of hdmf ``Error`` objects (older
  pynwb returned ``(errors, status)``; both are accepted). It validates against the namespaces
  cached in the file.
- nwbinspector runs with the DANDI configuration (``load_config("dandi")``), the one ``dandi
  validate`` uses (subject checks are CRITICAL there). ``skip_validate=True``: pynwb validation
  runs once, separately, so it is counted on its own.
- Cost is bounded by metadata, not by pixels: neither pynwb's validator nor any nwbinspector
  check reads ``TwoPhotonSeries.data`` (they use shape, dtype and compression settings);
  ``check_regular_timestamps`` reads all timestamps (8 bytes a frame), a few table checks read at
  most 200 rows. Measured (2 CPUs, local disk) on 1.07 GB = 2048 frames of 512x512 int16, 1-frame
  chunks: the whole check read 0.45 MB of the file, uncompressed and blosc-lz4 alike; 0.31 s warm
  in-process, the same as a 20-frame file; the child takes 1.1-2.0 s wall, almost all of it
  importing pynwb/nwbinspector, with a peak RSS of 115 MB for both files. So no check is skipped
  or ignored; the timeout (30 min by default) only guards against a hung child.
- Without the DANDI config ``check_data_orientation`` would be CRITICAL and fail every session
  with fewer frames than image rows or columns; with it that is a BEST_PRACTICE_VIOLATION.
- ``check_nwb`` changes the process-wide warning filters while it runs (pynwb/nwbinspector
  warnings are silenced); use it in-process only from tools and tests, the daemon uses CheckRun.
- When pynwb cannot build the file (e.g. a required link removed), nwbinspector reports one
  ERROR message "During io.read() ..." and leaves its HDF5 handle open; that case is reported as
  ``failed`` (the validation errors that explain it are still counted), and the leaked handle is
  one more reason to run the check in a child process.
- The child lowers its own priority with ``os.nice(10)`` (POSIX; no ``preexec_fn``, which is
  unsafe in a threaded parent); on Windows it is started with BELOW_NORMAL_PRIORITY_CLASS. Its
  stdout and stderr go to anonymous temporary files, so a chatty child can never fill a pipe.
- The same child draws the session's summary picture (``--picture PNG``, see summary_plot): it
  runs after finalize and after every suite2p attach, and the engine cancels it before it writes
  to the file again, so it is the one safe moment to read the file. ``--no-check`` draws the
  picture only (``output.check_files = false``); the summary then says "not checked".
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import IO, Any

from rig2nwb.core.humanize import clip
from rig2nwb.nwb.checksummary import (
    _ORDER,
    MAX_MESSAGE_CHARS,
    MAX_MESSAGES,
    CheckSummary,
    _zero_counts,
)

DEFAULT_TIMEOUT_S = 1800.0
NICE_INCREMENT = 10
EXIT_COULD_NOT_RUN = 2


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def _short_read_error(detail: str) -> str:
    """hdmf's ConstructError text embeds a dump of the whole builder tree; keep its point."""
    at = detail.rfind("Could not construct")
    if at < 0:
        return detail
    kind = detail.split(":", 1)[0] if ":" in detail[:at] else "ConstructError"
    tail = detail[at:].rstrip()
    if tail[-2:] in ("')", '")'):  # the end of the exception's args tuple
        tail = tail[:-2]
    return f"{kind.rsplit('.', 1)[-1]}: {tail}"


def exception_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _cannot_open(path: Path) -> str | None:
    """A reason when the path is not an HDF5 file h5py can open, else None."""
    import h5py

    if not path.exists():
        return f"file not found: {path}"
    if not path.is_file():
        return f"not a regular file: {path}"
    try:
        if not h5py.is_hdf5(str(path)):
            return f"not an HDF5 file: {path}"
        with h5py.File(path, "r"):
            pass
    except Exception as e:
        return f"cannot open {path} with h5py: {exception_text(e)}"
    return None


def check_nwb(path: Path) -> CheckSummary:
    """Validate ``path`` against its cached NWB schema and inspect it with nwbinspector (DANDI
    config), in this process. Never raises for problems with the file: they become ``failed``."""
    t0 = time.monotonic()
    path = Path(path)

    def elapsed() -> float:
        return round(time.monotonic() - t0, 3)

    reason = _cannot_open(path)
    if reason is not None:
        return CheckSummary.failure(reason, seconds=elapsed())

    import hdf5plugin  # noqa: F401  (registers the Blosc filters before pynwb opens the file)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # also undoes nwbinspector's global filterwarnings calls
        try:
            from nwbinspector import Importance, inspect_nwbfile, load_config
            from pynwb.validation import validate
        except Exception as e:
            return CheckSummary.failure(f"cannot import pynwb/nwbinspector: {exception_text(e)}",
                                        seconds=elapsed())

        ranked: list[tuple[int, int, str]] = []  # (order, arrival, text): a stable sort

        def add(kind: str, text: str) -> None:
            ranked.append((_ORDER[kind], len(ranked), clip(text, MAX_MESSAGE_CHARS)))

        try:
            result: Any = validate(path=str(path))
        except Exception as e:
            return CheckSummary.failure(f"pynwb validation could not run: {exception_text(e)}",
                                        seconds=elapsed())
        errors = list(result[0] if isinstance(result, tuple) else result)
        for err in errors:
            add("VALIDATION", f"VALIDATION: {err}")

        counts = _zero_counts()
        failed: str | None = None
        try:
            config = load_config("dandi")
            for msg in inspect_nwbfile(nwbfile_path=str(path), config=config, skip_validate=True):
                if msg is None:
                    continue
                importance = msg.importance
                name = str(msg.check_function_name or "?")
                if importance is Importance.ERROR:
                    counts["ERROR"] += 1
                    detail = _last_line(str(msg.message))
                    if name.startswith("During io.read()"):
                        detail = _short_read_error(detail)
                        failed = clip(f"pynwb could not read the file: {detail}", MAX_MESSAGE_CHARS)
                        add("ERROR", f"ERROR io.read: {path.name}: {detail}")
                    else:
                        add("ERROR", f"ERROR {name}: {detail}")
                    continue
                if importance.name not in counts:  # PYNWB_VALIDATION: not produced with skip_validate
                    continue
                counts[importance.name] += 1
                where = msg.location or f"{msg.object_type} '{msg.object_name}'"
                add(importance.name, f"{importance.name} {name}: {where}: {msg.message}")
        except Exception as e:
            failed = f"nwbinspector could not run: {exception_text(e)}"
            add("ERROR", f"ERROR nwbinspector: {exception_text(e)}")

    ranked.sort()
    messages = [text for _, _, text in ranked]
    if len(messages) > MAX_MESSAGES:
        rest = len(messages) - (MAX_MESSAGES - 1)
        messages = [*messages[: MAX_MESSAGES - 1], f"... and {rest} more messages"]
    return CheckSummary(validation_errors=len(errors), counts=counts, messages=messages,
                        seconds=elapsed(), failed=failed)


class CheckRun:
    """``check_nwb`` in a child process: ``start``, then ``poll`` until it returns a summary."""

    def __init__(self, path: Path, proc: subprocess.Popen[bytes], out: IO[bytes], err: IO[bytes],
                 timeout_s: float, *, check: bool = True) -> None:
        self.path = path
        self.check = check
        self.proc = proc
        self.pid = proc.pid
        self._out = out
        self._err = err
        self._timeout_s = timeout_s
        self._t0 = time.monotonic()
        self._result: CheckSummary | None = None

    @classmethod
    def start(cls, path: Path, *, picture: Path | None = None, check: bool = True,
              timeout_s: float = DEFAULT_TIMEOUT_S, rig: str = "") -> CheckRun:
        """Spawn ``python -m rig2nwb.commands.checkchild PATH``; with ``picture``, the child also writes
        the summary PNG there; ``check=False`` skips the checks (picture only). Raises OSError
        only if it cannot spawn."""
        path = Path(path)
        argv = [sys.executable, "-m", "rig2nwb.commands.checkchild", "--nice", str(NICE_INCREMENT)]
        if picture is not None:
            argv += ["--picture", str(picture)]
            if rig:
                argv += ["--rig", rig]  # the picture names its rig (a lab has several)
        if not check:
            argv.append("--no-check")
        argv.append(str(path))
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[2])  # so the child imports this same rig2nwb
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONIOENCODING", "utf-8")
        kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.BELOW_NORMAL_PRIORITY_CLASS | subprocess.CREATE_NO_WINDOW
        # Anonymous files (deleted on close, also on Windows); closed by _finish.
        out = tempfile.TemporaryFile()  # noqa: SIM115
        err = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                    close_fds=True, **kwargs)
        except BaseException:
            out.close()
            err.close()
            raise
        return cls(path, proc, out, err, timeout_s, check=check)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self._t0

    def poll(self) -> CheckSummary | None:
        """None while the child runs; then its summary, or one with ``failed`` set. Never raises."""
        if self._result is not None:
            return self._result
        try:
            rc = self.proc.poll()
            if rc is None:
                if self.seconds <= self._timeout_s:
                    return None
                self._kill()
                return self._finish(self._failure(
                    f"timed out after {self._timeout_s:g} s; check process killed"))
            return self._finish(self._collect(rc))
        except Exception as e:  # pragma: no cover - defensive: poll must never raise
            self._kill()
            return self._finish(self._failure(f"check runner error: {exception_text(e)}"))

    def wait(self, interval_s: float = 0.1) -> CheckSummary:
        """Block until ``poll`` returns a summary (for tools and tests; the daemon polls)."""
        while (result := self.poll()) is None:
            time.sleep(interval_s)
        return result

    def cancel(self) -> None:
        """Kill the child if it still runs; ``poll`` then reports the run as cancelled."""
        if self._result is None:
            self._kill()
            self._finish(CheckSummary.failure("cancelled", seconds=self.seconds))

    def _failure(self, reason: str) -> CheckSummary:
        """A child that failed: a failed check, or, when it only drew the picture, a picture
        error (nothing was checked, so nothing about the file failed)."""
        if self.check:
            return CheckSummary.failure(reason, seconds=self.seconds)
        return CheckSummary.not_checked(seconds=self.seconds, picture_error=reason)

    def _kill(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.poll() is None:
                self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)

    def _finish(self, result: CheckSummary) -> CheckSummary:
        self._result = result
        for f in (self._out, self._err):
            with contextlib.suppress(OSError):
                f.close()
        return result

    def _collect(self, rc: int) -> CheckSummary:
        self._out.seek(0)
        out = self._out.read().decode("utf-8", "replace").strip()
        summary: CheckSummary | None = None
        parse_error = "no output"
        if out:
            try:
                summary = CheckSummary.from_json(out.splitlines()[-1])
            except ValueError as e:
                parse_error = str(e)
        if summary is not None and (rc == 0 or summary.failed is not None):
            return summary
        if rc < 0:
            why = f"check process killed by signal {-rc}"
        elif rc != 0:
            why = f"check process exited with code {rc}"
        else:
            why = f"check process printed no summary ({clip(parse_error, MAX_MESSAGE_CHARS)})"
        self._err.seek(0)
        tail = _last_line(self._err.read()[-4000:].decode("utf-8", "replace"))
        if tail:
            why += f"; stderr: {clip(tail, MAX_MESSAGE_CHARS)}"
        return self._failure(why)


def plugin_list(path: Path) -> list[str] | None:
    """The file's datasets that need a filter plugin (None when the file cannot be read)."""
    try:
        import h5py

        from rig2nwb.nwb.filters import plugin_datasets

        with h5py.File(path, "r") as f:
            return plugin_datasets(f)
    except Exception:  # reported by the checks themselves
        return None
