"""Fault injection for tests: loaded by every Python process that has this folder on PYTHONPATH
(the daemon's supervisor, its worker, the check child), so production code carries no hooks.

Environment:
  RIG2NWB_FAULT          ``module:Qual.name`` of the function to break, e.g.
                         ``rig2nwb.engine.finalizing:Finalizer.finalize``
  RIG2NWB_FAULT_MODE     ``raise`` (InjectedFault, a plain Exception: not one of the OSError /
                         RuntimeError types that h5py's write failures come as), ``kill``
                         (SIGKILL itself), ``kill-after`` (SIGKILL right after the function
                         returned: its effect happened, nothing after it did), ``segv``, or
                         ``hang`` (sleeps for an hour: a read that never returns)
  RIG2NWB_FAULT_MATCH    only when the repr of an argument contains this text (one session)
  RIG2NWB_FAULT_FILE     only while this file exists (a test lifts the fault by deleting it)

The function is replaced right after its module is first imported (an import hook), so the
process starts exactly as it would without the fault.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import os
import signal
import sys
from typing import Any

TARGET = os.environ.get("RIG2NWB_FAULT", "")


class InjectedFault(Exception):
    """What ``raise`` mode raises: an error nobody foresaw."""


def _active(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    flag = os.environ.get("RIG2NWB_FAULT_FILE")
    if flag and not os.path.exists(flag):
        return False
    match = os.environ.get("RIG2NWB_FAULT_MATCH")
    if match:
        return any(match in repr(a) for a in (*args, *kwargs.values()))
    return True


def _strike(where: str) -> None:
    mode = os.environ.get("RIG2NWB_FAULT_MODE", "raise")
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "hang":
        import time

        time.sleep(3600)
    if mode == "segv":
        import ctypes

        ctypes.string_at(0)  # a real segmentation fault, as a broken C library would cause
    raise InjectedFault(f"injected fault in {where}")


def _patch(module: Any, qualname: str) -> None:
    owner: Any = module
    parts = qualname.split(".")
    for part in parts[:-1]:
        owner = getattr(owner, part)
    original = getattr(owner, parts[-1])
    if isinstance(original, staticmethod):
        original = original.__func__

    @functools.wraps(original)
    def broken(*args: Any, **kwargs: Any) -> Any:
        if _active(args, kwargs):
            if os.environ.get("RIG2NWB_FAULT_MODE") == "kill-after":
                original(*args, **kwargs)
                os.kill(os.getpid(), signal.SIGKILL)
            _strike(qualname)
        return original(*args, **kwargs)

    setattr(owner, parts[-1], broken)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, module: str, qualname: str) -> None:
        self.module, self.qualname = module, qualname

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != self.module:
            return None
        sys.meta_path.remove(self)  # find the real spec, once
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module
        qualname = self.qualname

        def patched_exec(module: Any) -> None:
            exec_module(module)
            _patch(module, qualname)

        loader.exec_module = patched_exec  # type: ignore[method-assign]
        return spec


if TARGET:
    _module, _, _qualname = TARGET.partition(":")
    sys.meta_path.insert(0, _Finder(_module, _qualname))
