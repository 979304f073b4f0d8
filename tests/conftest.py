"""pytest's hooks (--run-slow, --crash-trials, --figures; the slow marker) and the fixtures every
folder of tests uses. The helpers themselves are in rig2nwb.testing.

Expected frames always come from the test's own data (the arrays it wrote, or tifffile reading
the TIFF back), never from rig2nwb's code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hdf5plugin  # noqa: F401  (the Blosc filter, for every test that reads files with h5py)
import pytest

from rig2nwb.testing.figures import ENV as FIGURES_ENV
from rig2nwb.testing.labs import Lab


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run long crash-fuzz/soak tests")
    parser.addoption("--run-suite2p", action="store_true",
                     help="install (once) and run real suite2p in the job tests; "
                          "RIG2NWB_SUITE2P_PYTHON names a Python that has it already")
    parser.addoption("--crash-trials", type=int, default=None,
                     help="SIGKILLs in each crash test (default: 10 single-plane, 8 multi-plane)")
    parser.addoption("--figures", default=None,
                     help="append the fault/bad-input/security figures to this JSON-lines file "
                          "(rig2nwb/testing/figures.py; benchmarks/selftest.py reads it)")


def pytest_configure(config: pytest.Config) -> None:
    figures = config.getoption("--figures", None)
    if figures:
        os.environ[FIGURES_ENV] = str(Path(figures).resolve())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    yield Lab(tmp_path)


@pytest.fixture
def make_lab(tmp_path: Path) -> Callable[..., Lab]:
    counter = iter(range(1000))

    def make(**overrides: dict[str, Any]) -> Lab:
        return Lab(tmp_path / f"lab{next(counter)}", **overrides)

    return make
