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
