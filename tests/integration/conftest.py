"""Integration fixtures: unique Kafka topics / group, a throw-away PostgreSQL database, a Redis
key prefix per test, and a small set of real frames. Services come from ``deploy/services.sh``
(``kafka_url``, ``postgres_url``, ``redis_url`` in tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lineinspect.settings import Settings
from tests.dbtools import throwaway_database


@pytest.fixture()
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture()
def pg_test_url(postgres_url: str, run_id: str) -> Iterator[str]:
    """A fresh database on the test server for this test, dropped afterwards."""
    with throwaway_database(postgres_url, "li_it") as url:
        yield url


@pytest.fixture()
def pipeline_settings(tmp_path: Path, kafka_url: str, pg_test_url: str, redis_url: str, run_id: str) -> Settings:
    """Settings naming the real services, with topics and a consumer group no other test uses."""
    return Settings(home=tmp_path, bus_url=kafka_url, db_url=pg_test_url, cache_url=redis_url,
                    topic_frames=f"li-it-{run_id}.frames", topic_dlq=f"li-it-{run_id}.dlq", topic_partitions=4,
                    consumer_group=f"li-it-{run_id}", batch_max_records=8, batch_max_wait_ms=100)


def real_test_images(root: Path, per_category: int) -> list[tuple[str, Path]]:
    """[(category, path)]: the first ``per_category`` test images of every category (good and defective)."""
    out = []
    for ds in sorted(p for p in root.iterdir() if p.is_dir()):
        for cat in sorted(p for p in ds.iterdir() if (p / "test").is_dir()):
            paths = sorted(p for p in (cat / "test").rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
            # interleave defect types so each category contributes good and defective frames
            by_dir: dict[Path, list[Path]] = {}
            for p in paths:
                by_dir.setdefault(p.parent, []).append(p)
            picked: list[Path] = []
            while len(picked) < per_category and any(by_dir.values()):
                for d in sorted(by_dir):
                    if by_dir[d] and len(picked) < per_category:
                        picked.append(by_dir[d].pop(0))
            out.extend((cat.name, p) for p in picked)
    return out
from tests.integration.triton_fixtures import real_model, triton_server  # noqa: E402,F401 - Triton session fixtures (triton_fixtures.py)
