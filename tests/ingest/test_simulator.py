"""The synthetic line: exact masks, determinism, distinct products, MVTec output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ingest.simulator import DEFECTS, LineSimulator, product_spec
from training.data import load_split
from training.metrics import image_auroc


@pytest.fixture(scope="module")
def sim() -> LineSimulator:
    return LineSimulator("widget", size=(96, 128), defect_rate=0.3, seed=3)


@pytest.mark.parametrize("defect", DEFECTS)
@pytest.mark.parametrize("product", ["widget", "fabric", "cap"])
def test_defect_changes_exactly_its_mask(product: str, defect: str) -> None:
    sim = LineSimulator(product, size=(96, 128), seed=1)
    for i in (0, 5):
        good = sim.frame(i, defect=None)
        bad = sim.frame(i, defect=defect)
        assert bad.defect == defect and good.defect is None and not good.mask.any()
        assert bad.image.shape == (96, 128, 3) and bad.image.dtype == np.uint8 and bad.mask.shape == (96, 128)
        diff = np.abs(bad.image.astype(int) - good.image.astype(int)).max(axis=2)
        assert not diff[~bad.mask].any(), "pixels outside the mask changed"
        assert bad.mask.sum() >= 10
        assert bad.mask.mean() < 0.05, "defects should be small"
        # Visible: most mask pixels moved by a clear margin.
        assert (diff[bad.mask] >= 12).mean() > 0.5, f"{defect} barely changes the image"


def test_frames_are_deterministic_and_vary(sim: LineSimulator) -> None:
    again = LineSimulator("widget", size=(96, 128), defect_rate=0.3, seed=3)
    for i in (0, 7, 123):
        a, b = sim.frame(i), again.frame(i)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.defect == b.defect
    f0, f1 = sim.frame(0, defect=None).image, sim.frame(1, defect=None).image
    assert np.abs(f0.astype(int) - f1.astype(int)).mean() > 2  # pose/lighting/noise differ per frame
    other_seed = LineSimulator("widget", size=(96, 128), seed=4).frame(0, defect=None).image
    assert not np.array_equal(f0, other_seed)


def test_defect_rate_and_auto_choice(sim: LineSimulator) -> None:
    frames = [sim.frame(i) for i in range(120)]
    n_bad = sum(f.defect is not None for f in frames)
    assert 15 <= n_bad <= 60  # rate 0.3
    assert {f.defect for f in frames if f.defect} == set(DEFECTS)
    assert all(f.mask.any() == (f.defect is not None) for f in frames)
    assert not any(LineSimulator("cap", size=(64, 64), defect_rate=0.0).frame(i).defect for i in range(20))
    assert len(sim.normal_frames(3)) == 3


def test_products_look_different() -> None:
    imgs = {p: LineSimulator(p, size=(96, 96)).frame(0, defect=None).image.astype(float) for p in ("widget", "fabric", "cap", "gizmo-12")}
    names = list(imgs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(imgs[a] - imgs[b]).mean() > 10, (a, b)
    assert product_spec("gizmo-12") == product_spec("gizmo-12")
    assert product_spec("gizmo-12").text != product_spec("gizmo-13").text


def test_mean_intensity_does_not_reveal_defects() -> None:
    sim = LineSimulator("widget", size=(96, 96), seed=0)
    good = [sim.frame(i, defect=None).image.mean() for i in range(40)]
    bad = [sim.frame(100 + i, defect=DEFECTS[i % 4]).image.mean() for i in range(40)]
    auc = image_auroc(np.r_[np.zeros(40), np.ones(40)], np.r_[good, bad])
    assert 0.2 < auc < 0.8


def test_non_square_and_bad_arguments() -> None:
    f = LineSimulator("fabric", size=(80, 200)).frame(2, defect="crack")
    assert f.image.shape == (80, 200, 3) and f.mask.shape == (80, 200) and f.mask.any()
    with pytest.raises(ValueError, match="defect"):
        LineSimulator(size=(64, 64)).frame(0, defect="dent")
    with pytest.raises(ValueError, match="size"):
        LineSimulator(size=(8, 64))
    with pytest.raises(ValueError, match="defect_rate"):
        LineSimulator(defect_rate=2)


def test_write_mvtec_round_trips_through_the_loader(tmp_path: Path) -> None:
    sim = LineSimulator("cap", size=(64, 96), seed=2)
    root = sim.write_mvtec(tmp_path / "sim" / "cap", n_train=3, n_test_good=2, n_test_defect=5)
    train = load_split(root, None, "train")
    test = load_split(root, None, "test")
    assert len(train) == 3 and len(test) == 7 and test.labels.sum() == 5
    assert test.defect_types == sorted(DEFECTS)
    scratch = next(it for it in test if it.defect == "scratch")
    img, mask = scratch.load()
    expected = sim.frame(2_000_000, defect="scratch")
    assert np.array_equal(img, expected.image) and np.array_equal(mask, expected.mask)
