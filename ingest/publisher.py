"""Camera side: encode frames, wrap them in envelopes, publish them keyed by camera.

Frame ids are per camera and strictly increasing, because ``(camera, frame_id)`` is the result
store's idempotency key: a reused id would be taken for a redelivery and silently dropped.
After a restart a camera resumes either from an explicit ``first_frame_id`` (e.g. the last stored
id + 1) or, by default, from the wall-clock id ``int(time.time() * 1000)``. The default is safe as
long as the camera averaged fewer than 1000 frames/s since its previous start and the clock does
not step back; otherwise pass ``first_frame_id``.
"""

from __future__ import annotations

import time

import numpy as np

from ingest.bus.base import Publisher
from ingest.envelope import Encoding, FrameEnvelope, check_names, encode_image
from lineinspect.names import check_name
from lineinspect.settings import Settings


def time_based_frame_id(now: float | None = None) -> int:
    """Milliseconds since the epoch: a restart-safe starting id for a camera (see the module doc)."""
    return int((time.time() if now is None else now) * 1000)


def check_options(encoding: str, quality: int, first_frame_id: int | None = None) -> None:
    """The encoding options a :class:`FramePublisher` accepts (ValueError, its message starting with the
    option's name as ``lineinspect publish`` spells it); callable before a bus is opened, so a command can
    refuse them first."""
    if encoding not in ("jpeg", "png"):
        raise ValueError(f"encoding must be jpeg or png (got {encoding!r})")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be within 1..100 (got {quality})")
    if first_frame_id is not None and int(first_frame_id) < 0:
        raise ValueError(f"first-frame-id must be >= 0 (got {first_frame_id})")


class FramePublisher:
    """Publishes one camera's frames of one product on one line."""

    def __init__(self, settings: Settings, product: str, line: str, camera: str, publisher: Publisher,
                 first_frame_id: int | None = None, encoding: Encoding = "jpeg", quality: int = 92) -> None:
        for kind, v in (("product", product), ("line", line), ("camera", camera)):
            check_name(kind, v)  # the consumer would dead-letter every frame: refuse at the camera
        check_options(encoding, quality, first_frame_id)
        start = time_based_frame_id() if first_frame_id is None else int(first_frame_id)
        self.settings = settings
        self.product, self.line, self.camera = product, line, camera
        self.publisher = publisher
        self.encoding: Encoding = encoding
        self.quality = quality
        self.next_frame_id = start
        self.published = 0

    def envelope(self, image: np.ndarray, capture_ts: float | None = None, specimen_id: str | None = None,
                 view: str | None = None) -> FrameEnvelope:
        """Encode ``image`` (RGB or grayscale uint8) into the next envelope (does not publish)."""
        if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.dtype != np.uint8:
            raise ValueError("frame must be a uint8 (H, W) or (H, W, 3) array")
        payload = encode_image(image, self.encoding, self.quality)
        env = FrameEnvelope(product=self.product, line=self.line, camera=self.camera, frame_id=self.next_frame_id,
                            payload=payload, encoding=self.encoding, shape=tuple(int(d) for d in image.shape),
                            capture_ts=time.time() if capture_ts is None else float(capture_ts),
                            specimen_id=specimen_id, view=view)
        check_names(env)
        return env

    def publish(self, image: np.ndarray, capture_ts: float | None = None, specimen_id: str | None = None,
                view: str | None = None) -> FrameEnvelope:
        """Encode and publish one frame; the id advances only when the bus accepted the message."""
        env = self.envelope(image, capture_ts, specimen_id, view)
        key, value, headers = env.to_message()
        self.publisher.publish(key, value, headers)
        self.next_frame_id += 1
        self.published += 1
        return env

    def flush(self, timeout_s: float | None = None) -> None:
        self.publisher.flush(timeout_s)

    def close(self) -> None:
        self.publisher.flush(30.0)
        self.publisher.close()
