"""Family storage round trip on SQLite and PostgreSQL: regions, warm-up, grouping, names, queries."""

from __future__ import annotations

import numpy as np
import pytest

from inference.families import Region
from storage import families as fq
from storage.families import FamilyStore, from_bytes, to_bytes
from storage.queries import Filters
from storage.store import ResultStore
from tests.storage.conftest import make_row


def _region(index: int, v: np.ndarray, cx: float = 0.5, cy: float = 0.5) -> Region:
    return Region(index, cx, cy, max(0.0, cx - 0.1), max(0.0, cy - 0.1), min(1.0, cx + 0.1), min(1.0, cy + 0.1),
                  40, (v / np.linalg.norm(v)).astype(np.float32))


def _two_types(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    centres = np.eye(64)[:2]
    ys = [i % 2 for i in range(n)]
    return [centres[y] + rng.normal(scale=0.02, size=64) for y in ys], ys


def _store(store: ResultStore, start: int, vecs: list[np.ndarray], fam: FamilyStore, **kw) -> list:
    rows = [make_row(start + i, "defect", mask_png=b"\x89PNG", **kw) for i in range(len(vecs))]
    store.save_results(rows)
    fam.add_regions([(r, [_region(0, v, cx=0.2 + 0.6 * (i % 2))]) for i, (r, v) in enumerate(zip(rows, vecs))])
    return rows


def test_embedding_bytes_round_trip():
    v = np.linspace(-1, 1, 120).astype(np.float32)
    b = to_bytes(v)
    assert len(b) == 240
    np.testing.assert_allclose(from_bytes(b), v, atol=1e-3)


def test_round_trip_warmup_grouping_and_names(db_url):
    store = ResultStore.open(db_url)
    try:
        fam = FamilyStore(store.engine, warmup=6)
        vecs, ys = _two_types(4)
        rows = _store(store, 1, vecs, fam)
        regs = fam.regions_of("cam1", 1)
        assert len(regs) == 1 and regs[0]["family_id"] is None  # warming up: stored, not grouped yet
        np.testing.assert_allclose(regs[0]["embedding"], vecs[0] / np.linalg.norm(vecs[0]), atol=1e-3)
        assert regs[0]["cx"] == pytest.approx(0.2)
        assert fam.threshold("bolt") is None

        more, ys2 = _two_types(6, seed=1)
        _store(store, 100, more, fam)
        thr = fam.threshold("bolt")
        assert thr is not None and 0.02 <= thr <= 0.6
        families = [f for f in fam.families("bolt") if f["merged_into"] is None]
        assert len(families) == 2 and sum(f["count"] for f in families) == 10
        by_type: dict[int, set] = {0: set(), 1: set()}
        for i, y in enumerate(ys):
            by_type[y].add(fam.regions_of("cam1", 1 + i)[0]["family_id"])
        for i, y in enumerate(ys2):
            by_type[y].add(fam.regions_of("cam1", 100 + i)[0]["family_id"])
        assert all(len(s) == 1 for s in by_type.values()) and by_type[0] != by_type[1]

        # redelivery writes nothing twice
        assert fam.add_regions([(rows[0], [_region(0, vecs[0])])]) == 0

        # an operator names type 0's family; new members carry the name
        fid0 = next(iter(by_type[0]))
        assert fam.set_name("bolt", fid0, "  blowhole ") == fid0
        new, _ = _two_types(1, seed=5)
        _store(store, 500, new, fam)
        got = fam.regions_of("cam1", 500)[0]["family_id"]
        assert got == fid0
        names = {f["family_id"]: f["name"] for f in fam.families("bolt")}
        assert names[got] == "blowhole"
        assert fam.set_name("bolt", fid0, "") == fid0 and fam.families("bolt")[fid0 - 1]["name"] is None

        with pytest.raises(LookupError):
            fam.set_name("bolt", 999, "x")
        with pytest.raises(ValueError):
            fam.set_name("bolt", fid0, "bad\x00name")

        # dashboard queries
        with store.engine.connect() as conn:
            par = fq.pareto(conn, Filters())
            assert sum(p["regions"] for p in par) == 11 and par[0]["regions"] >= par[-1]["regions"]
            assert {p["family_id"] for p in par} == by_type[0] | by_type[1]
            ex = fq.examples(conn, par[0]["product_id"], par[0]["family_id"], Filters(), limit=3)
            assert len(ex) == 3 and all(0 <= e["x0"] < e["x1"] <= 1 for e in ex)
            loc = fq.locations(conn, par[0]["product_id"], fid0, Filters())
            assert loc and all(x == pytest.approx(0.2) for x, _ in loc)
            tr = fq.trend(conn, Filters(), 3600.0)
            assert sum(t["regions"] for t in tr) == 11
            assert fq.pareto(conn, Filters(start=0.0, end=1.0)) == []
    finally:
        store.close()


def test_bad_regions_are_refused_and_nothing_is_written(db_url):
    store = ResultStore.open(db_url)
    try:
        fam = FamilyStore(store.engine, warmup=2)
        row = make_row(1, "defect", mask_png=b"\x89PNG")
        store.save_results([row])
        bad = Region(0, 1.5, 0.5, 0.0, 0.0, 1.0, 1.0, 10, np.ones(8, np.float32))
        with pytest.raises(ValueError):
            fam.add_regions([(row, [_region(1, np.ones(8)), bad])])
        nan = _region(0, np.ones(8))
        nan.embedding[0] = np.nan
        with pytest.raises(ValueError):
            fam.add_regions([(row, [nan])])
        assert fam.regions_of("cam1", 1) == []
        # a region whose result was never stored is skipped, not an error
        assert fam.add_regions([(make_row(77, "defect"), [_region(0, np.ones(8))])]) == 0
    finally:
        store.close()


def test_pruned_results_take_their_regions_with_them(db_url):
    import time

    from storage.retention import prune

    store = ResultStore.open(db_url)
    try:
        fam = FamilyStore(store.engine, warmup=2)
        old = make_row(1, "defect", mask_png=b"\x89PNG", captured_at=time.time() - 40 * 86400)
        new = make_row(2, "defect", mask_png=b"\x89PNG")
        store.save_results([old, new])
        fam.add_regions([(old, [_region(0, np.ones(8))]), (new, [_region(0, np.ones(8))])])
        prune(store.engine, 30)
        assert fam.regions_of("cam1", 1) == [] and len(fam.regions_of("cam1", 2)) == 1
    finally:
        store.close()
