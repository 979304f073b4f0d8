"""Where things are: the repository checkout (``REPO``) and the shared fixtures (``SHARED``).

``REPO`` is the checkout this package was imported from (found by walking up to the folder that
holds ``pyproject.toml`` and ``daemon/rig2nwb``); an installed copy outside a checkout falls back
to the current folder, from where the tests are run. ``SHARED`` is ``$RIG2NWB_SHARED``, else the
``shared`` folder beside the checkout.
"""

from __future__ import annotations

import os
from pathlib import Path


def _checkout() -> Path:
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file() and (parent / "daemon" / "rig2nwb").is_dir():
            return parent
    return Path.cwd()


REPO = _checkout()
SHARED = Path(os.environ.get("RIG2NWB_SHARED", REPO.parent / "shared"))


def shared_fixture(*parts: str) -> Path:
    """A file or folder of the shared fixtures; the calling test is skipped when it is absent."""
    path = SHARED.joinpath("fixtures", *parts)
    if not path.exists():
        import pytest

        pytest.skip(f"shared fixture {path} not present (set RIG2NWB_SHARED to ../shared)")
    return path
