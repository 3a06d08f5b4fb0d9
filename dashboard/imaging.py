"""Image helpers for the dashboard: decode stored PNG/JPEG bytes, overlay an anomaly heatmap on
its frame, and accumulate binary defect masks into a per-product location map. Pure functions."""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np


def decode_image(data: bytes, grayscale: bool = False) -> np.ndarray:
    """Encoded bytes -> RGB uint8 (or single-channel with ``grayscale``)."""
    if not data:
        raise ValueError("empty image bytes")
    buf = np.frombuffer(data, np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("image bytes could not be decoded (not a PNG/JPEG?)")
    return img if grayscale else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def bounded_preview(frame: np.ndarray, max_side: int = 1024) -> np.ndarray:
    """The frame shrunk (area) so its longer side is at most ``max_side``: a 5-20 MP camera frame
    is overlaid and sent to the browser at preview size. Masks and heatmaps are stored at the
    model's map resolution and :func:`overlay_heatmap` scales them to whatever frame it gets, so
    the overlay stays aligned."""
    h, w = frame.shape[:2]
    s = max_side / max(h, w)
    if s >= 1.0:
        return frame
    return cv2.resize(frame, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def overlay_heatmap(frame_rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45,
                    mask: np.ndarray | None = None) -> np.ndarray:
    """Blend a colour-mapped 8-bit anomaly map onto the frame (resized to the frame), weighting
    the blend by the map itself so normal regions keep the frame's own look; draw the binary
    mask's outline when given."""
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3:
        raise ValueError(f"frame must be HxWx3 RGB, got shape {frame_rgb.shape}")
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {heat.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    h, w = frame_rgb.shape[:2]
    heat = cv2.resize(heat.astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB).astype(np.float32)
    weight = (alpha * heat.astype(np.float32) / 255.0)[..., None]
    out = frame_rgb.astype(np.float32) * (1.0 - weight) + colour * weight
    out = out.clip(0, 255).astype(np.uint8)
    if mask is not None:
        m = cv2.resize((mask > 0).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, min(h, w) // 200))
    return out


def accumulate_masks(pngs: Iterable[bytes], grid: tuple[int, int] = (64, 64)) -> tuple[np.ndarray, int]:
    """Mean of binary masks resized to ``grid`` (width, height): each cell is the fraction of
    defects covering that part of the product. Returns (map float32 in [0, 1], masks used);
    masks that fail to decode are skipped rather than sinking the whole map."""
    gw, gh = grid
    if gw <= 0 or gh <= 0:
        raise ValueError(f"grid must be positive, got {grid}")
    acc = np.zeros((gh, gw), np.float64)
    used = 0
    for data in pngs:
        try:
            m = decode_image(data, grayscale=True)
        except ValueError:
            continue
        # INTER_AREA turns a binary mask into per-cell coverage, so small defects still count
        acc += cv2.resize((m > 0).astype(np.float32), (gw, gh), interpolation=cv2.INTER_AREA)
        used += 1
    return (acc / used if used else acc).astype(np.float32), used


def colorize(map01: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """A [0, 1] map as an RGB image (normalised to its own maximum), optionally resized (w, h)."""
    top = float(map01.max()) if map01.size else 0.0
    u8 = (map01 / top * 255.0).astype(np.uint8) if top > 0 else np.zeros(map01.shape, np.uint8)
    if size is not None:
        u8 = cv2.resize(u8, size, interpolation=cv2.INTER_NEAREST)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
