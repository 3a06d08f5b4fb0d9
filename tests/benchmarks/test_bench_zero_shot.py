"""benchmarks.bench_zero_shot: the trained rows beside the zero-shot ones come from the current quality.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_zero_shot
from benchmarks.bench_zero_shot import TRAINED, quality_rows


def metrics(i: float, p: float, a: float) -> dict:
    return {"image_auroc": i, "pixel_auroc": p, "aupro": a}


def quality_json(tmp_path: Path) -> Path:
    """A quality.json in bench_memory.py's schema: per category, per method, means over the seeds."""
    per_cat = {
        "a/x": {"inp_former": metrics(0.7, 0.8, 0.5), "inp_former_mem1024k3dual_w2": metrics(0.8, 0.9, 0.6),
                "knn_cs10": metrics(0.75, 0.85, 0.55), "inp_former_mem512k3": metrics(0.0, 0.0, 0.0)},
        "b/y": {"inp_former": metrics(0.6, 0.7, 0.4)},  # a category without the other rows
    }
    path = tmp_path / "quality.json"
    path.write_text(json.dumps({"seeds": [0, 1, 2], "mean": {}, "per_category": per_cat}))
    return path


def test_quality_rows_read_the_trained_methods_per_category(tmp_path: Path) -> None:
    rows = quality_rows(quality_json(tmp_path))
    assert rows is not None
    assert set(rows["a/x"]) == {m for _, m in TRAINED}
    assert rows["a/x"]["knn_cs10"]["pixel_auroc"] == 0.85
    assert set(rows["b/y"]) == {"inp_former"}
    assert quality_rows(tmp_path / "absent.json") is None


def test_rewrite_keeps_the_run_date_and_marks_missing_trained_rows(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    qpath = quality_json(tmp_path)
    monkeypatch.setattr(bench_zero_shot, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(bench_zero_shot, "quality_rows", lambda: quality_rows(qpath))
    sections: dict[str, str] = {}
    monkeypatch.setattr(bench_zero_shot, "write_section", lambda name, body: sections.__setitem__(name, body))
    zs = {"image_auroc": 0.6, "pixel_auroc": 0.7, "aupro": 0.3, "images_per_s": 1.0}
    payload = {"machine": "m", "date": "2026-01-02", "seed": 0, "inp_iters": 100, "max_test": None,
               "rows": [{"category": c, "n_test": 10, "grnr": dict(zs)} for c in ("a/x", "b/y")]}
    bench_zero_shot.write(payload, 100, None)
    body = sections["zeroshot"]
    assert body.startswith("## Zero-shot cold start (2026-01-02)")
    assert "| a/x | PatchCore bank (trained, knn_cs10) | 0.750 | 0.850 | 0.550 |" in body
    assert "| b/y | PatchCore bank (trained, knn_cs10) | n/a | n/a | n/a | - | not in quality.json |" in body
    # a mean row only for methods every category has
    assert "| **mean** | INP-Former (trained, default) | 0.650 | 0.750 | 0.450 |" in body
    assert "| **mean** | PatchCore bank" not in body
    assert json.loads((tmp_path / "zero_shot.json").read_text())["date"] == "2026-01-02"
