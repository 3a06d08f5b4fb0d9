"""MVTec-layout datasets: find categories, list a split, decode images and masks on demand.

Layout (one *category* folder)::

    <category>/train/good/*.png|jpg
    <category>/test/good/*
    <category>/test/<defect>/<stem>.<ext>
    <category>/ground_truth/<defect>/<stem>_mask.png

Categories usually sit two levels down (``<root>/<dataset>/<category>``) but any depth works, and
a root that *is* a category is accepted too, so a folder written by the simulator can be used as
is. Items decode lazily because a test split of full-resolution images does not need to sit in
memory while a model scores it batch by batch. Every listing is sorted, so runs are reproducible.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from lineinspect.errors import ConfigError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD = "good"
Split = Literal["train", "test"]


class DatasetError(ConfigError):
    """The dataset on disk does not match the MVTec layout, or a file cannot be decoded."""


def _is_category(path: Path) -> bool:
    return (path / "train" / GOOD).is_dir()


def discover(root: str | Path) -> list[str]:
    """Category names (``dataset/category``, relative to ``root``) found under an MVTec-layout root.

    A root that is itself a category yields ``[root.name]``; ``load_split(root, root.name)`` then works.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data root {root} does not exist or is not a folder")
    if _is_category(root):
        return [root.name]
    found = [p.parent.parent.relative_to(root).as_posix() for p in root.rglob(f"train/{GOOD}") if p.is_dir()]
    return sorted(c for c in found if c != ".")


def category_dir(root: str | Path, category: str | None = None) -> Path:
    """The folder of one category; ``category`` may be ``None`` when the root is the category."""
    root = Path(root)
    if category:
        cand = root / category
        if _is_category(cand) or (cand / "test").is_dir():
            return cand
    if _is_category(root) and (not category or category in (".", root.name) or root.as_posix().endswith(category)):
        return root
    try:
        known = discover(root)
    except DatasetError:
        known = []
    hint = f"; categories there: {', '.join(known)}" if known else ""
    what = f"category {category!r}" if category else "a category"
    raise DatasetError(f"{what} not found under {root} (expected <category>/train/good){hint}")


def read_image(path: str | Path) -> np.ndarray:
    """Decode any image file as RGB uint8 (H, W, 3): grayscale is repeated, alpha dropped, 16-bit scaled."""
    path = Path(path)
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)  # fromfile+imdecode copes with non-ASCII paths
    except OSError as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise DatasetError(f"cannot decode image {path} (corrupt or unsupported format)")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a ground-truth mask as bool (any non-zero pixel is defect).

    ``shape`` (H, W) resizes it (nearest) when the mask file disagrees with its image by a pixel
    or two, which happens in some public datasets; a larger disagreement is an error.
    """
    img = read_image(path)[:, :, 0]
    m = img > 0
    if shape is not None and m.shape != tuple(shape):
        h, w = shape
        if abs(m.shape[0] - h) > max(2, 0.02 * h) or abs(m.shape[1] - w) > max(2, 0.02 * w):
            raise DatasetError(f"mask {path} is {m.shape[1]}x{m.shape[0]} but its image is {w}x{h}")
        m = cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    return m


@dataclass(frozen=True)
class Item:
    """One image of a split; decoding happens only when asked."""

    path: Path
    label: int                 # 0 normal, 1 anomalous
    defect: str                # "good" for normal images
    mask_path: Path | None     # None for normal images

    def image(self) -> np.ndarray:
        return read_image(self.path)

    def mask(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Bool (H, W) mask; all False for a normal image. ``shape`` defaults to the image's size."""
        if shape is None:
            img = self.image()
            shape = (img.shape[0], img.shape[1])
        if self.mask_path is None:
            return np.zeros(shape, dtype=bool)
        return read_mask(self.mask_path, shape)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(image, mask) with the mask at the image's size, decoding the image once."""
        img = self.image()
        return img, self.mask((img.shape[0], img.shape[1]))


@dataclass
class CategorySplit:
    """The items of one split of one category, in sorted order."""

    root: Path
    category: str
    split: str
    items: list[Item] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __getitem__(self, i: int) -> Item:
        return self.items[i]

    @property
    def labels(self) -> np.ndarray:
        return np.array([it.label for it in self.items], dtype=np.int64)

    @property
    def defect_types(self) -> list[str]:
        return sorted({it.defect for it in self.items if it.label})

    def images(self) -> Iterator[np.ndarray]:
        for it in self.items:
            yield it.image()


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _find_mask(cat: Path, defect: str, stem: str) -> Path | None:
    gt = cat / "ground_truth" / defect
    for name in (f"{stem}_mask.png", f"{stem}.png", f"{stem}_mask.bmp", f"{stem}.bmp"):
        if (gt / name).is_file():
            return gt / name
    return None


def load_split(root: str | Path, category: str | None = None, split: Split = "train") -> CategorySplit:
    """List one split of a category.

    ``train`` is ``train/good`` only. ``test`` is every ``test/<type>`` folder; each non-good image
    must have a mask in ``ground_truth/<type>/`` (a missing mask is an error naming the file, since
    pixel metrics would silently be wrong otherwise).
    """
    if split not in ("train", "test"):
        raise DatasetError(f"split must be 'train' or 'test', not {split!r}")
    cat = category_dir(root, category)
    name = category or cat.name
    if split == "train":
        folder = cat / "train" / GOOD
        if not folder.is_dir():
            raise DatasetError(f"missing folder {folder}")
        items = [Item(p, 0, GOOD, None) for p in _images_in(folder)]
    else:
        test = cat / "test"
        if not test.is_dir():
            raise DatasetError(f"missing folder {test}")
        items = []
        for sub in sorted(p for p in test.iterdir() if p.is_dir()):
            for p in _images_in(sub):
                if sub.name == GOOD:
                    items.append(Item(p, 0, GOOD, None))
                    continue
                mask = _find_mask(cat, sub.name, p.stem)
                if mask is None:
                    raise DatasetError(
                        f"defect image {p} has no mask (expected {cat / 'ground_truth' / sub.name / (p.stem + '_mask.png')})"
                    )
                items.append(Item(p, 1, sub.name, mask))
    if not items:
        raise DatasetError(f"no images in the {split} split of {cat}")
    return CategorySplit(cat, name, split, items)


def _order_key(item: Item, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{item.path.name}".encode()).hexdigest()


def hold_out(items: Sequence[Item], fraction: float, seed: int = 0) -> tuple[list[Item], list[Item]]:
    """Split items into (kept, held_out) deterministically, e.g. train/good -> fit + calibration.

    Membership depends only on each file's name and ``seed`` (a hash), so adding images to the
    folder does not reshuffle which old images are held out. At least one item is held out when
    ``fraction > 0`` and at least one kept. Both lists keep the input's sorted order.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"hold-out fraction must be in [0, 1), not {fraction}")
    n = len(items)
    k = int(round(fraction * n))
    if fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    chosen = {id(it) for it in sorted(items, key=lambda it: _order_key(it, seed))[:k]}
    kept = [it for it in items if id(it) not in chosen]
    held = [it for it in items if id(it) in chosen]
    return kept, held
