"""INP-Former + extrinsic memory: shapes, nearest-neighbour maths, fusion, old configs, ORT parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inference.model.anomaly_map import anomaly_map_and_score
from inference.model.inp_former import (
    MEMORY_METRICS,
    ExtrinsicMemory,
    InpConfig,
    InpFormer,
    PairedMemory,
    bank_product,
    make_memory,
    memory_queries,
)
from tests.inference.onnx_fixtures import RealModel, real_model  # noqa: F401 - fixture


def tiny_cfg(**kw) -> InpConfig:
    base = {"backbone": "random_tiny", "input_hw": (64, 64), "token_stride": 8, "width": 32, "head_dim": 16,
            "decoder_blocks": 2, "n_inps": 3, "memory_size": 16}
    return InpConfig(**{**base, **kw})


def filled(m: InpFormer, x: torch.Tensor) -> InpFormer:
    """Fill the memory from ``x``'s own patches and its stats from the same images."""
    enc, mem = m.encode(x), m.encode_memory(x)
    m.head.fit_stats(enc)
    rows = mem.permute(0, 2, 3, 1).reshape(-1, mem.shape[1])
    m.head.memory.fit(rows[: m.cfg.memory_size])
    m.head.memory.fit_stats(*m.raw_maps(enc, mem))
    return m


def test_memory_shapes_and_forward() -> None:
    m = InpFormer(tiny_cfg()).eval()
    x = torch.rand(2, 3, 64, 64)
    mem = m.encode_memory(x)
    assert mem.shape == (2, 16 + 24, 8, 8)  # last block of each group, on the 64/8 grid
    assert m.head.memory.bank.shape == (16, 40)
    filled(m, x)
    rec, md = m.raw_maps(m.encode(x), mem)
    assert rec.shape == md.shape == (2, 16, 16)  # map_hw = 64 / map_stride 4
    amap, score = m(x)
    assert amap.shape == (2, 64, 64) and score.shape == (2,)
    with pytest.raises(ValueError, match="mem="):
        m.score_features(m.encode(x))


def test_bank_product_is_bank_sq_minus_twice_the_dot() -> None:
    torch.manual_seed(0)
    q, bank = torch.randn(2, 9, 6), torch.randn(11, 6)
    got = bank_product(q, bank, (bank * bank).sum(1))
    assert got.shape == (2, 9, 11)
    want = (bank * bank).sum(1) - 2.0 * q @ bank.t()
    assert torch.allclose(got, want, atol=1e-5)
    # + |q|^2 it is the squared Euclidean distance
    assert torch.allclose(got + (q * q).sum(-1, keepdim=True), torch.cdist(q, bank.expand(2, 11, 6)) ** 2, atol=1e-4)


def test_distance_is_the_nearest_bank_entry() -> None:
    torch.manual_seed(0)
    mem = ExtrinsicMemory(50, 7)
    bank = torch.randn(50, 7)
    mem.fit(bank)
    q = torch.randn(3, 7, 4, 5)
    want = torch.cdist(q.permute(0, 2, 3, 1).reshape(-1, 7), bank).min(1).values.view(3, 4, 5)
    assert torch.allclose(mem.distance(q), want, atol=1e-4)
    mem.fit(bank[:50])
    # bank entries are at distance ~0 (sqrt of the expanded square's float32 round-off)
    assert mem.distance(bank.T.reshape(1, 7, 5, 10)).abs().max() < 1e-2
    with pytest.raises(ValueError):
        mem.fit(torch.zeros(49, 7))


def test_fusion_standardises_both_maps() -> None:
    mem = ExtrinsicMemory(4, 3)
    rec, md = torch.rand(5, 8, 8) * 3 + 1, torch.rand(5, 8, 8) * 40 + 10
    mem.fit_stats(rec, md)
    z = mem.fuse(rec, md, 0.0)
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std()) - 1) < 1e-4
    fused = mem.fuse(rec, md, 2.0)
    assert torch.allclose(fused, z + 2 * (md - md.mean()) / md.std(), atol=1e-4)


def test_pure_model_and_old_configs_are_unchanged() -> None:
    cfg = tiny_cfg(memory_size=0)
    d = cfg.to_dict()
    for k in ("memory_size", "memory_stride", "memory_weight"):
        d.pop(k)
    old = InpConfig.from_dict(d)
    assert old.memory_size == 0 and InpConfig().memory_size == 0
    m = InpFormer(old).eval()
    assert not any("memory" in k for k in m.head.state_dict())  # old weights.pt files load strictly
    x = torch.rand(2, 3, 64, 64)
    enc = m.encode(x)
    o = m.head(enc)
    want = anomaly_map_and_score(o.targets, o.dec, old.input_hw, m.blur_kernel, old.top_fraction, old.map_metric,
                                 work_size=old.map_hw, typical_lengths=m.head.typical_lengths())
    got = m(x)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    for bad in ({"memory_size": -1}, {"memory_weight": -1.0}, {"memory_stride": 7}):
        with pytest.raises(ValueError):
            tiny_cfg(**bad)


@pytest.mark.parametrize(("k", "metric", "dims"), [(1, "l2", 0), (3, "l2", 0), (3, "cos", 0), (1, "cos", 0), (3, "l2", 64),
                                                   (3, "cos+l2", 0)])
def test_onnx_graph_with_memory_matches_pytorch_on_real_images(real_model: RealModel, tmp_path: Path,  # noqa: F811
                                                               k: int, metric: str, dims: int) -> None:
    import onnxruntime as ort

    from inference.model_dir import load_model_dir
    from inference.onnx_export import export_module
    from inference.preprocess import batch_to_input

    pure = load_model_dir(real_model.model_dir).module
    cfg = InpConfig.from_dict({**pure.cfg.to_dict(), "memory_size": 256, "memory_k": k, "memory_metric": metric,
                               "memory_dims": dims})
    m = InpFormer(cfg).eval()
    missing = m.head.load_state_dict(pure.head.state_dict(), strict=False).missing_keys
    assert all(k.startswith("memory.") for k in missing)
    # memory and statistics from two normal frames; the graph is compared on the other frames
    # (a bank member's own distance is sqrt(~0), where any float difference is magnified)
    bank_x = torch.from_numpy(batch_to_input(real_model.normal[:2], cfg.input_hw))
    frames = real_model.normal[2:] + real_model.anomalous
    x = torch.from_numpy(batch_to_input(frames, cfg.input_hw))
    with torch.no_grad():
        n = len(real_model.normal) - 2
        enc, mem = m.encode(bank_x), m.encode_memory(bank_x)
        rows = mem.permute(0, 2, 3, 1).reshape(-1, mem.shape[1])
        m.head.memory.fit_projection(rows)
        m.head.memory.fit(rows[torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(0))[:256]])
        m.head.memory.fit_part_stats(mem)  # no-op for one bank
        m.head.memory.fit_stats(*m.raw_maps(enc, mem))
        want_map, want_score = m(x)
    path = export_module(m, tmp_path / "m.onnx", cfg.input_hw, ("map", "score"))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got_map, got_score = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert np.abs(got_map - want_map.numpy()).max() <= 1e-4
    assert np.abs(got_score - want_score.numpy()).max() <= 1e-4
    assert want_score[n:].mean() != want_score[:n].mean()  # the memory map is live, not a constant


def test_distance_k_nearest_mean_and_cosine() -> None:
    """k > 1: mean of the k smallest Euclidean distances; "cos": distances of unit vectors, so a query's
    length does not matter and the bank is stored normalised."""
    torch.manual_seed(1)
    bank = torch.randn(40, 6) * 3 + 1
    q = torch.randn(2, 6, 3, 4) * 2
    flat = q.permute(0, 2, 3, 1).reshape(-1, 6)
    m3 = ExtrinsicMemory(40, 6, k=3)
    m3.fit(bank)
    want = torch.topk(torch.cdist(flat, bank), 3, largest=False).values.mean(1).view(2, 3, 4)
    assert torch.allclose(m3.distance(q), want, atol=1e-4)
    mc = ExtrinsicMemory(40, 6, k=2, metric="cos")
    mc.fit(bank)
    un = torch.nn.functional.normalize
    want = torch.topk(torch.cdist(un(flat, dim=1), un(bank, dim=1)), 2, largest=False).values.mean(1).view(2, 3, 4)
    assert torch.allclose(mc.distance(q), want, atol=1e-4)
    assert torch.allclose(mc.distance(q * 7.5), mc.distance(q), atol=1e-4)
    assert torch.allclose((mc.bank + mc.center).norm(dim=1), torch.ones(40), atol=1e-5)
    for bad in ({"k": 0}, {"k": 41}, {"metric": "l1"}):
        with pytest.raises(ValueError):
            ExtrinsicMemory(40, 6, **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="memory_k"):
        tiny_cfg(memory_k=17)
    with pytest.raises(ValueError, match="memory_metric"):
        tiny_cfg(memory_metric="l1")
    assert tiny_cfg().memory_k == 3 and tiny_cfg().memory_metric == "l2"


def test_search_is_one_product_of_the_padded_rows_with_the_search_bank() -> None:
    """The exported search: rows [q, 1] times a constant (M, C + 1) bank; cosine: unit entries and 0 (the max of
    the raw dot, divided by |q| after it); Euclidean: -2 b and |b|^2 of the entries as filled (not centred)."""
    torch.manual_seed(3)
    feats = torch.randn(2, 5, 3, 4) * 4 + 2
    q = memory_queries(feats)
    flat = feats.flatten(2).transpose(1, 2)
    assert q.rows.shape == (2, 12, 6) and torch.equal(q.rows[..., :5], flat) and bool((q.rows[..., 5] == 1).all())
    assert torch.allclose(q.sq, (flat * flat).sum(-1))
    rows = torch.randn(20, 5) * 3 + 1
    for metric, k in (("cos", 1), ("cos", 3), ("l2", 1), ("l2", 3)):
        mem = ExtrinsicMemory(20, 5, k, metric)
        mem.fit(rows)
        sb = mem.search_bank()
        if metric == "cos":
            unit = torch.nn.functional.normalize(rows, dim=1)
            assert torch.allclose(sb, torch.cat([unit, torch.zeros(20, 1)], 1), atol=1e-6)
            want = torch.cdist(torch.nn.functional.normalize(flat, dim=-1), unit.expand(2, 20, 5))
        else:
            assert torch.allclose(sb, torch.cat([-2 * rows, (rows * rows).sum(1, keepdim=True)], 1), atol=1e-4)
            want = torch.cdist(flat, rows.expand(2, 20, 5))
        want = torch.topk(want, k, largest=False).values.mean(-1)
        assert torch.allclose(mem.query_distance(q), want, atol=1e-4), (metric, k)
    pca = ExtrinsicMemory(20, 5, 1, "l2", dims=3)
    pca.fit_projection(rows)
    pca.fit(rows)
    with pytest.raises(ValueError, match="projected rows"):
        pca.query_distance(q)  # its bank lives on the principal axes: distance() projects the rows first


def test_exported_memory_graph_has_no_expand_if_or_constant_pad_and_any_batch_runs(tmp_path: Path) -> None:
    """What the graph diet removed stays removed: norms are broadcast, not expanded (Expand), maps are reshaped
    to their static size, not squeezed (If), and the bank's constant term rides on the ones channel the query
    rows are built with, not on a padded copy of the queries (constant Pad). The blur's reflect pads remain."""
    import onnx

    from inference.onnx_export import export_module

    m = InpFormer(tiny_cfg(memory_metric="cos+l2", memory_k=2)).eval()
    x = torch.rand(2, 3, 64, 64)
    m.head.memory.fit(m.encode_memory(x).permute(0, 2, 3, 1).reshape(-1, 40)[:16])
    path = export_module(m, tmp_path / "m.onnx", (64, 64), ("map", "score"))
    nodes = onnx.load(str(path)).graph.node
    assert not [n.name for n in nodes if n.op_type == "If"]
    # one Expand remains: the learnt INP queries broadcast to the batch (batch x n_inps x width, tiny)
    assert len([n for n in nodes if n.op_type == "Expand"]) == 1
    modes = [next((a.s for a in n.attribute if a.name == "mode"), b"constant") for n in nodes if n.op_type == "Pad"]
    assert modes and set(modes) == {b"reflect"}, modes
    # the reshapes to constant shapes leave only the batch free: any batch size runs and matches PyTorch
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        xb = torch.rand(n, 3, 64, 64)
        with torch.no_grad():
            want_map, want_score = m(xb)
        got_map, got_score = sess.run(None, {sess.get_inputs()[0].name: xb.numpy()})
        assert got_map.shape == (n, 64, 64) and got_score.shape == (n,)
        assert np.abs(got_map - want_map.numpy()).max() <= 1e-4 and np.abs(got_score - want_score.numpy()).max() <= 1e-4


def test_memory_config_written_before_memory_k_loads_as_k1_and_scores_as_before() -> None:
    """A model dir with an extrinsic memory but no ``memory_k`` / ``memory_metric`` (written before those
    fields) is upgraded to k = 1, Euclidean: the nearest entry, exactly the old graph."""
    from lineinspect import model_meta

    d = tiny_cfg().to_dict()
    for k in ("memory_k", "memory_metric", "memory_dims"):
        d.pop(k)
    for fmt in (1, 2):
        up = model_meta.migrate({"format_version": fmt, "model": dict(d)})["model"]
        assert up["memory_k"] == 1
    cfg = InpConfig.from_dict(model_meta.migrate({"format_version": 2, "model": d})["model"])
    assert cfg.memory_k == 1 and cfg.memory_metric == "l2" and cfg.memory_dims == 0
    m = filled(InpFormer(cfg).eval(), torch.rand(2, 3, 64, 64))
    x = torch.rand(2, 3, 64, 64)
    mem = m.encode_memory(x)
    rows = mem.permute(0, 2, 3, 1).reshape(-1, mem.shape[1])
    bank = m.head.memory.bank + m.head.memory.center
    nearest = torch.cdist(rows, bank).min(1).values.view(2, 8, 8)
    assert torch.allclose(m.head.memory.distance(mem), nearest, atol=1e-3)
    # configs without a memory, or with memory_k written, are left alone
    assert "memory_k" not in model_meta.migrate({"format_version": 2, "model": {"memory_size": 0}})["model"]
    assert model_meta.migrate({"format_version": 2, "model": {"memory_size": 8, "memory_k": 3}})["model"]["memory_k"] == 3


def test_memory_on_principal_axes() -> None:
    """dims > 0: the bank and the queries are projected on the training rows' top principal axes and
    distances are measured there (orthonormal axes; the full width when dims = channels)."""
    torch.manual_seed(2)
    basis = torch.randn(3, 8)
    rows = torch.randn(300, 3) @ basis + 0.01 * torch.randn(300, 8)  # rank ~3 in 8 dims
    m = ExtrinsicMemory(40, 8, k=2, dims=3)
    m.fit_projection(rows)
    assert torch.allclose(m.proj.t() @ m.proj, torch.eye(3), atol=1e-5)
    m.fit(rows[:40])
    assert m.bank.shape == (40, 3) and m.dims == 3
    q = (torch.randn(2, 3) @ basis).view(2, 8, 1, 1).expand(2, 8, 2, 2).contiguous()
    flat = q.permute(0, 2, 3, 1).reshape(-1, 8)
    want = torch.topk(torch.cdist(flat @ m.proj, rows[:40] @ m.proj), 2, largest=False).values.mean(1).view(2, 2, 2)
    assert torch.allclose(m.distance(q), want, atol=1e-3)
    full = ExtrinsicMemory(40, 8, k=2)  # rows of rank ~3: 3 axes keep the distances almost exactly
    full.fit(rows[:40])
    assert torch.allclose(m.distance(q), full.distance(q), atol=0.05)
    assert ExtrinsicMemory(40, 8).dims == 0 and not hasattr(ExtrinsicMemory(40, 8), "proj")
    with pytest.raises(ValueError):
        ExtrinsicMemory(40, 8, dims=9)
    with pytest.raises(ValueError, match="memory_dims"):
        tiny_cfg(memory_dims=-1)
    cfg = tiny_cfg(memory_dims=8)
    assert InpFormer(cfg).head.memory.proj.shape == (40, 8)


def test_paired_memory_sums_the_two_banks_standardised_distances() -> None:
    """"cos+l2": a cosine bank searched 1-NN and a Euclidean bank searched k-NN, each distance standardised on
    held-out normals, summed; fuse() adds the sum with the memory weight as is (mem_stats stay (0, 1))."""
    torch.manual_seed(2)
    pm = make_memory(30, 5, 3, "cos+l2")
    assert isinstance(pm, PairedMemory) and pm.banks() == [pm.cos, pm.l2]
    assert (pm.cos.k, pm.cos.metric, pm.l2.k, pm.l2.metric) == (1, "cos", 3, "l2")
    rows_c, rows_l = torch.randn(30, 5) * 2 + 1, torch.randn(30, 5) * 3
    pm.cos.fit(rows_c)
    pm.l2.fit(rows_l)
    held = torch.randn(4, 5, 3, 3) * 2
    pm.fit_part_stats(held)
    for row, bank in enumerate(pm.banks()):
        d = bank.distance(held)
        assert torch.allclose(pm.part_stats[row], torch.stack([d.mean(), d.std()]), atol=1e-6)
    q = torch.randn(2, 5, 3, 3)
    want = ((pm.cos.distance(q) - pm.part_stats[0, 0]) / pm.part_stats[0, 1]
            + (pm.l2.distance(q) - pm.part_stats[1, 0]) / pm.part_stats[1, 1])
    assert torch.allclose(pm.distance(q), want, atol=1e-6)
    # the held-out normals' summed distance is centred (each part is)
    assert abs(float(pm.distance(held).mean())) < 1e-4
    rec = torch.rand(2, 3, 3) * 5
    pm.fit_stats(rec, pm.distance(q))
    assert pm.mem_stats.tolist() == [0.0, 1.0]
    z = (rec - rec.mean()) / rec.std()
    assert torch.allclose(pm.fuse(rec, pm.distance(q), 2.0), z + 2.0 * pm.distance(q), atol=1e-5)
    pm.fit(rows_l)  # the shared-rows fill: both banks from the same rows
    assert torch.allclose(pm.l2.bank + pm.l2.center, rows_l, atol=1e-5)
    assert torch.allclose((pm.cos.bank + pm.cos.center).norm(dim=1), torch.ones(30), atol=1e-5)


def test_paired_memory_config_and_model() -> None:
    assert "cos+l2" in MEMORY_METRICS
    with pytest.raises(ValueError, match="memory_dims"):
        tiny_cfg(memory_metric="cos+l2", memory_dims=4)
    with pytest.raises(ValueError, match="dims"):
        make_memory(16, 8, 1, "cos+l2", dims=4)
    with pytest.raises(ValueError, match="metric must be one of"):
        ExtrinsicMemory(16, 8, metric="cos+l2")  # one bank has one metric
    m = InpFormer(tiny_cfg(memory_metric="cos+l2", memory_k=2)).eval()
    assert isinstance(m.head.memory, PairedMemory)
    assert {k for k in m.head.state_dict() if k.startswith("memory.")} >= {
        "memory.cos.bank", "memory.l2.bank", "memory.part_stats", "memory.rec_stats", "memory.mem_stats"}
    x = torch.rand(2, 3, 64, 64)
    enc, mem = m.encode(x), m.encode_memory(x)
    rows = mem.permute(0, 2, 3, 1).reshape(-1, mem.shape[1])
    m.head.memory.fit(rows[:16])
    m.head.memory.fit_part_stats(mem)
    m.head.memory.fit_stats(*m.raw_maps(enc, mem))
    amap, score = m(x)
    assert amap.shape == (2, 64, 64) and torch.isfinite(amap).all() and torch.isfinite(score).all()


def test_standardised_sum_is_the_weighted_sum_of_z_scores() -> None:
    from inference.model.inp_former import standardised_sum

    a, b = torch.tensor([1.0, 3.0]), torch.tensor([10.0, 30.0])
    got = standardised_sum(a, torch.tensor([2.0, 1.0]), b, torch.tensor([20.0, 10.0]), 2.0)
    assert torch.allclose(got, torch.tensor([-3.0, 3.0]))
