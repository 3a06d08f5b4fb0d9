"""Plain records crossing the inference -> storage seam (no ORM objects leak out of storage)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ResultRow:
    """One scored frame, ready to store. ``(camera, frame_id)`` is the idempotency key."""

    product: str
    line: str
    camera: str
    frame_id: int
    captured_at: float          # epoch s (camera clock)
    inferred_at: float          # epoch s
    score: float
    threshold: float
    verdict: str                # "ok" | "defect"
    model_version: str
    engine: str
    infer_ms: float
    batch_size: int
    width: int
    height: int
    defect_area_px: int = 0
    specimen_id: str | None = None
    view: str | None = None
    mask_png: bytes | None = None       # binary mask (defect frames only), map resolution; width/height say the frame
    heat_png: bytes | None = None       # 8-bit anomaly heatmap (defect frames only), map resolution
    frame_bytes: bytes | None = None    # encoded frame, kept for flagged frames / training samples
    frame_encoding: str = "jpeg"
    keep_as_normal: bool = False        # clearly normal: keep frame_bytes as a training sample
    extra: dict = field(default_factory=dict)

    def cache_dict(self) -> dict:
        """What :meth:`storage.cache.Cache.record_results` needs."""
        return {
            "product": self.product, "line": self.line, "camera": self.camera, "frame_id": self.frame_id,
            "score": self.score, "threshold": self.threshold, "verdict": self.verdict,
            "model_version": self.model_version, "captured_at": self.captured_at,
        }
