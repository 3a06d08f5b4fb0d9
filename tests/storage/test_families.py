"""Families and regions on SQLite and PostgreSQL: upsert keeps the operator's name, Pareto counts."""

from __future__ import annotations

import numpy as np
import pytest

from inference.families import Family
from storage.families import FamilyStore, RegionRow
from storage.store import ResultStore
from tests.storage.conftest import make_row


def test_families_persist_names_stick_and_pareto_counts(db_url):
    with ResultStore.open(db_url) as store:
        ids = store.save_results([make_row(i, "defect", camera="cam1") for i in range(3)])
        fs = FamilyStore.of(store)
        fams = [Family(1, np.array([1, 0, 0], np.float32), 2), Family(2, np.array([0, 1, 0], np.float32), 1)]
        regs = [RegionRow(int(ids[i]), "bolt", 0, fam, 50 + i, (1, 2, 3, 4), (0.5, 0.5), 100.0 + i,
                          np.array([1, 0, 0], np.float32)) for i, fam in enumerate([1, 1, 2])]
        fs.save("bolt", 0.3, fams, regs)
        fs.save("bolt", 0.3, fams, regs)  # idempotent
        assert fs.name_family("bolt", 1, "  scratch ") and not fs.name_family("bolt", 9, "x")
        fams[0].count = 3
        fs.save("bolt", 0.3, fams, [])  # a later batch: the name stays
        thr, loaded = fs.load("bolt")
        assert thr == 0.3 and [(f["family"], f["name"], f["count"]) for f in loaded] == [(1, "scratch", 3), (2, None, 1)]
        p = fs.pareto("bolt")
        assert [(r["family"], r["regions"], r["name"]) for r in p] == [(1, 2, "scratch"), (2, 1, None)]
        assert fs.pareto("bolt", start=101.5)[0]["family"] == 2
        m = fs.members("bolt", 1, with_frames=1)
        assert len(m) == 2 and m[0]["width"] == 32 and "frame" in m[0]


def test_family_trend_counts_frames_per_bucket(db_url):
    with ResultStore.open(db_url) as store:
        ids = store.save_results([make_row(i, "defect", camera="cam1") for i in range(4)])
        fs = FamilyStore.of(store)
        fams = [Family(1, np.array([1, 0, 0], np.float32), 4), Family(2, np.array([0, 1, 0], np.float32), 1)]
        # two regions of family 1 on the same frame count once; times 100, 100, 130, 3700 (s), family 2 at 200
        spec = [(0, 0, 1, 100.0), (0, 1, 1, 100.0), (1, 0, 1, 130.0), (2, 0, 1, 3700.0), (3, 0, 2, 200.0)]
        regs = [RegionRow(int(ids[i]), "bolt", k, fam, 50, (1, 2, 3, 4), (0.5, 0.5), t, np.array([1, 0, 0], np.float32))
                for i, k, fam, t in spec]
        fs.save("bolt", 0.3, fams, regs)
        assert fs.trend("bolt", 1, 3600.0) == [{"start": 0.0, "frames": 2}, {"start": 3600.0, "frames": 1}]
        assert fs.trend("bolt", 1, 3600.0, origin=60.0) == [{"start": 60.0, "frames": 2}, {"start": 3660.0, "frames": 1}]
        assert fs.trend("bolt", 1, 3600.0, start=120.0) == [{"start": 0.0, "frames": 1}, {"start": 3600.0, "frames": 1}]
        assert fs.trend("bolt", 2, 60.0) == [{"start": 180.0, "frames": 1}]
        assert fs.trend("other", 1, 60.0) == []
        with pytest.raises(ValueError):
            fs.trend("bolt", 1, 0.0)
