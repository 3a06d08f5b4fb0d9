"""Storage fixtures: a fresh database per test on SQLite and (integration) PostgreSQL, a Redis key prefix."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from storage.records import ResultRow


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
    name = f"li_test_{uuid.uuid4().hex[:12]}"
    assert re.fullmatch(r"[a-z0-9_]+", name)
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    quoted = admin.dialect.identifier_preparer.quote(name)
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {quoted}"))
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request) -> str:
    """The same test on SQLite and on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
