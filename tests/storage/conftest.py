"""Storage fixtures: a fresh database per test on SQLite and (integration) PostgreSQL, a Redis key prefix."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from storage.records import ResultRow
from tests.dbtools import throwaway_database


def make_row(frame_id: int, verdict: str = "ok", *, product: str = "bolt", line: str = "L1", camera: str = "cam1",
             captured_at: float | None = None, **kw) -> ResultRow:
    """A plausible scored frame; keyword arguments override any field."""
    now = time.time()
    base = dict(product=product, line=line, camera=camera, frame_id=frame_id,
                captured_at=now - 0.25 if captured_at is None else captured_at, inferred_at=now,
                score=0.9 if verdict == "defect" else 0.1, threshold=0.5, verdict=verdict, model_version="v0001",
                engine="onnx", infer_ms=4.0, batch_size=4, width=32, height=24)
    base.update(kw)
    return ResultRow(**base)


@pytest.fixture()
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{(tmp_path / 'store.sqlite').as_posix()}"


@pytest.fixture()
def pg_url(postgres_url: str) -> Iterator[str]:
    """A throw-away database on the test server, dropped afterwards."""
    with throwaway_database(postgres_url, "li_test") as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request) -> str:
    """The same test on SQLite and on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
