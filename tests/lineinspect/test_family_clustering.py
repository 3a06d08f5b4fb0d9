"""Leader clustering of defect-region embeddings: separable clusters, threshold, merges, names."""

from __future__ import annotations

import numpy as np
import pytest

from lineinspect.family_clustering import (
    THRESHOLD_MAX,
    THRESHOLD_MIN,
    FamilyClusterer,
    cluster,
    fit_threshold,
    nearest_neighbour_distances,
)


def blobs(k: int = 4, n: int = 30, dim: int = 64, spread: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``k`` well separated directions (random, nearly orthogonal in 64-d) with Gaussian spread."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(k), n)
    x = centres[y] + rng.normal(scale=spread / np.sqrt(dim), size=(k * n, dim))
    perm = rng.permutation(len(y))
    return x[perm], y[perm]


def ari(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_separable_clusters_are_recovered_without_k(seed):
    x, y = blobs(k=4, seed=seed)
    labels = cluster(x)  # threshold from the first 20 points, no k given
    assert len(np.unique(labels)) == 4
    assert ari(y, labels) == pytest.approx(1.0)


def test_threshold_is_factor_times_median_nn_distance_and_clipped():
    x, _ = blobs(k=3, n=20, spread=0.3)
    med = float(np.median(nearest_neighbour_distances(x)))
    assert fit_threshold(x, factor=1.0) == pytest.approx(np.clip(med, THRESHOLD_MIN, THRESHOLD_MAX))
    assert fit_threshold(x) == pytest.approx(np.clip(2 * med, THRESHOLD_MIN, THRESHOLD_MAX))
    dup = np.ones((5, 8))  # identical regions: nn distance 0 -> the floor, not a zero threshold
    assert fit_threshold(dup) == THRESHOLD_MIN
    rng = np.random.default_rng(0)
    unrelated = rng.normal(size=(10, 4))  # few dims, all directions: capped
    assert fit_threshold(unrelated, factor=50.0) == THRESHOLD_MAX
    with pytest.raises(ValueError):
        fit_threshold(x[:1])


def test_threshold_decides_join_or_new_family():
    e1, e2 = np.eye(3)[0], np.eye(3)[1]
    near = np.array([1.0, 0.2, 0.0])          # cos distance to e1 ~ 0.0194
    c = FamilyClusterer(threshold=0.05)
    assert c.assign(e1).new_family
    a = c.assign(near)
    assert not a.new_family and a.family_id == 1 and a.distance == pytest.approx(1 - 1 / np.sqrt(1.04))
    assert c.assign(e2).new_family             # distance 1 > 0.05
    tight = FamilyClusterer(threshold=0.01)    # the same point is now too far
    tight.assign(e1)
    assert tight.assign(near).new_family


def test_running_centroid_is_the_mean_direction():
    c = FamilyClusterer(threshold=0.5)
    for v in ([1.0, 0.0], [0.0, 1.0]):
        c.assign(np.array(v))
    # 90 degrees apart: distance 1 > 0.5, so two families; a third between joins the nearer one
    assert len(c.live) == 2
    c2 = FamilyClusterer(threshold=0.3)
    c2.assign(np.array([1.0, 0.0]))
    c2.assign(np.array([np.cos(0.5), np.sin(0.5)]))
    np.testing.assert_allclose(c2.live[0].centroid, [np.cos(0.25), np.sin(0.25)], atol=1e-9)
    assert c2.live[0].count == 2


def test_close_centroids_merge_into_the_older_family_and_names_survive():
    c = FamilyClusterer(threshold=0.1, merge_ratio=0.5)
    a, b = np.array([np.cos(0.0), np.sin(0.0)]), np.array([np.cos(0.46), np.sin(0.46)])  # distance ~0.104: two families
    assert c.assign(a).family_id == 1
    assert c.assign(b).family_id == 2
    c.families[1].name = "scratch"            # the operator named the younger one
    mid = np.array([np.cos(0.23), np.sin(0.23)])
    for _ in range(6):                        # members in between pull both centroids together
        got = c.assign(mid)
    assert c.merges and c.merges[0] == (2, 1)
    assert len(c.live) == 1 and got.family_id == 1
    assert c.resolve(2) == 1
    assert c.name_of(2) == "scratch" and c.name_of(1) == "scratch"
    assert c.live[0].count == 8


def test_name_sticks_to_new_members():
    x, y = blobs(k=2, n=10, seed=3)
    c = FamilyClusterer(threshold=fit_threshold(x))
    first = {int(t): c.assign(v).family_id for v, t in zip(x, y)}
    fam = next(f for f in c.live if f.id == first[0])
    fam.name = "blowhole"
    rng = np.random.default_rng(9)
    newcomer = x[y == 0].mean(axis=0) + rng.normal(scale=0.01, size=x.shape[1])
    got = c.assign(newcomer)
    assert not got.new_family and c.name_of(got.family_id) == "blowhole"
    other = c.assign(x[y == 1][0])
    assert c.name_of(other.family_id) is None


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        FamilyClusterer(threshold=0.0)
    with pytest.raises(ValueError):
        FamilyClusterer(threshold=float("nan"))
    c = FamilyClusterer(threshold=0.2)
    with pytest.raises(ValueError):
        c.assign(np.zeros(4))
    with pytest.raises(ValueError):
        c.assign(np.array([np.nan, 1.0]))
    assert c.families == []  # nothing half-added
