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


def test_every_head_variant_row_is_costed_labelled_and_cheaper_than_its_default_head_twin() -> None:
    from benchmarks.bench_memory import COST, HEAD_MEMORIES, HEADS, LABELS, memory_row

    for head in HEADS:
        names = [f"inp_former_{head}", f"inp_former_{head}_mem1024k3"] + [
            memory_row(size, k, tag, head) for size, k, _, _, _, _, tag in HEAD_MEMORIES]
        for name in names:
            for w in ("", "_w2") if name != f"inp_former_{head}" else ("",):
                assert name + w in COST and name + w in LABELS
                twin = name.replace(f"_{head}", "", 1) + w
                assert COST[name + w] < COST[twin]
    assert memory_row(384, 3, "dual", "dec2") == "inp_former_dec2_mem384k3dual"


def _run(cat: str, rows: dict[str, float], head: str = "") -> dict:
    metrics = {m: {"image_auroc": v, "pixel_auroc": v, "aupro": v} for m, v in rows.items()}
    return {"category": cat, "machine": "m", "seeds": {s: {"train_s": 10.0 + int(s), "methods": dict(metrics)}
                                                        for s in ("0", "1")}} | ({"head": head} if head else {})


def test_a_head_variants_file_adds_its_rows_to_the_default_heads_seeds_in_any_order() -> None:
    import pytest

    from benchmarks.bench_memory import join_runs

    base, extra = _run("a/x", {"inp_former": 0.7, "knn_r20k": 0.8}), _run("a/x", {"inp_former_dec2": 0.6}, "dec2")
    for parts in ([base, extra], [extra, base]):
        (run,) = join_runs(parts)
        seed = run["seeds"]["0"]
        assert set(seed["methods"]) == {"inp_former", "knn_r20k", "inp_former_dec2"}
        assert seed["train_s"] == 10.0 and seed["train_s_heads"] == {"dec2": 10.0}
        assert run["machine_heads"] == {"dec2": "m"}
    with pytest.raises(SystemExit, match="without the default head"):
        join_runs([extra])


def test_aggregate_keeps_only_rows_every_category_has(tmp_path: Path) -> None:
    import json

    from benchmarks.bench_memory import aggregate

    files = [_run("a/x", {"inp_former": 0.7}), _run("b/y", {"inp_former": 0.5}),
             _run("a/x", {"inp_former_dec2": 0.6}, "dec2")]  # the head variant ran on one category only
    for i, f in enumerate(files):
        (tmp_path / f"{i}.json").write_text(json.dumps(f))
    q = aggregate(tmp_path, {})
    assert set(q["mean"]) == {"inp_former"}
    assert abs(q["mean"]["inp_former"]["image_auroc"] - 0.6) < 1e-9
    assert q["train_s_heads"]["dec2"] == {"a/x": [10.0, 11.0], "b/y": [None, None]}


def test_row_fields_name_the_model_that_serves_a_row() -> None:
    import pytest

    from benchmarks.bench_memory import row_fields

    assert row_fields("inp_former") == {"decoder_blocks": 4, "memory_size": 0}
    assert row_fields("inp_former_dec2_mem384k3dual_w2") == {
        "decoder_blocks": 2, "memory_size": 384, "memory_k": 3, "memory_metric": "cos+l2", "memory_dims": 0,
        "memory_stride": 8, "memory_weight": 2.0}
    assert row_fields("inp_former_mem1024k3")["memory_metric"] == "l2"
    assert row_fields("inp_former_mem1024k3dual_s16")["memory_stride"] == 16
    with pytest.raises(KeyError):
        row_fields("inp_former_mem2048k1cos8")  # the int8 prototype: no model serves it


def test_each_preset_trains_the_model_of_the_benchmark_row_it_names() -> None:
    from dataclasses import fields

    from benchmarks.bench_memory import row_fields
    from inference.model.inp_former import InpConfig
    from training.presets import resolve

    defaults = {f.name: f.default for f in fields(InpConfig)}
    for preset, row in (("fast", "inp_former"), ("accurate", "inp_former_mem1024k3dual_w2")):
        cfg = defaults | resolve(preset, {})
        assert {k: cfg[k] for k in row_fields(row)} == row_fields(row), preset
