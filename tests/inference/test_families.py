"""Region embeddings and the incremental leader clustering on synthetic features."""

from __future__ import annotations

import numpy as np
import pytest

from inference.families import (
    LeaderClustering,
    encoder_grid,
    nn_distance_threshold,
    purity,
    regions,
)


def test_regions_pool_the_cells_under_each_component_largest_first():
    grid = np.zeros((8, 8, 4), np.float32)
    grid[..., 0] = 1.0
    grid[0:2, 0:2] = [0, 1, 0, 0]     # top-left region looks like direction 1
    grid[5:8, 5:8] = [0, 0, 1, 0]     # bottom-right, larger, direction 2
    mask = np.zeros((64, 64), bool)
    mask[0:16, 0:16] = True
    mask[40:64, 40:64] = True
    regs = regions(mask, grid, min_area_px=4)
    assert [r.area_px for r in regs] == [576, 256]
    assert regs[0].bbox == (40, 40, 24, 24) and regs[0].centroid == pytest.approx((52 / 64 - 0.5 / 64, 52 / 64 - 0.5 / 64), abs=0.01)
    assert np.argmax(regs[0].embedding) == 2 and np.argmax(regs[1].embedding) == 1
    assert all(abs(np.linalg.norm(r.embedding) - 1) < 1e-5 for r in regs)


def test_per_block_grids_of_different_resolutions_weigh_the_same():
    coarse = np.zeros((8, 8, 4), np.float32)
    coarse[..., 0] = 1.0
    coarse[5:8, 5:8] = [0, 0, 1, 0]          # the region differs strongly here ...
    fine = np.zeros((32, 32, 2), np.float32)
    fine[..., 0] = 1.0
    fine[20:32, 20:32] = [0, 0.1]            # ... and only a little here: per-block unit length evens it out
    mask = np.zeros((64, 64), bool)
    mask[40:64, 40:64] = True
    reg, = regions(mask, [coarse, fine], min_area_px=4)
    e = reg.embedding
    assert e.shape == (6,) and abs(np.linalg.norm(e) - 1) < 1e-5
    assert np.linalg.norm(e[:4]) == pytest.approx(np.linalg.norm(e[4:]), rel=1e-4)  # each block 1/sqrt(2)
    assert np.argmax(e[:4]) == 2 and np.argmax(e[4:]) == 1


def test_encoder_grid_normalises_every_group():
    g = encoder_grid([np.ones((3, 2, 2)) * 5, np.ones((2, 2, 2))])
    assert g.shape == (2, 2, 5)
    assert np.linalg.norm(g[0, 0, :3]) == pytest.approx(1.0) and np.linalg.norm(g[0, 0, 3:]) == pytest.approx(1.0)


def _blobs(rng, centers, n, noise):
    labels, vecs = [], []
    for _ in range(n):
        k = int(rng.integers(len(centers)))
        v = centers[k] + rng.normal(0, noise, centers.shape[1])
        vecs.append(v / np.linalg.norm(v))
        labels.append(k)
    return labels, vecs


def test_leader_clustering_finds_the_groups_without_their_number():
    rng = np.random.default_rng(0)
    centers = np.eye(5, 32) * 3 + rng.normal(0, 0.1, (5, 32))
    labels, vecs = _blobs(rng, centers, 200, 0.15)
    lc = LeaderClustering(warmup=30)
    pred: list[int] = []
    for v in vecs:
        pred += lc.add(v)
    assert len(pred) == 200
    assert len([f for f in lc.families if f.count >= 5]) == 5  # the five groups (a stray may found its own)
    assert purity(labels, pred) == 1.0


def test_restored_families_keep_their_names_and_warmup_flushes():
    rng = np.random.default_rng(1)
    centers = np.eye(2, 16) * 3
    _, vecs = _blobs(rng, centers, 10, 0.1)
    lc = LeaderClustering(warmup=30)
    assert all(lc.add(v) == [] for v in vecs)
    assert len(lc.flush()) == 10 and lc.threshold is not None
    lc.families[0].name = "scratch"
    again = LeaderClustering(threshold=lc.threshold, families=lc.families)
    fam = again.add(lc.families[0].centroid)
    assert fam == [lc.families[0].id] and again.families[0].name == "scratch"
    with pytest.raises(ValueError):
        nn_distance_threshold(np.ones((1, 3)))


def test_the_encoder_pass_runs_on_one_torch_thread_and_restores_the_count() -> None:
    import torch

    from inference.families import one_torch_thread

    before = torch.get_num_threads()
    with one_torch_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
