"""benchmarks.bench_fewshot: the unified row's per-category control stays out of quality.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_fewshot import CATEGORIES, CONTROL, control_summary, merge


def metrics(i: float, p: float, a: float) -> dict:
    return {"image_auroc": i, "pixel_auroc": p, "aupro": a}


def write_runs(folder: Path) -> None:
    folder.mkdir()
    for j, cat in enumerate(CATEGORIES):
        for method, base in (("inp_former_unified", 0.5), (CONTROL, 0.8)):
            run = {"method": method, "category": cat, "seed": 0, "train_s": 1.0, "machine": "m",
                   "metrics": metrics(base + 0.01 * j, base + 0.02, base - 0.1)}
            (folder / f"{method}__{j}__s0.json").write_text(json.dumps(run))


def quality() -> dict:
    return {"seeds": [0, 1, 2], "categories": list(CATEGORIES), "mean": {}, "per_seed_mean": {
        "inp_former": {"image_auroc": [0.77, 0.7, 0.7], "pixel_auroc": [0.85, 0.8, 0.8], "aupro": [0.6, 0.5, 0.5]}},
        "per_category": {c: {"inp_former": metrics(0.8, 0.85, 0.6)} for c in CATEGORIES}}


def test_merge_adds_the_unified_row_but_never_the_control(tmp_path: Path) -> None:
    write_runs(tmp_path / "runs")
    q = merge(tmp_path / "runs", quality())
    assert "inp_former_unified" in q["mean"] and CONTROL not in q["mean"]
    assert q["seeds_by_method"]["inp_former_unified"] == [0]
    assert q["mean"]["inp_former_unified"]["image_auroc"] == pytest.approx(0.515)


def test_the_control_summary_sets_unified_control_and_quality_json_side_by_side(tmp_path: Path) -> None:
    write_runs(tmp_path / "runs")
    out = control_summary(tmp_path / "runs", quality())
    seed0 = out["seeds"]["0"]
    assert seed0["mean_of_4"]["control"]["image_auroc"] == pytest.approx(0.815)
    assert seed0["mean_of_4"]["unified"]["aupro"] == pytest.approx(0.4)
    assert seed0["mean_of_4"]["quality_json_inp_former_this_seed"]["image_auroc"] == 0.77
    assert seed0["per_category"][CATEGORIES[0]]["quality_json_inp_former_mean_over_seeds"]["pixel_auroc"] == 0.85
