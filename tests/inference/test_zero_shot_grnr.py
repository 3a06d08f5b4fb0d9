"""GRNR pieces: the support excludes the patch, k-means priors, localisation on a planted anomaly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inference.model.anomaly_map import gaussian_kernel1d
from inference.zero_shot.grnr import (
    GrnrParams,
    expected_support,
    gather_neighbours,
    grnr_maps,
    grnr_token_map,
    kmeans,
    neighbour_offsets,
)


@pytest.mark.parametrize("window,guard", [(3, 0), (5, 1), (7, 1), (7, 2)])
def test_offsets_exclude_the_patch_and_its_guard(window: int, guard: int) -> None:
    off = neighbour_offsets(window, guard)
    assert off.shape == (expected_support(window, guard), 2)
    cheb = off.abs().max(dim=1).values
    assert bool((cheb > guard).all()) and int(cheb.max()) == window // 2
    assert len({tuple(o) for o in off.tolist()}) == off.shape[0]


def test_gathered_neighbourhood_never_contains_the_token_itself() -> None:
    h, w = 6, 7
    # one-hot position features: a token's own vector is orthogonal to every other token's
    feat = torch.eye(h * w).T.reshape(1, h * w, h, w)
    nb, valid = gather_neighbours(feat, neighbour_offsets(5, 0))
    own = (nb[0] * feat[0][:, None]).sum(0)          # (K, h, w): 1 where a neighbour is the token
    assert float(own.max()) == 0.0
    # interior tokens see the full support, border ones fewer (padding is masked out)
    assert int(valid[:, 3, 3].sum()) == expected_support(5, 0)
    assert int(valid[:, 0, 0].sum()) == 8


def test_unique_token_is_not_rebuilt_from_itself() -> None:
    """A lone odd vector in a uniform field must keep a large residual (it would be 0 if included)."""
    c, h, w = 8, 12, 12
    feat = torch.zeros(1, c, h, w)
    feat[:, 0] = 1.0
    feat[0, :, 6, 6] = torch.tensor([0.0, 1.0] + [0.0] * (c - 2))
    res = grnr_token_map(feat, GrnrParams(window=5, guard=0, n_centres=2))
    assert float(res[0, 6, 6]) > 0.9
    others = res[0].clone()
    others[6, 6] = 0
    assert float(others.max()) < 1e-3


def test_kmeans_finds_two_clusters_deterministically() -> None:
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.tensor([1.0, 0, 0]) + 0.05 * torch.randn(30, 3, generator=g), dim=1)
    b = F.normalize(torch.tensor([0, 1.0, 0]) + 0.05 * torch.randn(10, 3, generator=g), dim=1)
    x = torch.cat([a, b])
    c1, asg1 = kmeans(x, 2, 10)
    c2, asg2 = kmeans(x, 2, 10)
    assert torch.equal(asg1, asg2)
    assert len(set(asg1[:30].tolist())) == 1 and len(set(asg1[30:].tolist())) == 1 and asg1[0] != asg1[30]


def _periodic_features(h: int, w: int, c: int = 16, period: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    motifs = torch.randn(period, period, c, generator=g)
    yy, xx = torch.meshgrid(torch.arange(h) % period, torch.arange(w) % period, indexing="ij")
    f = motifs[yy, xx].permute(2, 0, 1)[None]
    return f + 0.05 * torch.randn(f.shape, generator=g)


def test_planted_anomaly_on_periodic_features_is_localised() -> None:
    feat = _periodic_features(24, 24)
    feat[0, :, 10:12, 15:17] = torch.randn(16, 2, 2, generator=torch.Generator().manual_seed(5)) * 2
    res = grnr_token_map(feat)[0]
    y, x = divmod(int(res.argmax()), res.shape[1])
    assert 10 <= y <= 11 and 15 <= x <= 16
    inside = res[10:12, 15:17].min()
    outside = torch.cat([res[:8].flatten(), res[14:].flatten()])
    assert float(inside) > float(outside.quantile(0.99))


def test_prior_reduces_self_support_of_a_multi_token_defect() -> None:
    """A 3x3 defect: purely local regression rebuilds it from itself; the global prior makes it stand out."""
    feat = _periodic_features(24, 24, seed=1)
    blob = torch.randn(16, generator=torch.Generator().manual_seed(9))[:, None, None] * 2
    feat[0, :, 8:11, 8:11] = blob + 0.05 * torch.randn(16, 3, 3, generator=torch.Generator().manual_seed(3))
    on = grnr_token_map(feat, GrnrParams(guard=0, prior_power=1.0))[0, 8:11, 8:11].mean()
    off = grnr_token_map(feat, GrnrParams(guard=0, prior_power=0.0))[0, 8:11, 8:11].mean()
    assert float(off) < 0.05 and float(on) > 0.3


def test_maps_have_input_size_and_scores_follow_the_maps() -> None:
    feats = [_periodic_features(16, 16, c=8, seed=s) for s in (0, 1)]
    odd = [f.clone() for f in feats]
    for f in odd:
        f[0, :, 5:7, 5:7] = 3.0
    maps, scores = grnr_maps([torch.cat([a, b]) for a, b in zip(feats, odd)], (64, 64), gaussian_kernel1d(4.0))
    assert maps.shape == (2, 64, 64) and scores.shape == (2,)
    assert float(scores[1]) > float(scores[0])


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        GrnrParams(window=4)
    with pytest.raises(ValueError):
        GrnrParams(window=5, guard=2)
    with pytest.raises(ValueError):
        grnr_token_map(torch.zeros(8, 4, 4))


def test_real_backbone_localises_a_spot_on_a_texture() -> None:
    """End to end through the frozen EfficientNet-Lite0: a dark blob on a woven texture."""
    from inference.engines.zero_shot import ZeroShotEngine

    yy, xx = np.mgrid[0:256, 0:256]
    tex = 128 + 50 * np.sin(xx / 3.0) * np.cos(yy / 3.0)
    img = np.repeat(np.clip(tex, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    bad = img.copy()
    cy, cx = 170, 80
    bad[(yy - cy) ** 2 + (xx - cx) ** 2 < 12 ** 2] = 20
    eng = ZeroShotEngine(method="grnr", batch_size=2)
    maps, scores = eng.raw_scores([img, bad])
    y, x = np.unravel_index(int(maps[1].argmax()), maps[1].shape)
    assert abs(y - cy) < 24 and abs(x - cx) < 24
    assert scores[1] > scores[0] * 1.5
