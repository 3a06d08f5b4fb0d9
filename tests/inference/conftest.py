"""Fixtures shared by the consumer tests (serial and pipelined)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lineinspect.settings import Settings
from storage.store import ResultStore
from tests.storage.conftest import db_url, pg_url, sqlite_url  # noqa: F401 - the SQLite/PostgreSQL fixtures


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, batch_max_records=4, batch_max_wait_ms=20, topic_frames="frames",
                    topic_dlq="frames.dlq", keep_normal_margin=0.8)


@pytest.fixture()
def store(tmp_path: Path):
    s = ResultStore.open(f"sqlite:///{tmp_path / 'r.sqlite'}")
    yield s
    s.close()
