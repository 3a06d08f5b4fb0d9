import pytest
import torch

from training.patchcore import fit_bank, patch_features, score


def test_training_patches_score_zero_and_an_odd_patch_scores_high():
    torch.manual_seed(0)
    train = [torch.randn(4, 6, 8, 8)]
    feats = patch_features(train)
    bank = fit_bank(feats, fraction=1.0)
    assert bank.bank.shape == (4 * 64, 6)
    maps, scores = score(bank, feats[:1], (32, 32))
    assert maps.shape == (1, 32, 32) and float(scores[0]) < 1e-3
    odd = feats[:1].clone()
    odd[0, :, 3, 3] += 20.0
    _, s2 = score(bank, odd, (32, 32))
    assert float(s2[0]) > 1.0


def test_subsample_is_seeded():
    f = torch.randn(2, 3, 4, 4)
    assert torch.equal(fit_bank(f, 0.25, seed=1).bank, fit_bank(f, 0.25, seed=1).bank)
    assert fit_bank(f, 0.25).bank.shape[0] == 8


def test_greedy_coreset_covers_a_rare_outlier_and_is_seeded():
    from training.patchcore import greedy_coreset

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(2000, 200, generator=g) * 0.1, torch.full((1, 200), 5.0)])
    idx = greedy_coreset(x, 8, seed=1)
    assert len(set(idx.tolist())) == 8 and 2000 in idx.tolist()  # a random 8 of 2001 would almost never hold it
    assert torch.equal(idx, greedy_coreset(x, 8, seed=1))
    with pytest.raises(ValueError):
        greedy_coreset(x, 0)


def _clustered(n_clusters: int = 40, per: int = 60, dim: int = 152, seed: int = 0) -> torch.Tensor:
    """Patch-like data: tight clusters of varied size and spread (real patch features are clustered,
    which is what the fast coreset's pruning relies on), plus a few isolated rows."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, dim, generator=g) * 3.0
    spread = torch.rand(n_clusters, 1, generator=g) * 0.5 + 0.05
    x = (centres.repeat_interleave(per, 0) + torch.randn(n_clusters * per, dim, generator=g)
         * spread.repeat_interleave(per, 0))
    return torch.cat([x, torch.randn(5, dim, generator=g) * 6.0])


def test_fast_greedy_coreset_picks_what_the_plain_greedy_picks():
    from training.patchcore import greedy_coreset, greedy_coreset_reference

    x = _clustered()
    for seed in (0, 3):
        fast = greedy_coreset(x, 150, seed=seed)
        assert torch.equal(fast, greedy_coreset_reference(x, 150, seed=seed))
        # the pruned path and the always-dense path agree as well
        assert torch.equal(fast, greedy_coreset(x, 150, seed=seed, dense_share=0.0))
        assert len(set(fast.tolist())) == 150


def test_projected_coreset_covers_as_well_as_the_unprojected_one_and_better_than_random():
    from training.patchcore import covering_radius, greedy_coreset

    x = _clustered()
    k = 120
    projected = covering_radius(x, greedy_coreset(x, k, seed=1, proj_dim=128))
    exact = covering_radius(x, greedy_coreset(x, k, seed=1, proj_dim=x.shape[1]))  # no projection
    g = torch.Generator().manual_seed(1)
    random = covering_radius(x, torch.randperm(x.shape[0], generator=g)[:k])
    assert projected <= 1.15 * exact
    assert projected < 0.8 * random
