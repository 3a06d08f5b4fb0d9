"""Pure helpers of the Families page."""

from __future__ import annotations

import numpy as np
import pytest

from dashboard.family_charts import crop, family_label, location_density, pareto_frame


def test_pareto_is_sorted_with_cumulative_share():
    rows = [{"product_id": 1, "product": "p", "family_id": 2, "name": None, "regions": 5, "frames": 4},
            {"product_id": 1, "product": "p", "family_id": 1, "name": "crack", "regions": 15, "frames": 9},
            {"product_id": 1, "product": "p", "family_id": None, "name": None, "regions": 5, "frames": 5}]
    df = pareto_frame(rows)
    assert df["label"].tolist() == ["#1 crack", "#2", "not grouped yet (warm-up)"]
    assert df["cumulative"].tolist() == pytest.approx([0.6, 0.8, 1.0])
    assert pareto_frame([]).empty
    assert family_label(3, "") == "#3"


def test_crop_keeps_the_region_and_some_context_inside_the_frame():
    img = np.arange(100 * 200).reshape(100, 200)
    c = crop(img, (0.5, 0.5, 0.6, 0.6), margin=0.5, min_px=1)
    assert c.shape == (20, 40)               # 10 x 20 px box grown by half its size on each side
    assert crop(img, (0.95, 0.95, 1.0, 1.0), min_px=48).shape[0] <= 100
    edge = crop(img, (0.0, 0.0, 0.01, 0.01), min_px=48)
    assert edge.shape[0] >= 24 and edge.shape[1] >= 24 and edge[0, 0] == 0


def test_location_density_peaks_where_the_centroids_are():
    d = location_density([(0.25, 0.75)] * 10 + [(0.9, 0.1)], grid=16)
    assert d.sum() == pytest.approx(1.0)
    y, x = np.unravel_index(int(np.argmax(d)), d.shape)
    assert (x, y) == (4, 12)
    assert location_density([]).sum() == 0
