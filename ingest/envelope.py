"""The frame envelope: one camera frame plus what is needed to route, order and audit it.

Wire format (Kafka and the in-memory bus alike):
  * key     = ``camera`` (UTF-8) so one camera's frames stay in one partition, in order;
  * value   = the encoded image bytes (JPEG or PNG), untouched;
  * headers = ``li-v`` (envelope version) and ``li-meta`` (compact JSON of the metadata below).

Keeping the image as the raw value (not base64 inside JSON) keeps messages small: a 1-2 MP JPEG
is 100-400 kB, well under the 8 MiB limit configured consistently on broker, producer and
consumer (see ``Settings.max_message_bytes``). Larger frames are refused at publish time with a
clear error rather than silently failing inside the client.

Version history:
  * v1: product, line, camera, frame_id, capture_ts, encoding, shape.
  * v2: + optional ``specimen_id`` and ``view`` (multi-camera specimen fusion). v1 messages are
    still accepted (the new fields default to ``None``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from lineinspect.names import InvalidName, check_frame_names, check_name

ENVELOPE_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
Encoding = Literal["jpeg", "png"]


class PoisonFrame(ValueError):
    """A message that can never be processed. ``reason`` is a short machine-readable code."""

    MAX_DETAIL = 300  # a hostile message must not produce a huge log line or DLQ header

    def __init__(self, reason: str, detail: str = "") -> None:
        detail = detail if len(detail) <= self.MAX_DETAIL else detail[: self.MAX_DETAIL] + "..."
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class FrameEnvelope:
    product: str
    line: str
    camera: str
    frame_id: int
    payload: bytes = field(repr=False)
    encoding: Encoding = "jpeg"
    shape: tuple[int, ...] = ()  # (H, W) or (H, W, C) of the decoded image
    capture_ts: float = field(default_factory=time.time)  # seconds since epoch, UTC
    specimen_id: str | None = None
    view: str | None = None
    version: int = ENVELOPE_VERSION

    # --- wire ---------------------------------------------------------------------------
    def meta(self) -> dict:
        d = asdict(self)
        d.pop("payload")
        d["shape"] = list(self.shape)
        return d

    def to_message(self) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        """(key, value, headers) for a bus."""
        meta = self.meta()
        headers = [
            ("li-v", str(self.version).encode()),
            ("li-meta", json.dumps(meta, separators=(",", ":")).encode()),
        ]
        return self.camera.encode(), self.payload, headers

    @classmethod
    def from_message(cls, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None) -> FrameEnvelope:
        """Parse a bus message; raises :class:`PoisonFrame` with a reason for anything malformed."""
        hdr = {k: v for k, v in (headers or [])}
        if "li-meta" not in hdr:
            raise PoisonFrame("bad_envelope", "missing li-meta header")
        raw = hdr["li-meta"]
        if not isinstance(raw, (bytes, bytearray)):
            raise PoisonFrame("bad_envelope", f"li-meta header is {type(raw).__name__}, not bytes")
        try:
            meta = json.loads(bytes(raw).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise PoisonFrame("bad_envelope", f"li-meta is not JSON: {exc}") from None
        if not isinstance(meta, dict):
            raise PoisonFrame("bad_envelope", "li-meta is not an object")
        version = meta.get("version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_VERSIONS:
            raise PoisonFrame("bad_envelope", f"unsupported envelope version {version!r}")
        if not value:
            raise PoisonFrame("empty_payload", "message has no image bytes")
        encoding = meta.get("encoding", "jpeg")
        if encoding not in ("jpeg", "png"):
            raise PoisonFrame("bad_encoding", f"encoding {str(encoding)[:40]!r} is not jpeg or png")
        try:
            env = cls(
                product=_req_name(meta, "product"),
                line=_req_name(meta, "line"),
                camera=_req_name(meta, "camera"),
                frame_id=_req_int(meta, "frame_id"),
                payload=bytes(value),
                encoding=encoding,
                shape=_shape(meta.get("shape")),
                capture_ts=_timestamp(meta.get("capture_ts", time.time())),
                specimen_id=_opt_name(meta, "specimen_id", "specimen"),
                view=_opt_name(meta, "view", "view"),
                version=version,
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise PoisonFrame("bad_envelope", str(exc)) from None
        if key is not None and key.decode("utf-8", "replace") != env.camera:
            raise PoisonFrame("bad_envelope", "message key does not match camera")
        return env

    @property
    def key(self) -> tuple[str, int]:
        """The idempotency key: redelivery of the same (camera, frame_id) is harmless."""
        return (self.camera, self.frame_id)


def _req_name(meta: dict, name: str) -> str:
    """A name field under the one name rule (lineinspect.names), sized to its column."""
    return _opt_name(meta, name, name, required=True) or ""


def _opt_name(meta: dict, field_name: str, kind: str, required: bool = False) -> str | None:
    v = meta.get(field_name)
    if v is None and not required:  # optional fields (specimen_id, view) may be absent
        return None
    try:
        return check_name(kind, v)
    except InvalidName as exc:
        raise ValueError(f"field {field_name!r}: {exc}") from None


def check_names(env: FrameEnvelope) -> None:
    """Raise :class:`lineinspect.names.InvalidName` unless every name of ``env`` obeys the name rule
    (the publisher checks before sending, the consumer's parser on receipt)."""
    check_frame_names(env.product, env.line, env.camera, env.specimen_id, env.view)


def _req_int(meta: dict, name: str) -> int:
    v = meta.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63:
        raise ValueError(f"field {name!r} must be an integer in [0, 2^63) (a BIGINT)")
    return v


def _shape(v: object) -> tuple[int, ...]:
    if v is None or v == []:
        return ()
    if not isinstance(v, list) or len(v) > 4:
        raise ValueError("field 'shape' must be a list of at most 4 integers")
    out = []
    for d in v:
        if isinstance(d, bool) or not isinstance(d, (int, float)):
            raise ValueError("field 'shape' must hold numbers")
        out.append(int(d))  # inf -> OverflowError ("cannot convert float infinity"), NaN -> ValueError
    return tuple(out)


def _timestamp(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("field 'capture_ts' must be a number (epoch seconds)")
    ts = float(v)  # a huge int -> OverflowError "int too large to convert to float"
    if not math.isfinite(ts):
        raise ValueError("field 'capture_ts' must be finite")
    return ts


def encode_image(image: np.ndarray, encoding: Encoding = "jpeg", quality: int = 92) -> bytes:
    """Encode an RGB (H,W,3) or grayscale (H,W) uint8 image."""
    import cv2

    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(".jpg" if encoding == "jpeg" else ".png", bgr,
                           [cv2.IMWRITE_JPEG_QUALITY, quality] if encoding == "jpeg" else [])
    if not ok:
        raise ValueError("OpenCV could not encode the image")
    return buf.tobytes()


_SIGNATURES = {"jpeg": b"\xff\xd8", "png": b"\x89PNG\r\n\x1a\n"}


JPEG_SCALES = (8, 4, 2)  # the DCT scalings libjpeg offers (and OpenCV exposes as IMREAD_REDUCED_*)


# A non-exact axis keeps at least this multiple of the model input (see choose_jpeg_scale; the
# settings' ``decode_oversample`` defaults to it): 4 is what the 3-seed AUROC run supports.
DECODE_OVERSAMPLE = 4.0


def choose_jpeg_scale(src_hw: tuple[int, int], target_hw: tuple[int, int] | None,
                      oversample: float = DECODE_OVERSAMPLE) -> int:
    """The largest JPEG DCT scale-down (8, 4, 2, else 1) whose output the final area resize turns
    into ``target_hw`` faithfully; 1 (full resolution) when there is no target.

    WHY: the model throws the extra pixels away; libjpeg's scaled IDCT skips computing them, which
    is 5-10x cheaper than decoding 5 MP and area-resizing it. At 1/s every output pixel is the mean
    of an s x s block, so area-resizing that is exactly the full-resolution area resize *when each
    axis is a whole multiple* (``src % s == 0`` and ``(src / s) % target == 0``). Otherwise every
    output pixel's box cuts s-wide blocks in two and takes their mean for the part it covers: at
    5 MP -> 256 the 1/8 decode is 306 px wide, a 1.2:1 resize whose partial blocks moved single
    input pixels by up to 31 grey levels (mean 0.26-0.71 on the real test sets; benchmarks/RESULTS.md
    "camera"). So a non-exact axis must keep ``oversample`` x the target. Default 4 (1/2 at 5 MP):
    over 3 training seeds and the 4 real test sets upscaled to 5 MP, image AUROC moves by at most
    0.006 (tire) from the full decode; at 2 (1/4) three categories stay within 0.003 but tire loses
    0.018-0.035 on every seed, as much as an area resize of the full decode to the same intermediate
    size does (so the intermediate size, not the DCT, moves its fragile ranking). 4 costs decode time
    (5 MP colour 6.3 -> 9.8 ms, 12 MP 13.5 -> 22 ms on this project's 2-core machine): set 2 where the
    line's parts tolerate it. ``oversample=1`` is the coarsest scale that merely covers the target (fastest).
    libjpeg rounds scaled sizes up (``ceil(W / s)``), so that is the size compared.
    """
    if target_hw is None:
        return 1
    h, w = int(src_hw[0]), int(src_hw[1])
    th, tw = int(target_hw[0]), int(target_hw[1])
    if min(h, w, th, tw) <= 0:
        raise ValueError(f"sizes must be positive, got source {src_hw} and target {target_hw}")
    if oversample < 1.0:
        raise ValueError(f"oversample must be >= 1, got {oversample}")

    def faithful(src: int, s: int, t: int) -> bool:
        got = -(-src // s)
        if got < t:
            return False
        exact = src % s == 0 and got % t == 0  # whole blocks per output pixel: the same box sums
        return exact or got >= oversample * t

    for s in JPEG_SCALES:
        if faithful(h, s, th) and faithful(w, s, tw):
            return s
    return 1


def check_frame_header(env: FrameEnvelope, max_pixels: int) -> tuple[int, int, int]:
    """The decompression-bomb guard, before any decoder runs: declared shape, signature and the
    header's own size, all bounded by ``max_pixels``. Returns the header's (H, W, channels)."""
    if env.shape:
        if len(env.shape) not in (2, 3) or any(d <= 0 for d in env.shape):
            raise PoisonFrame("bad_shape", f"declared shape {env.shape} is not (H,W) or (H,W,C)")
        if env.shape[0] * env.shape[1] > max_pixels:
            raise PoisonFrame("oversized", f"declared {env.shape[0]}x{env.shape[1]} exceeds {max_pixels} pixels")
    sig = _SIGNATURES.get(env.encoding)
    if sig is None or not env.payload.startswith(sig[: min(len(sig), len(env.payload))]) or len(env.payload) < 2:
        raise PoisonFrame("bad_encoding", f"payload does not carry the {env.encoding} signature")
    hdr = _peek_header(env.payload)
    if hdr is None:
        raise PoisonFrame("undecodable", f"no {env.encoding} size header in {len(env.payload)} bytes")
    if hdr[0] * hdr[1] > max_pixels:
        raise PoisonFrame("oversized", f"image header says {hdr[1]}x{hdr[0]}, over {max_pixels} pixels")
    return hdr


def check_encoded_frame(env: FrameEnvelope, max_pixels: int) -> tuple[int, int]:
    """Everything :func:`decode_frame` checks before decoding (bomb guard, signature, declared vs
    header geometry, minimum size), for a frame handed on still encoded (an engine that decodes it on
    its own device). Returns the frame's (H, W)."""
    h, w, _channels = check_frame_header(env, max_pixels)
    _check_geometry(env, (h, w))
    return h, w


def _imdecode(env: FrameEnvelope, flags: int) -> np.ndarray:
    import cv2

    try:
        img = cv2.imdecode(np.frombuffer(env.payload, dtype=np.uint8), flags)
    except cv2.error as exc:
        raise PoisonFrame("undecodable", f"OpenCV: {str(exc).strip().splitlines()[-1][:200]}") from None
    if img is None or img.size == 0:
        raise PoisonFrame("undecodable", f"{len(env.payload)} bytes are not a valid {env.encoding} image")
    return img


def decode_image(env: FrameEnvelope, max_pixels: int = 40_000_000) -> np.ndarray:
    """Decode at full resolution to RGB uint8 (H, W, 3). Raises :class:`PoisonFrame` for anything unusable.

    Only the declared format reaches the decoder (OpenCV would otherwise sniff BMP/TIFF/PNM,
    whose sizes are not checked here), and the size in the format's header is bounded by
    ``max_pixels`` *before* decoding, so a tiny message cannot make the consumer allocate gigabytes.
    """
    import cv2

    check_frame_header(env, max_pixels)
    img = _imdecode(env, cv2.IMREAD_UNCHANGED)
    if img.shape[0] * img.shape[1] > max_pixels:
        raise PoisonFrame("oversized", f"decoded {img.shape[1]}x{img.shape[0]}, over {max_pixels} pixels")
    img = _to_rgb(_to_u8(img))
    _check_geometry(env, img.shape[:2])
    return img


def _to_u8(img: np.ndarray) -> np.ndarray:
    import cv2

    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    if img.dtype != np.uint8:
        return cv2.convertScaleAbs(img, alpha=255.0 / max(1.0, float(np.nanmax(img))))
    return img


def _to_rgb(img: np.ndarray, keep_mono: bool = False) -> np.ndarray:
    """OpenCV's BGR / BGRA / gray(+alpha) -> RGB (H, W, 3), or (H, W) gray when ``keep_mono``."""
    import cv2

    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] == 2:  # gray + alpha
        img = np.ascontiguousarray(img[:, :, 0])
    if img.ndim == 2:
        return img if keep_mono else cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise PoisonFrame("bad_channels", f"{img.shape[2]} channels; expected 1, 2, 3 or 4")


def _check_geometry(env: FrameEnvelope, hw: tuple[int, ...]) -> None:
    if env.shape and tuple(env.shape[:2]) != tuple(hw[:2]):
        raise PoisonFrame("shape_mismatch", f"declared {tuple(env.shape[:2])}, decoded {tuple(hw[:2])}")
    if min(hw[:2]) < 16:
        raise PoisonFrame("too_small", f"{hw[1]}x{hw[0]} is below 16 px")


@dataclass(frozen=True)
class DecodedFrame:
    """A frame decoded for one consumer's purpose.

    ``image`` is what the engine gets: (h, w, 3) RGB, or (h, w) for a one-channel frame (engines
    expand it at model size, where it is cheap); ``frame_hw`` is the camera frame's own geometry
    (the header's), which rows record so model-resolution masks overlay the original frame;
    ``scale`` is the JPEG DCT scale used (1 = full resolution)."""

    image: np.ndarray
    frame_hw: tuple[int, int]
    scale: int = 1


def decode_frame(env: FrameEnvelope, max_pixels: int = 40_000_000, target_hw: tuple[int, int] | None = None,
                 oversample: float = DECODE_OVERSAMPLE) -> DecodedFrame:
    """Decode for the model: JPEG at the largest DCT scale that stays at or above ``target_hw``
    (see :func:`choose_jpeg_scale`), one-channel JPEGs as one channel, then one area resize to
    ``target_hw``; other formats are decoded once and resized once. ``target_hw=None`` (tiling,
    which needs every pixel) decodes at full resolution and does not resize.

    The header is checked against ``max_pixels`` before any decoder runs, exactly as in
    :func:`decode_image`.
    """
    import cv2

    h, w, channels = check_frame_header(env, max_pixels)
    if target_hw is None:
        img = decode_image(env, max_pixels)
        return DecodedFrame(img, (img.shape[0], img.shape[1]), 1)
    _check_geometry(env, (h, w))
    mono = channels == 1
    scale = 1
    if env.encoding == "jpeg":
        scale = choose_jpeg_scale((h, w), target_hw, oversample)
        flags = {(1, True): cv2.IMREAD_GRAYSCALE, (1, False): cv2.IMREAD_COLOR,
                 (2, True): cv2.IMREAD_REDUCED_GRAYSCALE_2, (2, False): cv2.IMREAD_REDUCED_COLOR_2,
                 (4, True): cv2.IMREAD_REDUCED_GRAYSCALE_4, (4, False): cv2.IMREAD_REDUCED_COLOR_4,
                 (8, True): cv2.IMREAD_REDUCED_GRAYSCALE_8, (8, False): cv2.IMREAD_REDUCED_COLOR_8}[(scale, mono)]
        img = _imdecode(env, flags | cv2.IMREAD_IGNORE_ORIENTATION)  # the full path ignores EXIF too
        want = (-(-h // scale), -(-w // scale))
        if tuple(img.shape[:2]) != want:
            raise PoisonFrame("shape_mismatch", f"header says {w}x{h}, decoded {img.shape[1]}x{img.shape[0]} at 1/{scale}")
        img = _to_rgb(img, keep_mono=True)
    else:
        img = _imdecode(env, cv2.IMREAD_UNCHANGED)
        if tuple(img.shape[:2]) != (h, w):
            raise PoisonFrame("shape_mismatch", f"header says {w}x{h}, decoded {img.shape[1]}x{img.shape[0]}")
        img = _to_rgb(_to_u8(img), keep_mono=True)
    th, tw = int(target_hw[0]), int(target_hw[1])
    if img.shape[:2] != (th, tw):
        shrink = img.shape[0] * img.shape[1] >= th * tw
        img = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return DecodedFrame(img, (h, w), scale)


def decode_grey_reduced(payload: bytes, target_hw: tuple[int, int], oversample: float = DECODE_OVERSAMPLE,
                        ) -> np.ndarray | None:
    """Grey uint8 pixels of an encoded frame, a JPEG decoded luma-only at the DCT scale
    :func:`choose_jpeg_scale` picks for ``target_hw`` (not yet resized); ``None`` when it does not
    decode. For checks that look at a frame again after the consumer (drift) and have only its bytes:
    at 5 MP a full-resolution decode costs several times the reduced one. No size guard here: it is
    for frames the consumer has already checked."""
    import cv2

    hdr = _peek_header(payload)
    scale = 1
    if hdr is not None and payload[:2] == b"\xff\xd8":
        scale = choose_jpeg_scale((hdr[0], hdr[1]), target_hw, oversample)
    flags = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
             8: cv2.IMREAD_REDUCED_GRAYSCALE_8}[scale]
    try:
        img = cv2.imdecode(np.frombuffer(payload, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        return None
    return None if img is None or img.size == 0 else img


def _peek_dims(data: bytes) -> tuple[int, int] | None:
    """(H, W) from a PNG IHDR or JPEG SOF header, without decoding; None if not found."""
    hdr = _peek_header(data)
    return None if hdr is None else (hdr[0], hdr[1])


def _peek_header(data: bytes) -> tuple[int, int, int] | None:
    """(H, W, channels) from a PNG IHDR or JPEG SOF header, without decoding; None if not found."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        color_type = data[25] if len(data) > 25 else 2
        channels = {0: 1, 4: 1}.get(color_type, 3)  # gray, gray+alpha -> one channel
        return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big"), channels
    if data[:2] == b"\xff\xd8":
        i = 2
        n = len(data)
        while i + 9 < n:
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                comps = data[i + 9] if i + 9 < n else 3
                return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big"), comps
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            seglen = int.from_bytes(data[i + 2:i + 4], "big")
            if seglen < 2:
                return None
            i += 2 + seglen
    return None
