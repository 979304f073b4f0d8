"""The SLURM cluster the job tests share (one per test run: it starts in seconds, but there is
no need to do it for every module)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from rig2nwb.testing.slurm import Cluster, why_not


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = why_not()
    if reason:
        pytest.skip(reason)
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    c.start()
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(c.conf)  # for the daemons and commands the tests start
    try:
        yield c
    finally:
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
        c.stop()


