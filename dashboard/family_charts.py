"""Pure helpers of the Families page (no Streamlit): Pareto table, example crops, location density."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pandas as pd


def family_label(family_id: int | None, name: str | None) -> str:
    if family_id is None:
        return "not grouped yet (warm-up)"
    return f"#{family_id} {name}" if name else f"#{family_id}"


def pareto_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One product's Pareto rows, most regions first, with the cumulative share (0..1)."""
    df = pd.DataFrame(rows, columns=["product_id", "product", "family_id", "name", "regions", "frames"])
    if df.empty:
        return df.assign(label=[], share=[], cumulative=[])
    df = df.sort_values(["regions", "family_id"], ascending=[False, True], na_position="last").reset_index(drop=True)
    df["label"] = [family_label(None if pd.isna(f) else int(f), n if isinstance(n, str) else None)
                   for f, n in zip(df["family_id"], df["name"])]
    total = float(df["regions"].sum())
    df["share"] = df["regions"] / total
    df["cumulative"] = df["regions"].cumsum() / total
    return df


def crop(image: np.ndarray, box: tuple[float, float, float, float], margin: float = 0.5, min_px: int = 48) -> np.ndarray:
    """The region's box (relative x0, y0, x1, y1) grown by ``margin`` of its size on each side
    (at least ``min_px``), clipped to the image: the defect with a little of its surroundings."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    bw, bh = max(1.0, (x1 - x0) * w), max(1.0, (y1 - y0) * h)
    mx, my = max(margin * bw, (min_px - bw) / 2, 0), max(margin * bh, (min_px - bh) / 2, 0)
    a, b = int(max(0, np.floor(x0 * w - mx))), int(max(0, np.floor(y0 * h - my)))
    c, d = int(min(w, np.ceil(x1 * w + mx))), int(min(h, np.ceil(y1 * h + my)))
    return image[b:max(d, b + 1), a:max(c, a + 1)]


def location_density(points: list[tuple[float, float]], grid: int = 32, sigma_cells: float = 1.0) -> np.ndarray:
    """(grid, grid) density of region centroids (relative x, y), lightly smoothed, summing to 1."""
    if not points:
        return np.zeros((grid, grid), np.float32)
    pts = np.asarray(points, dtype=np.float64)
    hist, _, _ = np.histogram2d(pts[:, 1], pts[:, 0], bins=grid, range=[[0.0, 1.0], [0.0, 1.0]])
    if sigma_cells > 0:
        hist = cv2.GaussianBlur(hist, (0, 0), sigma_cells, borderType=cv2.BORDER_CONSTANT)
    total = hist.sum()
    return (hist / total if total > 0 else hist).astype(np.float32)
