"""Shared fixtures.

* ``real_data``: the MVTec-layout folder from ``LINEINSPECT_DATA`` (default ``../shared/data``).
  Missing data is an error on CI (``CI`` set) and a skip with the reason elsewhere.
* ``services``: URLs of the real services started by ``deploy/services.sh`` (``LINEINSPECT_TEST_*``
  environment, exported by ``scripts/test``). Integration tests skip with a reason when they are
  not running, except on CI, where that is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ON_CI = bool(os.environ.get("CI"))


def _data_root() -> Path:
    return Path(os.environ.get("LINEINSPECT_DATA", REPO.parent / "shared" / "data")).resolve()


def real_categories(root: Path | None = None) -> list[tuple[str, str]]:
    """[(dataset, category)] under the data root, e.g. ("mvtec_3d_ad", "tire")."""
    root = root or _data_root()
    out = []
    if root.is_dir():
        for ds in sorted(p for p in root.iterdir() if p.is_dir()):
            for cat in sorted(p for p in ds.iterdir() if (p / "train" / "good").is_dir()):
                out.append((ds.name, cat.name))
    return out


@pytest.fixture(scope="session")
def real_data() -> Path:
    root = _data_root()
    if not real_categories(root):
        msg = f"real data not found at {root} (set LINEINSPECT_DATA to an MVTec-layout folder)"
        if ON_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return root


def _service(name: str) -> str:
    url = os.environ.get(f"LINEINSPECT_TEST_{name.upper()}_URL")
    if not url:
        msg = f"{name} is not running: start the services with `bash deploy/services.sh start` or run `bash scripts/test`"
        if ON_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return url


@pytest.fixture(scope="session")
def kafka_url() -> str:
    return _service("kafka")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return _service("postgres")


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _service("redis")
