"""Families and regions on SQLite and PostgreSQL: upsert keeps the operator's name, Pareto counts."""

from __future__ import annotations

import numpy as np

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
