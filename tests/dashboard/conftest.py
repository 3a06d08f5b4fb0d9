"""Dashboard fixtures: a seeded SQLite history and an AppTest factory pointed at it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from streamlit.testing.v1 import AppTest

from storage.seed import SeedConfig, SeedTruth, seed_history

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
SEED = SeedConfig(results=3000, images=30)


def seed_file(path: Path, cfg: SeedConfig = SEED) -> tuple[str, SeedTruth]:
    url = f"sqlite:///{path.as_posix()}"
    engine = create_engine(url)
    truth = seed_history(engine, cfg)
    engine.dispose()
    return url, truth


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory) -> tuple[str, SeedTruth]:
    """A read-only seeded history shared by a module's tests (pages must not write to it)."""
    return seed_file(tmp_path_factory.mktemp("dash") / "seed.sqlite")


@pytest.fixture()
def make_app(monkeypatch, tmp_path) -> Callable[..., AppTest]:
    """``make_app(db_url)`` -> an AppTest of the whole app, run once, time range "All time"."""

    def make(db_url: str, password: str | None = None, all_time: bool = True) -> AppTest:
        monkeypatch.setenv("LINEINSPECT_DB_URL", db_url)
        monkeypatch.setenv("LINEINSPECT_CACHE_URL", "memory://")
        monkeypatch.setenv("LINEINSPECT_ENGINE_URL", "local://auto")
        monkeypatch.setenv("LINEINSPECT_HOME", str(tmp_path))
        if password is None:
            monkeypatch.delenv("LINEINSPECT_DASHBOARD_PASSWORD", raising=False)
        else:
            monkeypatch.setenv("LINEINSPECT_DASHBOARD_PASSWORD", password)
        at = AppTest.from_file(str(APP), default_timeout=60).run()
        if all_time and password is None:
            at.sidebar.selectbox(key="range").set_value("All time").run()
        return at

    return make
