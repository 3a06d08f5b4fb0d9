"""From an engine's anomaly score/map to what is stored: verdict, binary mask, heatmap, area.

Pure functions shared by every engine path (local, Triton, zero-shot) so verdicts cannot drift.
The verdict rule is ``score >= threshold`` (the same rule the promotion gate measures).
Maps come at the model's input resolution and are resized to the frame before thresholding, so
masks line up with the stored frame pixel for pixel.
"""

from __future__ import annotations

import math

import numpy as np

from inference.preprocess import map_to_frame

VERDICTS = ("ok", "defect")


def verdict(score: float, threshold: float) -> str:
    """``"defect"`` when ``score >= threshold``; a non-finite score is a defect (never silently ok)."""
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    if not math.isfinite(score):
        return "defect"
    return "defect" if score >= threshold else "ok"


def pixel_threshold(image_threshold: float, calibrated_pixel_threshold: float | None = None) -> float:
    """The pixel threshold: the calibration's own when it has one, else the image threshold."""
    return float(calibrated_pixel_threshold) if calibrated_pixel_threshold is not None else float(image_threshold)


def binary_mask(amap: np.ndarray, threshold_px: float, frame_hw: tuple[int, int]) -> np.ndarray:
    """bool (H, W): pixels of the map (resized to the frame) at or above ``threshold_px``."""
    if amap.ndim != 2:
        raise ValueError(f"anomaly map must be 2-D, got shape {amap.shape}")
    full = map_to_frame(np.nan_to_num(amap.astype(np.float32), nan=np.inf), frame_hw)
    return full >= threshold_px


def defect_area(mask: np.ndarray) -> int:
    """Number of defect pixels in a binary mask."""
    return int(np.count_nonzero(mask))


def _png(gray: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", gray, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise ValueError("OpenCV could not encode the PNG")
    return buf.tobytes()


def mask_png(mask: np.ndarray) -> bytes:
    """Single-channel 8-bit PNG, 0 = normal, 255 = defect."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    return _png(np.where(mask, 255, 0).astype(np.uint8))


def heat_u8(amap: np.ndarray, threshold: float) -> np.ndarray:
    """8-bit heat: 0..255 spans 0..2x threshold (128 = at the threshold), clipped."""
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a positive number, got {threshold}")
    scaled = np.nan_to_num(amap.astype(np.float32), nan=2 * threshold, posinf=2 * threshold, neginf=0.0)
    return np.clip(np.rint(scaled / (2.0 * threshold) * 255.0), 0, 255).astype(np.uint8)


def heat_png(amap: np.ndarray, threshold: float, frame_hw: tuple[int, int] | None = None) -> bytes:
    """The anomaly map as an 8-bit PNG (see :func:`heat_u8`), optionally resized to the frame."""
    if amap.ndim != 2:
        raise ValueError(f"anomaly map must be 2-D, got shape {amap.shape}")
    m = map_to_frame(amap, frame_hw) if frame_hw is not None else amap
    return _png(heat_u8(m, threshold))
