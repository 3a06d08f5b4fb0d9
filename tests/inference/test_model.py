import pytest
import torch
import torch.nn.functional as F

from inference.model.anomaly_map import (
    fuse_maps,
    gaussian_blur,
    gaussian_kernel1d,
    mean_of,
    resize_maps,
    topk_mean_score,
)
from inference.model.inp_former import DecoderBlock, InpAttention, InpConfig, InpFormer, unit
from lineinspect import model_meta


def tiny_cfg(**kw) -> InpConfig:
    base = dict(backbone="random_tiny", input_hw=(64, 64), token_stride=8, width=32, head_dim=16, decoder_blocks=2, n_inps=3)
    return InpConfig(**{**base, **kw})


def test_forward_shapes_and_groups():
    m = InpFormer(tiny_cfg()).eval()
    x = torch.rand(2, 3, 64, 64)
    amap, score = m(x)
    assert amap.shape == (2, 64, 64) and score.shape == (2,)
    enc = m.encode(x)
    assert [e.shape for e in enc] == [(2, 16, 8, 8), (2, 24, 8, 8)]
    out = m.head(enc)
    assert [d.shape for d in out.dec] == [e.shape for e in enc]
    assert out.inps.shape == (2, 3, 32) and out.tokens.shape == (2, 64, 32)


def test_token_subset_decodes_same_values_as_full():
    m = InpFormer(tiny_cfg()).eval()
    enc = m.encode(torch.rand(2, 3, 64, 64))
    idx = torch.tensor([0, 5, 63])
    full = m.head(enc).dec
    sub = m.head(enc, idx).dec
    for f, s in zip(full, sub):
        assert torch.allclose(f.flatten(2)[:, :, idx], s, atol=1e-6)


def test_inp_attention_is_normalised_relu_cosine():
    att = InpAttention(32, 16)
    with torch.no_grad():
        att.scale.copy_(torch.tensor([2.0, 0.5]).view(2, 1, 1))
        att.q.bias.zero_()  # q(3x) = 3 q(x): normalisation must make that invisible
    x, p = torch.randn(1, 10, 32) * 50, torch.randn(1, 4, 32) * 50  # large inputs: q/k norms must not matter
    a = att.attention(x, p)
    assert a.shape == (1, 2, 10, 4)
    assert (a >= 0).all()
    assert a[0, 0].max() <= 2.0 + 1e-5 and a[0, 1].max() <= 0.5 + 1e-5
    assert torch.allclose(att.attention(x * 3, p), a, atol=1e-5)


def test_decoder_has_no_residual_around_attention():
    blk = DecoderBlock(32, 16, 2.0).eval()
    blk.attn.forward = lambda x, inps: torch.zeros_like(x)  # attention contributes nothing
    a = blk(torch.randn(1, 5, 32), torch.randn(1, 3, 32))
    b = blk(torch.randn(1, 5, 32) * 10, torch.randn(1, 3, 32))
    assert torch.allclose(a, b)  # the input token never leaks past the attention


def test_backbone_is_frozen_and_stays_in_eval():
    m = InpFormer(tiny_cfg()).train()
    assert not any(p.requires_grad for p in m.backbone.parameters())
    assert not m.backbone.training and m.head.training


def test_config_validation():
    with pytest.raises(ValueError):
        tiny_cfg(input_hw=(60, 64))
    with pytest.raises(ValueError):
        tiny_cfg(decoder_blocks=3)
    assert InpConfig.from_dict(tiny_cfg().to_dict()) == tiny_cfg()


def _format1(model: dict) -> InpConfig:
    """A format-1 model config as the model-dir owner upgrades it (lineinspect.model_meta.migrate)."""
    return InpConfig.from_dict(model_meta.migrate({"format_version": 1, "model": model})["model"])


def test_blur_kernel_sums_to_one_and_keeps_constants():
    k = gaussian_kernel1d(4.0)
    assert k.numel() == 33 and abs(float(k.sum()) - 1.0) < 1e-6
    assert torch.allclose(gaussian_blur(torch.full((1, 40, 40), 3.0), k), torch.full((1, 40, 40), 3.0), atol=1e-5)
    spike = torch.zeros(1, 41, 41)
    spike[0, 20, 20] = 1.0
    out = gaussian_blur(spike, k)
    assert abs(float(out.sum()) - 1.0) < 1e-4 and out[0, 20, 20] == out.max()


def test_graph_lean_helpers_give_the_values_of_what_they_replace():
    """unit / mean_of / resize_maps exist only to export fewer nodes: the values must be those of
    F.normalize, stack().mean(0) and interpolate + squeeze, bit for bit where the docstrings say so."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, 17, 32) * 5
    x[0, 0, 0] = 0.0  # the eps clamp of a zero row
    assert torch.equal(unit(x), F.normalize(x, dim=-1))
    a, b, c = torch.randn(3, 2, 9, 7).unbind(0)
    assert mean_of([a]) is a
    assert torch.equal(mean_of([a, b]), torch.stack([a, b]).mean(0))
    assert torch.allclose(mean_of([a, b, c]), torch.stack([a, b, c]).mean(0), atol=1e-6)
    assert resize_maps(a, (9, 7)) is a
    want = F.interpolate(a.unsqueeze(1), size=(18, 21), mode="bilinear", align_corners=False).squeeze(1)
    assert torch.equal(resize_maps(a, (18, 21)), want)
    ups = [F.interpolate(m.unsqueeze(1), size=(18, 14), mode="bilinear", align_corners=False) for m in (a, b)]
    assert torch.equal(fuse_maps([a, b], (18, 14)), torch.cat(ups, dim=1).mean(dim=1))


def test_top_one_percent_score():
    m = torch.zeros(1, 10, 20)  # 200 px -> top 2
    m[0, 0, 0], m[0, 3, 3], m[0, 5, 5] = 10.0, 6.0, 1.0
    assert float(topk_mean_score(m, 0.01)) == pytest.approx(8.0)


def _fit_targets(norm: str) -> tuple[InpFormer, list[torch.Tensor], list[torch.Tensor]]:
    m = InpFormer(tiny_cfg(feature_norm=norm)).eval()
    enc = m.encode(torch.rand(6, 3, 64, 64))
    enc[0][:, 0] = 7.0 + 1e-5 * torch.randn_like(enc[0][:, 0])  # a near-constant channel with a large offset
    m.head.fit_stats(enc)
    return m, enc, m.head.targets(enc)


def test_center_targets_have_zero_train_mean_and_keep_scale():
    _, enc, tgt = _fit_targets("center")
    for e, t in zip(enc, tgt):
        assert torch.allclose(t.mean(dim=(0, 2, 3)), torch.zeros(t.shape[1]), atol=1e-5)
        assert torch.allclose(t.std(dim=(0, 2, 3)), e.std(dim=(0, 2, 3)), atol=1e-5)  # not rescaled


def test_zscore_floor_does_not_amplify_near_constant_channels():
    _, _, z = _fit_targets("zscore")
    _, _, zf = _fit_targets("zscore_floor")
    assert float(z[0][:, 0].std()) > 0.9           # plain z-score blows the near-constant channel up to unit std
    assert float(zf[0][:, 0].std()) < 0.1          # the floor keeps it near zero
    sd = zf[0].std(dim=(0, 2, 3))
    assert float(sd.max()) <= 1.0 + 1e-4 and torch.allclose(zf[0].mean(dim=(0, 2, 3)), torch.zeros(sd.numel()), atol=1e-4)


def test_feature_norm_validation_and_old_configs():
    with pytest.raises(ValueError):
        tiny_cfg(feature_norm="minmax")
    d = tiny_cfg().to_dict()
    d.pop("feature_norm")
    assert _format1(d).feature_norm == "none"                          # before standardisation
    assert _format1({**d, "standardize": True}).feature_norm == "zscore"  # bool era
    assert _format1({**d, "feature_norm": "center"}).feature_norm == "center"


def test_map_metrics_from_one_reconstruction():
    m = InpFormer(tiny_cfg(feature_norm="zscore", map_metric="cos_len")).eval()
    enc = m.encode(torch.rand(2, 3, 64, 64))
    m.head.fit_stats(enc)
    lengths = m.head.typical_lengths()
    assert all(float(n) > 0 for n in lengths)
    assert torch.allclose(lengths[0], m.head.targets(enc)[0].norm(dim=1).median())
    out = m.head(enc)
    maps = {k: m.map_from_output(enc, out, k) for k in ("cos", "cos_len")}
    for amap, score in maps.values():
        assert amap.shape == (2, 64, 64) and score.shape == (2,) and torch.isfinite(amap).all()
    assert torch.allclose(m.score_features(enc)[1], maps["cos_len"][1])  # the configured default
    plain = InpFormer(tiny_cfg(feature_norm="zscore", map_metric="cos")).eval()
    with pytest.raises(ValueError, match="training-token lengths"):
        plain.score_features(enc, "cos_len")
    with pytest.raises(ValueError):
        tiny_cfg(map_metric="l2")


def test_length_weighted_cosine_discounts_tokens_near_the_mean():
    from inference.model.anomaly_map import (
        cosine_distance_map,
        length_weighted_cosine_map,
    )

    t = torch.zeros(1, 2, 1, 2)
    t[0, :, 0, 0] = torch.tensor([0.01, 0.0])   # near the normal mean: direction is noise
    t[0, :, 0, 1] = torch.tensor([3.0, 0.0])    # far from it
    r = torch.zeros(1, 2, 1, 2)
    r[0, :, 0, 0] = torch.tensor([0.0, 0.01])   # rebuilt at a right angle
    r[0, :, 0, 1] = torch.tensor([0.0, 3.0])    # rebuilt at a right angle
    cos = cosine_distance_map(t, r)[0, 0]
    w = length_weighted_cosine_map(t, r, 1.5)[0, 0]
    assert torch.allclose(cos, torch.tensor([1.0, 1.0]))            # plain cosine: equally anomalous
    assert torch.allclose(w, torch.tensor([0.01 / 1.5, 2.0]))       # weighted: only the long token


def test_old_model_configs_keep_plain_cosine():
    d = tiny_cfg().to_dict()
    d.pop("map_metric")
    assert _format1(d).map_metric == "cos" and InpConfig().map_metric == "cos_len"


def test_map_stride_scores_like_the_full_size_map_and_old_configs_keep_full_size():
    from inference.model.anomaly_map import anomaly_map_and_score

    torch.manual_seed(0)
    enc = [torch.rand(3, 8, 16, 16)]
    dec = [enc[0] + 0.3 * torch.rand(3, 8, 16, 16)]
    dec[0][1, :, 5, 7] += 3.0  # one anomalous token
    full_map, full_score = anomaly_map_and_score(enc, dec, (128, 128), gaussian_kernel1d(4.0))
    small_map, small_score = anomaly_map_and_score(enc, dec, (128, 128), gaussian_kernel1d(1.0), work_size=(32, 32))
    assert small_map.shape == full_map.shape == (3, 128, 128)
    assert torch.argmax(small_score) == torch.argmax(full_score) == 1
    assert torch.allclose(small_score, full_score, rtol=0.1)  # same ranking, scores within 10 %
    assert torch.corrcoef(torch.stack([small_map.flatten(), full_map.flatten()]))[0, 1] > 0.99
    d = tiny_cfg().to_dict()
    d.pop("map_stride")
    assert _format1(d).map_stride == 1 and InpConfig().map_stride == 4
    with pytest.raises(ValueError):
        tiny_cfg(map_stride=3)  # 64 is not a multiple of 3
