"""INP-Former++ residual head: shapes, fusion, old configs unchanged, ORT parity on real images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.model.inp_former import InpConfig, InpFormer, ResidualHead, residual_features
from tests.inference.onnx_fixtures import RealModel, real_model  # noqa: F401 - fixture


def tiny_cfg(**kw) -> InpConfig:
    base = {"backbone": "random_tiny", "input_hw": (64, 64), "token_stride": 8, "width": 32, "head_dim": 16,
            "decoder_blocks": 2, "n_inps": 3, "residual_head": 8}
    return InpConfig(**{**base, **kw})


def fill(m: InpFormer, x: torch.Tensor) -> InpFormer:
    """Feature statistics, memory (when there is one) and residual statistics from ``x`` itself."""
    enc = m.encode(x)
    m.head.fit_stats(enc)
    mem = None
    if m.cfg.memory_size:
        mem = m.encode_memory(x)
        rows = mem.permute(0, 2, 3, 1).reshape(-1, mem.shape[1])
        m.head.memory.fit(rows[: m.cfg.memory_size])
        m.head.memory.fit_stats(*m.raw_maps(enc, mem))
    m.head.residual.fit_stats(*m.base_and_residual(enc, mem))
    return m


@pytest.mark.parametrize("memory_size", [0, 16])
def test_residual_head_shapes_and_fused_map(memory_size: int) -> None:
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    try:
        _check_shapes(memory_size)
    finally:
        torch.set_grad_enabled(True)


def _check_shapes(memory_size: int) -> None:
    m = fill(InpFormer(tiny_cfg(memory_size=memory_size)).eval(), torch.rand(3, 3, 64, 64))
    x = torch.rand(2, 3, 64, 64)
    enc = m.encode(x)
    out = m.head(enc)
    feats = residual_features(out.targets, out.dec)
    assert feats.shape == (2, 16 + 24, 8, 8)  # groups concatenated on the 64/8 token grid
    assert m.head.residual.logits(feats).shape == (2, 8, 8)
    mem = m.encode_memory(x) if memory_size else None
    base, res = m.base_and_residual(enc, mem)
    assert base.shape == res.shape == (2, 16, 16)  # map_hw
    assert float(res.min()) >= 0 and float(res.max()) <= 1  # a probability mask
    amap, score = m(x)
    assert amap.shape == (2, 64, 64) and score.shape == (2,)
    want = m.finish(m.head.residual.fuse(base, res, m.cfg.residual_weight))
    assert torch.allclose(amap, want[0]) and torch.allclose(score, want[1])
    if memory_size:  # the base is the memory-fused map, exactly as without the head
        rec, md = m.raw_maps(enc, mem)
        assert torch.allclose(base, m.head.memory.fuse(rec, md, m.cfg.memory_weight))
        with pytest.raises(ValueError, match="mem="):
            m.score_features(enc)


def test_residual_is_a_stop_gradient_input() -> None:
    """Training the head must not move the main model: no gradient reaches the decoder through the mask."""
    m = InpFormer(tiny_cfg()).train()
    enc = m.encode(torch.rand(2, 3, 64, 64))
    m.residual_mask(m.head(enc)).sum().backward()
    assert all(p.grad is None for n, p in m.head.named_parameters() if not n.startswith("residual."))
    assert any(p.grad is not None for p in m.head.residual.parameters())


def test_fusion_standardises_both_maps() -> None:
    h = ResidualHead(5, 4)
    base, res = torch.rand(4, 6, 6) * 5 + 2, torch.rand(4, 6, 6) * 0.01
    h.fit_stats(base, res)
    zb = h.fuse(base, res, 0.0)
    assert abs(float(zb.mean())) < 1e-5 and abs(float(zb.std()) - 1) < 1e-4
    assert torch.allclose(h.fuse(base, res, 2.0), zb + 2 * (res - res.mean()) / res.std(), atol=1e-4)
    with pytest.raises(ValueError):
        ResidualHead(5, 0)
    for bad in ({"residual_head": -1}, {"residual_weight": -0.5}):
        with pytest.raises(ValueError):
            tiny_cfg(**bad)


@pytest.mark.parametrize("memory_size", [0, 16])
def test_config_without_residual_fields_loads_and_scores_as_before(memory_size: int) -> None:
    """A config.json written before the residual head (no ``residual_*`` keys) means no head: the same
    state-dict keys (old weights.pt load strictly) and bit-identical maps and scores."""
    from lineinspect import model_meta

    d = tiny_cfg(memory_size=memory_size).to_dict()
    for k in ("residual_head", "residual_weight"):
        d.pop(k)
    up = model_meta.migrate({"format_version": 2, "model": dict(d)})["model"]
    old = InpConfig.from_dict(up)
    assert old.residual_head == 0 and InpConfig().residual_head == 0
    m = InpFormer(old).eval()
    assert not any(k.startswith("residual.") for k in m.head.state_dict())
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 64)
    if memory_size:
        mem, enc = m.encode_memory(x), m.encode(x)
        rows = mem.permute(0, 2, 3, 1).reshape(-1, mem.shape[1])
        m.head.memory.fit(rows[:16])
        rec, md = m.raw_maps(enc, mem)
        want = m.finish(m.head.memory.fuse(rec, md, old.memory_weight))
    else:
        from inference.model.anomaly_map import anomaly_map_and_score

        o = m.head(m.encode(x))
        want = anomaly_map_and_score(o.targets, o.dec, old.input_hw, m.blur_kernel, old.top_fraction, old.map_metric,
                                     work_size=old.map_hw, typical_lengths=m.head.typical_lengths())
    got = m(x)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(ValueError, match="residual head"):
        m.base_and_residual(m.encode(x))


def test_real_model_dir_without_residual_fields_scores_bitwise_as_before(real_model: RealModel,  # noqa: F811
                                                                         tmp_path: Path) -> None:
    """A real trained model dir whose config.json lacks the residual fields (as every dir written before
    them) loads and scores exactly as the same dir with them written (off)."""
    from inference.model_dir import load_model_dir
    from inference.preprocess import batch_to_input
    from lineinspect import model_meta

    old_dir = tmp_path / "old"
    shutil.copytree(real_model.model_dir, old_dir)
    cfg = json.loads((old_dir / "config.json").read_text())
    cfg["model"].pop("residual_head")
    cfg["model"].pop("residual_weight")
    (old_dir / "config.json").write_text(json.dumps(cfg))
    model_meta.record_checksums(old_dir)
    new = load_model_dir(real_model.model_dir).module
    old = load_model_dir(old_dir).module
    assert old.cfg.residual_head == 0 and old.cfg == new.cfg
    x = torch.from_numpy(batch_to_input(real_model.normal + real_model.anomalous, new.cfg.input_hw))
    with torch.no_grad():
        a, b = new(x), old(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("memory_size", [0, 256])
def test_onnx_graph_with_residual_head_matches_pytorch_on_real_images(real_model: RealModel,  # noqa: F811
                                                                      tmp_path: Path, memory_size: int) -> None:
    import onnxruntime as ort

    from inference.model_dir import load_model_dir
    from inference.onnx_export import export_module
    from inference.preprocess import batch_to_input
    from training.residual import ResidualTrainConfig, fit_residual_stats, train_residual_head

    pure = load_model_dir(real_model.model_dir).module
    cfg = InpConfig.from_dict({**pure.cfg.to_dict(), "memory_size": memory_size, "residual_head": 8})
    m = InpFormer(cfg, backbone=pure.backbone).eval()
    missing = m.head.load_state_dict(pure.head.state_dict(), strict=False).missing_keys
    assert all(k.startswith(("memory.", "residual.")) for k in missing)
    fit = real_model.normal[:2]
    fit_x = torch.from_numpy(batch_to_input(fit, cfg.input_hw))
    frames = real_model.normal[2:] + real_model.anomalous
    x = torch.from_numpy(batch_to_input(frames, cfg.input_hw))
    with torch.no_grad():
        enc = m.encode(fit_x)
        mem = None
        if memory_size:
            mem = m.encode_memory(fit_x)
            rows = mem.permute(0, 2, 3, 1).reshape(-1, mem.shape[1])
            m.head.memory.fit(rows[torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(0))[:256]])
            m.head.memory.fit_stats(*m.raw_maps(enc, mem))
    train_residual_head(m, fit, 0, ResidualTrainConfig(iters=10, copies=2), progress=False)
    fit_residual_stats(m, enc, mem)
    with torch.no_grad():
        want_map, want_score = m(x)
        res = m.residual_mask(m.head(m.encode(x)))
    assert float(res.std()) > 0  # the head's mask is live in the graph, not a constant
    path = export_module(m, tmp_path / "m.onnx", cfg.input_hw, ("map", "score"))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got_map, got_score = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert np.abs(got_map - want_map.numpy()).max() <= 1e-4
    assert np.abs(got_score - want_score.numpy()).max() <= 1e-4
