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
    drifted: bool = False               # the camera had an open drift alarm: never training data
    extra: dict = field(default_factory=dict)

    def cache_dict(self) -> dict:
        """What :meth:`storage.cache.Cache.record_results` needs."""
        return {
            "product": self.product, "line": self.line, "camera": self.camera, "frame_id": self.frame_id,
            "score": self.score, "threshold": self.threshold, "verdict": self.verdict,
            "model_version": self.model_version, "captured_at": self.captured_at,
        }


@dataclass(frozen=True)
class ViewScore:
    """One stored frame result of a specimen, as fusion needs it."""

    result_id: int
    view: str          # the envelope's view, or the camera name when no view was given
    score: float
    threshold: float
    stored_at: float


@dataclass(frozen=True)
class SpecimenDecision:
    """One part's fused verdict (``inference.fusion.decide`` makes it, the store keeps the first one)."""

    product: str
    specimen_id: str
    expected_views: int
    received_views: int
    score: float       # fused score / threshold ratio
    threshold: float   # always 1.0 (ratios)
    verdict: str
    fusion: str
    complete: bool
    first_seen_at: float
    decided_at: float
    result_ids: list[int]
