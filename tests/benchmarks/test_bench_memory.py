"""benchmarks.bench_memory.decide: the quality decision rule written before the run (issue 13)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.bench_memory import decide, speed_cell, speed_key, write_readme_table

SPREAD = {"image_auroc": 0.01, "pixel_auroc": 0.01, "aupro": 0.01}


def row(i: float, p: float, a: float) -> dict:
    return {"image_auroc": i, "pixel_auroc": p, "aupro": a, "spread": dict(SPREAD)}


def quality(speed: dict[str, float]) -> dict:
    return {"mean": {"knn_a": row(0.80, 0.87, 0.65), "knn_b": row(0.78, 0.88, 0.64),
                     "inp_former": row(0.77, 0.85, 0.60),
                     "inp_former_mem512k3": row(0.81, 0.881, 0.651),          # wins, cheapest
                     "inp_former_mem1024k3_w2": row(0.82, 0.885, 0.66),       # wins, dearer, within the spread
                     "inp_former_mem1024k3_w2_res": row(0.85, 0.90, 0.70)},   # wins clearly, dearest
            "speed": {"ratio_to_yardstick": speed}}


def test_bar_is_the_best_knn_per_metric_and_the_cheapest_winner_is_chosen() -> None:
    q = decide(quality({"inp_former_mem512k3": 0.55, "inp_former_mem1024k3": 0.52, "inp_former_mem1024k3_res": 0.30}))
    assert q["knn_bar"] == {"image_auroc": 0.80, "pixel_auroc": 0.88, "aupro": 0.65}
    assert q["knn_bar_method"] == {"image_auroc": "knn_a", "pixel_auroc": "knn_b", "aupro": "knn_a"}
    assert "inp_former" not in q["winners"]
    assert q["winners_below_speed_floor"] == ["inp_former_mem1024k3_w2_res"]   # timed as its _res graph: 0.30
    assert q["chosen"]["method"] == "inp_former_mem512k3"


def test_a_winner_without_a_measured_speed_is_never_chosen() -> None:
    q = decide(quality({"inp_former_mem1024k3": 0.52}))
    assert q["winners_speed_unmeasured"] == ["inp_former_mem512k3", "inp_former_mem1024k3_w2_res"]
    assert q["chosen"]["method"] == "inp_former_mem1024k3_w2"


def test_no_measured_winner_keeps_the_pure_default_and_says_why() -> None:
    q = decide(quality({"inp_former_mem512k3": 0.40, "inp_former_mem1024k3": 0.45}))
    assert q["chosen"]["method"] == "inp_former"
    assert "below 0.5x" in q["chosen"]["why"] and "no measured speed" in q["chosen"]["why"]


def test_the_memory_weight_does_not_change_the_timed_graph() -> None:
    assert speed_key("inp_former_mem1024k3_w2_res") == "inp_former_mem1024k3_res"
    assert speed_key("inp_former_mem512k3_w2") == "inp_former_mem512k3"
    assert speed_key("inp_former") == "inp_former"


def test_a_margin_that_rounds_to_zero_is_still_below_the_bar() -> None:
    q = quality({"encoder only (yardstick)": 1.0, "inp_former_mem512k3": 0.9})
    q["mean"]["inp_former_mem512k3"] = row(0.81, 0.88 - 4e-5, 0.651)  # P-AUROC 0.00004 under knn_b's 0.88
    q["mean"]["inp_former_mem1024k3_w2"] = row(0.70, 0.70, 0.70)
    q["mean"]["inp_former_mem1024k3_w2_res"] = row(0.70, 0.70, 0.70)
    out = decide(q)
    assert out["margin_vs_bar"]["inp_former_mem512k3"]["pixel_auroc"] == 0.0  # shown rounded...
    assert out["winners"] == [] and out["chosen"]["method"] == "inp_former"  # ...but not a winner


def test_a_benchmark_prototype_is_never_a_winner() -> None:
    q = quality({"encoder only (yardstick)": 1.0, "inp_former_mem2048k1cos8": 0.9})
    q["mean"]["inp_former_mem2048k1cos8"] = row(0.90, 0.95, 0.75)  # far above the bar, and fast
    out = decide(q)
    assert "inp_former_mem2048k1cos8" not in out["winners"]
    assert out["prototypes_meeting_bar"] == ["inp_former_mem2048k1cos8"]


def test_readme_table_shows_each_rows_speed_beside_its_accuracy(tmp_path: Path) -> None:
    q = decide(quality({"inp_former": 0.56, "inp_former_mem512k3": 0.55, "inp_former_mem1024k3": 0.42}))
    q["seeds"] = [0, 1, 2]
    assert speed_cell(q, "inp_former_mem1024k3_w2") == "**0.42x**"   # below the floor, timed as its graph
    assert speed_cell(q, "inp_former_mem512k3") == "0.55x"
    assert speed_cell(q, "knn_a") == "n/a" and speed_cell(q, "inp_former_mem1024k3_w2_res") == "n/a"
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- quality-table:begin -->\nSTALE\n<!-- quality-table:end -->\nrest\n")
    write_readme_table(q, readme)
    text = readme.read_text()
    assert "STALE" not in text and text.startswith("intro") and text.rstrip().endswith("rest")
    assert "| ORT speed (x encoder) |" in text
    line = next(ln for ln in text.splitlines() if "(`inp_former_mem512k3`)" in ln)
    assert "| 0.810 ± 0.010 | 0.881 ± 0.010 | 0.651 ± 0.010 | 0.55x |" in line


def test_every_swapped_memory_is_a_costed_labelled_candidate_at_both_weights() -> None:
    from benchmarks.bench_memory import COST, LABELS, SWAPPED_MEMORIES, memory_row

    names = [memory_row(size, k, tag) for size, k, _, _, _, _, tag in SWAPPED_MEMORIES]
    assert len(set(names)) == len(names)
    for name in names:
        assert {name, f"{name}_w2"} <= set(COST) and {name, f"{name}_w2"} <= set(LABELS)
