"""Dashboard fixtures: a seeded SQLite history and an AppTest factory pointed at it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from streamlit.testing.v1 import AppTest

from dashboard.seed import SeedConfig, SeedTruth, seed_history

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


def seed_families(db_url: str, types: int = 3, per_frame: int = 2, seed: int = 0) -> dict[int, int]:
    """Give the seeded history's flagged frames regions of ``types`` separable kinds (each kind at its own
    place in the frame), written and grouped through the real :class:`storage.families.FamilyStore`
    path; returns {kind: number of regions}."""
    from types import SimpleNamespace

    import numpy as np
    from sqlalchemy import select

    from inference.families import Region
    from storage.families import FamilyStore
    from storage.models import Camera, FrameImage, InspectionResult

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            flagged = conn.execute(
                select(Camera.name, InspectionResult.frame_id)
                .join(Camera, Camera.id == InspectionResult.camera_id)
                .join(FrameImage, FrameImage.result_id == InspectionResult.id)
                .where(InspectionResult.verdict == "defect", InspectionResult.false_alarm.is_(False))
                .order_by(InspectionResult.id)).all()
        rng = np.random.default_rng(seed)
        centres = np.eye(120)[:types]
        places = [(0.2 + 0.6 * (k % 2), 0.25 + 0.5 * (k // 2 % 2)) for k in range(types)]
        batch, counts = [], {k: 0 for k in range(types)}
        for i, (camera, frame_id) in enumerate(flagged):
            regions = []
            for j in range(per_frame):
                k = (i + j) % types
                v = centres[k] + rng.normal(scale=0.03, size=120)
                cx, cy = places[k]
                regions.append(Region(j, cx, cy, cx - 0.08, cy - 0.08, cx + 0.08, cy + 0.08, 120,
                                      (v / np.linalg.norm(v)).astype(np.float32)))
                counts[k] += 1
            batch.append((SimpleNamespace(camera=camera, frame_id=frame_id), regions))
        FamilyStore(engine, db_url, warmup=6).add_regions(batch)
        return counts
    finally:
        engine.dispose()
