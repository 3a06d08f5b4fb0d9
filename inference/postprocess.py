"""From an engine's anomaly score/map to what is stored: verdict, binary mask, heatmap, area.

Pure functions shared by every engine path (local, Triton, zero-shot) so verdicts cannot drift.
The verdict rule is ``score >= threshold`` (the same rule the promotion gate measures).
Masks and heatmaps are stored at the *map's* resolution (the model input, e.g. 256x256), not the
frame's: the row records the frame's geometry (width, height) and the dashboard scales both onto
the frame. At 5 MP, encoding them at frame size cost 14.4 s per flagged frame; at map size they
are a few kB and milliseconds. The defect area is reported in frame pixels.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from inference.engines.base import EngineOutput
from inference.preprocess import map_to_frame
from storage.records import ResultRow

if TYPE_CHECKING:
    from ingest.envelope import FrameEnvelope as FrameLike

VERDICTS = ("ok", "defect")


def verdict(score: float, threshold: float) -> str:
    """``"defect"`` when ``score >= threshold``; a non-finite score is a defect (never silently ok)."""
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    if not math.isfinite(score):
        return "defect"
    return "defect" if score >= threshold else "ok"


def binary_mask(amap: np.ndarray, threshold_px: float, frame_hw: tuple[int, int] | None = None) -> np.ndarray:
    """bool: pixels of the map at or above ``threshold_px``, at the map's resolution, or resized
    to ``frame_hw`` first when given. (The pixel threshold is the image threshold: no calibration
    produces a separate one.)"""
    if amap.ndim != 2:
        raise ValueError(f"anomaly map must be 2-D, got shape {amap.shape}")
    m = np.nan_to_num(amap.astype(np.float32), nan=np.inf)
    return (map_to_frame(m, frame_hw) if frame_hw is not None else m) >= threshold_px


def defect_area(mask: np.ndarray, frame_hw: tuple[int, int] | None = None) -> int:
    """Defect pixels in a binary mask, in frame pixels when the mask is at map resolution."""
    n = int(np.count_nonzero(mask))
    if frame_hw is None or tuple(mask.shape[:2]) == tuple(frame_hw):
        return n
    return int(round(n * (frame_hw[0] * frame_hw[1]) / float(mask.shape[0] * mask.shape[1])))


# zlib level of the heatmap PNG: level 1 encodes a 256x256 heatmap in ~0.85 ms CPU (level 6: ~3.7 ms, the largest
# cost of a flagged frame's row) for ~13 kB instead of ~9 kB, beside the ~400 kB original frame a flagged row keeps;
# the pixels are the same (PNG is lossless). Masks (two values) stay at 6: a few hundred bytes, ~0.4 ms either way.
HEAT_PNG_LEVEL = 1
MASK_PNG_LEVEL = 6


def _png(gray: np.ndarray, level: int = MASK_PNG_LEVEL) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", gray, [cv2.IMWRITE_PNG_COMPRESSION, level])
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
    return _png(heat_u8(m, threshold), HEAT_PNG_LEVEL)


def build_row(env: FrameLike, frame_hw: tuple[int, int], out: EngineOutput, index: int, inferred_at: float,
              batch_size: int, engine_name: str, keep_flagged_frames: bool = True,
              keep_normal_margin: float = 0.8) -> ResultRow:
    """The stored row of one scored frame. Flagged frames get a mask and a heatmap at map
    resolution (encoded once, only for them) and keep the camera's original bytes as evidence
    (never a re-encoded frame); clearly normal frames keep their bytes as training samples."""
    score = float(out.scores[index])
    thr = float(out.threshold)
    h, w = int(frame_hw[0]), int(frame_hw[1])
    v = verdict(score, thr)
    name = engine_name if out.calibrated else f"{engine_name}:warmup"  # zero-shot threshold still warming up
    row = ResultRow(
        product=env.product, line=env.line, camera=env.camera, frame_id=env.frame_id,
        captured_at=env.capture_ts, inferred_at=inferred_at, score=score, threshold=thr, verdict=v,
        model_version=str(out.model_version), engine=name[:32], infer_ms=float(out.infer_ms),
        batch_size=batch_size, width=w, height=h, specimen_id=env.specimen_id, view=env.view,
        frame_encoding=env.encoding,
    )
    if v == "defect":
        amap = np.asarray(out.maps[index], dtype=np.float32)
        mask = binary_mask(amap, thr)
        row.defect_area_px = defect_area(mask, (h, w))
        row.mask_png = mask_png(mask)
        row.heat_png = heat_png(amap, thr) if thr > 0 else None
        if keep_flagged_frames:
            row.frame_bytes = env.payload
    elif score < keep_normal_margin * thr:
        row.keep_as_normal = True
        row.frame_bytes = env.payload
    return row
