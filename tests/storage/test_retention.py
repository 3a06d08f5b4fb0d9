from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from lineinspect.cli import main
from storage.db import current_revision
from storage.models import FrameImage, Mask
from storage.records import SpecimenDecision
from storage.retention import prune
from storage.store import ResultStore
from tests.storage.conftest import make_row

DAY = 86400.0


def _count(engine, model) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model)).scalar_one()


@pytest.fixture()
def filled(db_url):
    store = ResultStore.open(db_url)
    now = time.time()
    old = [make_row(i, "defect", captured_at=now - 40 * DAY, mask_png=b"m", frame_bytes=b"f%d" % i) for i in range(7)]
    old.append(make_row(100, captured_at=now - 40 * DAY, keep_as_normal=True, frame_bytes=b"normal"))
    new = [make_row(200 + i, "defect", captured_at=now - DAY, mask_png=b"m", frame_bytes=b"g") for i in range(3)]
    store.save_results(old + new)
    store.save_specimen(SpecimenDecision("bolt", "S-old", expected_views=1, received_views=1, score=1, threshold=0.5,
                                         verdict="defect", fusion="max", complete=True, first_seen_at=now - 40 * DAY,
                                         decided_at=now - 40 * DAY, result_ids=[1]))
    store.record_consumer_stat("c", 1, 1.0, 1.0, 1.0, 1.0, 0, 0, "onnx", True, at=now - 40 * DAY)
    yield store
    store.close()


def test_dry_run_counts_and_deletes_nothing(filled):
    r = prune(filled.db_engine, 30, dry_run=True)
    assert (r.results, r.masks, r.frame_images, r.specimens, r.consumer_stats) == (8, 7, 7, 1, 1)
    assert filled.count_results() == 11


def test_prune_deletes_old_rows_in_batches_with_their_masks(filled):
    r = prune(filled.db_engine, 30, batch_size=3)
    assert (r.results, r.masks, r.frame_images, r.specimens, r.consumer_stats) == (8, 7, 7, 1, 1)
    assert filled.count_results() == 3
    assert _count(filled.db_engine, Mask) == 3 and _count(filled.db_engine, FrameImage) == 3  # cascaded
    assert [s.data for s in filled.training_samples("bolt")] == [b"normal"]  # training data stays
    assert filled.get_result("cam1", 200)["mask_png"] == b"m"
    again = prune(filled.db_engine, 30)
    assert again.results == 0


def test_prune_rejects_bad_arguments(filled):
    with pytest.raises(ValueError):
        prune(filled.db_engine, -1)
    with pytest.raises(ValueError):
        prune(filled.db_engine, 1, batch_size=0)


def test_cli_db_upgrade_and_prune(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    monkeypatch.setenv("LINEINSPECT_DB_URL", url)
    monkeypatch.setenv("LINEINSPECT_HOME", str(tmp_path))
    assert main(["db-upgrade"]) == 0
    store = ResultStore.open(url)
    head = current_revision(store.db_engine)  # whatever migration is last (the coordinator chains them)
    assert head is not None and f"revision {head}" in capsys.readouterr().out
    store.save_results([make_row(1, captured_at=time.time() - 10 * DAY), make_row(2)])
    assert main(["prune", "--older-than-days", "5", "--dry-run"]) == 0
    assert "would delete 1 results" in capsys.readouterr().out
    assert store.count_results() == 2
    assert main(["prune", "--older-than-days", "5"]) == 0
    assert "deleted 1 results" in capsys.readouterr().out
    assert store.count_results() == 1
    store.close()
