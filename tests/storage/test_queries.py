"""storage.queries against a seeded history, checked with numbers computed in numpy from the
seed's own arrays (SQLite always; PostgreSQL as an integration test)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import Engine, create_engine, delete, literal, select

from storage import queries as q
from storage.models import Base, ModelVersion
from storage.queries import Filters, floor_int
from storage.seed import SeedConfig, SeedTruth, seed_history
from tests.dbtools import throwaway_database

CFG = SeedConfig(results=3000, images=40)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def seeded(request, tmp_path_factory) -> Iterator[tuple[Engine, SeedTruth]]:
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path_factory.mktemp('q') / 'seed.sqlite'}")
        yield engine, seed_history(engine, CFG)
        engine.dispose()
        return
    postgres_url = request.getfixturevalue("postgres_url")
    with throwaway_database(postgres_url, "li_dash") as url:
        engine = create_engine(url)
        try:
            yield engine, seed_history(engine, CFG)
        finally:
            engine.dispose()


def _window(t: SeedTruth) -> tuple[float, float]:
    lo, hi = float(t.captured_at.min()), float(t.captured_at.max())
    return lo + (hi - lo) * 0.3, lo + (hi - lo) * 0.7


def test_summary_all_and_filtered(seeded) -> None:
    engine, t = seeded
    start, end = _window(t)
    pid = t.product_ids["magnetic_tile"]
    with engine.connect() as conn:
        s = q.summary(conn, Filters())
        assert (s.inspected, s.defects, s.false_alarms) == (t.captured_at.size, int(t.defect.sum()), int(t.false_alarm.sum()))
        assert s.defect_rate == pytest.approx(t.defect.mean())
        assert s.first_at == pytest.approx(t.captured_at.min()) and s.last_at == pytest.approx(t.captured_at.max())
        f = Filters(start=start, end=end, product_ids=(pid,), line_ids=(t.line_ids["line-2"],))
        s2 = q.summary(conn, f)
    sel = (t.captured_at >= start) & (t.captured_at < end) & (t.product == pid) & (t.line == t.line_ids["line-2"])
    assert 0 < s2.inspected < s.inspected
    assert (s2.inspected, s2.defects, s2.false_alarms) == (int(sel.sum()), int((sel & t.defect).sum()),
                                                           int((sel & t.false_alarm).sum()))


def test_summary_of_an_empty_range_is_zero(seeded) -> None:
    engine, t = seeded
    with engine.connect() as conn:
        s = q.summary(conn, Filters(start=float(t.captured_at.max()) + 10, end=float(t.captured_at.max()) + 20))
    assert (s.inspected, s.defects, s.defect_rate, s.first_at) == (0, 0, 0.0, None)


@pytest.mark.parametrize("by", ["product", "line", "camera"])
def test_breakdown_matches_numpy(seeded, by: str) -> None:
    engine, t = seeded
    ids = {"product": (t.product, t.product_ids), "line": (t.line, t.line_ids), "camera": (t.camera, t.camera_ids)}[by]
    col, names = ids
    with engine.connect() as conn:
        rows = q.breakdown(conn, Filters(), by)
    assert [r["name"] for r in rows] == sorted(names)
    for r in rows:
        sel = col == names[r["name"]]
        assert r["id"] == names[r["name"]]
        assert r["inspected"] == int(sel.sum())
        assert r["defects"] == int((sel & t.defect).sum())
        assert r["false_alarms"] == int((sel & t.false_alarm).sum())
        assert r["mean_score"] == pytest.approx(float(t.score[sel].mean()))


def test_breakdown_rejects_unknown_grouping(seeded) -> None:
    engine, _ = seeded
    with engine.connect() as conn, pytest.raises(ValueError, match="breakdown by"):
        q.breakdown(conn, Filters(), "shift")  # type: ignore[arg-type]


@pytest.mark.parametrize("bucket_s,origin", [(60.0, 0.0), (3600.0, 0.0), (8 * 3600.0, 6 * 3600.0)])
def test_trend_buckets_match_numpy(seeded, bucket_s: float, origin: float) -> None:
    engine, t = seeded
    with engine.connect() as conn:
        rows = q.trend(conn, Filters(), bucket_s, origin)
    b = np.floor((t.captured_at - origin) / bucket_s).astype(np.int64)
    keys = np.unique(b)
    assert [r["start"] for r in rows] == pytest.approx([k * bucket_s + origin for k in keys])
    assert [r["inspected"] for r in rows] == [int((b == k).sum()) for k in keys]
    assert [r["defects"] for r in rows] == [int(((b == k) & t.defect).sum()) for k in keys]
    assert sum(r["false_alarms"] for r in rows) == int(t.false_alarm.sum())


def test_trend_rejects_bad_bucket(seeded) -> None:
    engine, _ = seeded
    with engine.connect() as conn:
        with pytest.raises(ValueError, match="bucket_s"):
            q.trend(conn, Filters(), 0)
        with pytest.raises(ValueError, match="finite"):
            q.trend(conn, Filters(), 60, origin=float("nan"))


def test_floor_int_is_a_true_floor(seeded) -> None:
    engine, _ = seeded
    with engine.connect() as conn:
        got = [conn.execute(select(floor_int(literal(x)))).scalar_one() for x in (-2.5, -2.0, -0.1, 0.0, 0.9, 3.0, 7.99)]
    assert got == [-3, -2, -1, 0, 0, 3, 7]


def test_score_histogram_matches_numpy(seeded) -> None:
    engine, t = seeded
    width = 0.05
    with engine.connect() as conn:
        rows = q.score_histogram(conn, Filters(), width)
    assert sum(r["count"] for r in rows) == t.score.size
    for pid in t.product_ids.values():
        sel = t.product == pid
        bins = np.floor(t.score[sel] / width).astype(np.int64)
        mine = [r for r in rows if r["product_id"] == pid]
        keys = np.unique(bins)
        assert [round(r["bin_start"] / width) for r in mine] == keys.tolist()
        assert [r["count"] for r in mine] == [int((bins == k).sum()) for k in keys]
        assert [r["defects"] for r in mine] == [int(((bins == k) & t.defect[sel]).sum()) for k in keys]
    with engine.connect() as conn, pytest.raises(ValueError, match="bin_width"):
        q.score_histogram(conn, Filters(), -1)


def test_current_thresholds_prefer_the_active_model(seeded) -> None:
    engine, t = seeded
    with engine.connect() as conn:
        thr = q.current_thresholds(conn)
    assert {pid: v["threshold"] for pid, v in thr.items()} == pytest.approx(
        {t.product_ids[p]: v for p, v in t.thresholds.items()})
    assert {v["model_version"] for v in thr.values()} == {"v2"}


def test_current_thresholds_fall_back_to_the_newest_result(tmp_path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'fb.sqlite'}")
    t = seed_history(engine, SeedConfig(results=400, images=0))
    with engine.begin() as conn:
        conn.execute(delete(ModelVersion.__table__))
    with engine.connect() as conn:
        thr = q.current_thresholds(conn)
    for pid in t.product_ids.values():
        newest = int(np.flatnonzero(t.product == pid)[np.argmax(t.captured_at[t.product == pid])])
        assert thr[pid]["source"] == "latest result"
        assert thr[pid]["threshold"] == pytest.approx(t.threshold[newest])


def test_latest_anomalies_newest_first_and_false_alarms_optional(seeded) -> None:
    engine, t = seeded
    with engine.connect() as conn:
        rows = q.latest_anomalies(conn, Filters(), limit=10)
        with_fa = q.latest_anomalies(conn, Filters(), limit=500, include_false_alarms=True)
    assert len(rows) == 10
    times = [r["captured_at"] for r in rows]
    assert times == sorted(times, reverse=True)
    newest_defects = np.sort(t.captured_at[t.defect])[::-1][:10]
    assert times == pytest.approx(newest_defects.tolist())
    assert all(not r["false_alarm"] and r["score"] > r["threshold"] for r in rows)
    assert all(r["has_frame"] and r["has_heat"] for r in rows[:5])  # the seed stores images for the newest flagged
    assert sum(r["false_alarm"] for r in with_fa) == int(t.false_alarm.sum())
    assert len(with_fa) == int(t.flagged.sum())
    with engine.connect() as conn, pytest.raises(ValueError):
        q.latest_anomalies(conn, Filters(), limit=0)


def test_anomaly_images_and_unknown_id(seeded) -> None:
    engine, t = seeded
    with engine.connect() as conn:
        imgs = q.anomaly_images(conn, t.image_result_ids[0])
        assert imgs["frame"][:4] == b"\x89PNG" and imgs["mask_png"][:4] == b"\x89PNG" and imgs["encoding"] == "png"
        with pytest.raises(LookupError):
            q.anomaly_images(conn, 10**9)


def test_recent_defect_masks_are_bounded_and_exclude_false_alarms(seeded) -> None:
    engine, t = seeded
    with engine.connect() as conn:
        for pid in t.product_ids.values():
            ids = [i for i in t.image_result_ids]
            got_all = q.recent_defect_masks(conn, pid, Filters(), limit=1000)
            got_two = q.recent_defect_masks(conn, pid, Filters(), limit=2)
            # result ids follow insertion order in the seed, so map them back to the arrays
            idx = np.array(ids) - 1
            expected = int(((t.product[idx] == pid) & t.defect[idx]).sum())
            assert len(got_all) == expected
            assert len(got_two) == min(2, expected)
            assert all(m[:4] == b"\x89PNG" for m in got_all)


def test_specimens(seeded) -> None:
    engine, t = seeded
    with engine.connect() as conn:
        summ = q.specimen_summary(conn, Filters())
        recent = q.recent_specimens(conn, Filters(), limit=5)
        frames = q.specimen_frames(conn, recent[0]["product_id"], recent[0]["specimen_id"])
    assert sum(r["specimens"] for r in summ) == t.specimens
    assert sum(r["incomplete"] for r in summ) == t.incomplete_specimens
    assert sum(r["defects"] for r in summ) == t.specimen_defects
    assert [r["decided_at"] for r in recent] == sorted((r["decided_at"] for r in recent), reverse=True)
    assert len(frames) == recent[0]["received_views"]
    assert max(f["score"] for f in frames) == pytest.approx(recent[0]["score"])  # "max" fusion


def test_consumer_health_and_series(seeded) -> None:
    engine, t = seeded
    with engine.connect() as conn:
        ch = q.consumer_health(conn)
        series = q.consumer_series(conn, 3600.0)
    assert [c["consumer"] for c in ch] == ["consumer-1", "consumer-2"]
    assert sum(c["frames"] for c in ch) == t.consumer_frames
    for c in ch:
        assert c["seconds"] == pytest.approx(t.consumer_seconds)
        assert c["fps"] == pytest.approx(c["frames"] / c["seconds"])
        assert 3 <= c["mean_batch"] <= 8 and c["engine_ok"]
    assert sum(s["fps"] * 3600.0 for s in series) == pytest.approx(t.consumer_frames)


def test_model_versions_and_entities(seeded) -> None:
    engine, t = seeded
    pid = t.product_ids["tire"]
    with engine.connect() as conn:
        mv = q.model_versions(conn, (pid,))
        assert [m["product"] for m in q.model_versions(conn)].count("tire") == 3
        assert [p["name"] for p in q.products(conn)] == sorted(t.product_ids)
        assert {c["name"] for c in q.cameras(conn)} == set(t.camera_ids)
        assert {ln["name"] for ln in q.lines(conn)} == set(t.line_ids)
        lo, hi = q.time_bounds(conn)
    assert [m["status"] for m in mv] == ["candidate", "active", "retired"]
    assert mv[1]["threshold"] == pytest.approx(t.thresholds["tire"])
    assert (lo, hi) == pytest.approx((t.captured_at.min(), t.captured_at.max()))


def test_filters_reject_reversed_range() -> None:
    with pytest.raises(ValueError, match="ends before"):
        Filters(start=10.0, end=5.0)


def test_queries_on_an_empty_database(tmp_path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.sqlite'}")
    Base.metadata.create_all(engine)
    with engine.connect() as conn:
        assert q.summary(conn, Filters()).inspected == 0
        assert q.trend(conn, Filters(), 60) == [] and q.breakdown(conn, Filters(), "line") == []
        assert q.time_bounds(conn) == (None, None) and q.consumer_health(conn) == []
        assert q.current_thresholds(conn) == {} and q.specimen_summary(conn, Filters()) == []


def test_missing_tables_names_what_a_never_migrated_database_lacks(tmp_path) -> None:
    empty = create_engine(f"sqlite:///{tmp_path / 'empty.sqlite'}")
    assert q.missing_tables(empty) == sorted(Base.metadata.tables)
    full = create_engine(f"sqlite:///{tmp_path / 'full.sqlite'}")
    Base.metadata.create_all(full)
    assert q.missing_tables(full) == []
