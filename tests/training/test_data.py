"""MVTec-layout loading on tiny folders written to tmp_path (plus a read-only look at the real data)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from training.data import DatasetError, discover, hold_out, load_split, read_image


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def _make_category(cat: Path, h: int = 24, w: int = 40) -> None:
    rng = np.random.default_rng(0)
    for i in range(5):
        _write(cat / "train" / "good" / f"{i:03d}.png", rng.integers(0, 255, (h, w), dtype=np.uint8))  # grayscale
    _write(cat / "test" / "good" / "000.jpg", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    for defect in ("scratch", "dent"):
        for i in (1, 0):
            _write(cat / "test" / defect / f"{i:03d}.png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            m = np.zeros((h, w), np.uint8)
            m[2 : 5 + i, 3:9] = 255
            _write(cat / "ground_truth" / defect / f"{i:03d}_mask.png", m)


def test_discover_nested_and_category_root(tmp_path: Path) -> None:
    _make_category(tmp_path / "ds_b" / "cat2")
    _make_category(tmp_path / "ds_a" / "cat1")
    (tmp_path / "notes").mkdir()
    assert discover(tmp_path) == ["ds_a/cat1", "ds_b/cat2"]
    assert discover(tmp_path / "ds_a" / "cat1") == ["cat1"]
    split = load_split(tmp_path / "ds_a" / "cat1", "cat1", "train")
    assert len(split) == 5
    assert load_split(tmp_path / "ds_a" / "cat1", None, "test").category == "cat1"
    with pytest.raises(DatasetError, match="ds_a/cat1"):
        load_split(tmp_path, "nope", "train")
    with pytest.raises(DatasetError, match="does not exist"):
        discover(tmp_path / "missing")


def test_load_split_items_images_and_masks(tmp_path: Path) -> None:
    _make_category(tmp_path / "d" / "c")
    train = load_split(tmp_path, "d/c", "train")
    assert [it.path.name for it in train] == [f"{i:03d}.png" for i in range(5)]
    img = train[0].image()
    assert img.dtype == np.uint8 and img.shape == (24, 40, 3)
    assert (img[:, :, 0] == img[:, :, 2]).all()  # grayscale replicated
    test = load_split(tmp_path, "d/c", "test")
    assert [(it.defect, it.path.name) for it in test] == [
        ("dent", "000.png"), ("dent", "001.png"), ("good", "000.jpg"), ("scratch", "000.png"), ("scratch", "001.png")
    ]
    assert test.labels.tolist() == [1, 1, 0, 1, 1]
    assert test.defect_types == ["dent", "scratch"]
    img, mask = test[1].load()
    assert mask.dtype == bool and mask.shape == img.shape[:2] == (24, 40)
    assert mask.sum() == 4 * 6
    good_img, good_mask = test[2].load()
    assert not good_mask.any() and good_mask.shape == good_img.shape[:2]
    assert test[2].mask_path is None


def test_rgb_channel_order(tmp_path: Path) -> None:
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR
    _write(tmp_path / "x.png", bgr)
    rgb = read_image(tmp_path / "x.png")
    assert rgb[0, 0].tolist() == [200, 0, 0]


def test_clear_errors(tmp_path: Path) -> None:
    cat = tmp_path / "c"
    _make_category(cat)
    (cat / "ground_truth" / "dent" / "001_mask.png").unlink()
    with pytest.raises(DatasetError, match="001.png has no mask"):
        load_split(cat, None, "test")
    (cat / "train" / "good" / "broken.png").write_bytes(b"not an image")
    split = load_split(cat, None, "train")
    with pytest.raises(DatasetError, match="broken.png"):
        [it.image() for it in split]
    empty = tmp_path / "e"
    (empty / "train" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="missing folder"):
        load_split(empty, None, "test")
    with pytest.raises(DatasetError, match="no images"):
        load_split(empty, None, "train")
    with pytest.raises(DatasetError, match="split"):
        load_split(cat, None, "val")  # type: ignore[arg-type]


def test_mask_size_off_by_one_is_resized_but_far_off_is_an_error(tmp_path: Path) -> None:
    cat = tmp_path / "c"
    _make_category(cat)
    _write(cat / "ground_truth" / "dent" / "000_mask.png", np.full((25, 40), 255, np.uint8))
    img, mask = load_split(cat, None, "test")[0].load()
    assert mask.shape == img.shape[:2] and mask.all()
    _write(cat / "ground_truth" / "dent" / "000_mask.png", np.full((12, 20), 255, np.uint8))
    with pytest.raises(DatasetError, match="000_mask.png"):
        load_split(cat, None, "test")[0].load()


def test_hold_out_is_deterministic_and_stable(tmp_path: Path) -> None:
    cat = tmp_path / "c"
    _make_category(cat)
    items = load_split(cat, None, "train").items
    kept, held = hold_out(items, 0.4)
    assert len(held) == 2 and len(kept) == 3
    assert sorted(kept + held, key=lambda it: it.path) == items
    assert hold_out(items, 0.4) == (kept, held)
    assert hold_out(items, 0.4, seed=1) != (kept, held) or hold_out(items, 0.4, seed=2) != (kept, held)
    # Held-out membership does not depend on the other files in the folder.
    assert set(hold_out(items[:4], 0.01)[1]) <= set(hold_out(items, 0.99)[1])
    assert hold_out(items, 0.0) == (items, [])
    with pytest.raises(ValueError):
        hold_out(items, 1.0)


@pytest.mark.realdata
def test_real_data_layout(real_data: Path) -> None:
    cats = discover(real_data)
    assert len(cats) >= 1
    for cat in cats:
        test = load_split(real_data, cat, "test")
        assert test.labels.sum() > 0 and (test.labels == 0).sum() > 0
        img, mask = next(it for it in test if it.label).load()
        assert img.ndim == 3 and img.shape[2] == 3 and mask.shape == img.shape[:2]
