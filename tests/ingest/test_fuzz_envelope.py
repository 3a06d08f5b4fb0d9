"""Bad input never crashes the consumer: every malformed message becomes a PoisonFrame with a reason.

Hypothesis drives the envelope headers (garbage bytes, garbage JSON, missing fields, wrong types,
huge strings and numbers, unknown versions, null header values) and the image payload (truncated
and bit-flipped JPEG/PNG, random bytes behind a valid signature, headers claiming 100000x100000,
2-channel / 16-bit / 1-bit / palette PNGs, other formats sent as JPEG). The property is the same
for all: the parser either returns a frame that satisfies every invariant the pipeline relies on,
or raises :class:`PoisonFrame` with a known reason code and a readable message.
"""

from __future__ import annotations

import json
import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.envelope import FrameEnvelope, PoisonFrame, decode_image, encode_image

REASONS = {"bad_envelope", "empty_payload", "bad_encoding", "bad_shape", "oversized", "undecodable",
           "bad_channels", "shape_mismatch", "too_small"}
MAX_PIXELS = 1_000_000
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- builders ------------------------------------------------------------------------------------
def png_bytes(width: int, height: int, color_type: int, bit_depth: int, body: bytes | None = None) -> bytes:
    """A PNG written by hand, so headers can claim anything (OpenCV refuses to write most of these)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    row = (width * channels * bit_depth + 7) // 8
    if body is None:
        rng = np.random.default_rng(width * 31 + height)
        body = b"".join(b"\x00" + rng.integers(0, 256, row, dtype=np.uint8).tobytes() for _ in range(height))
    extra = chunk(b"PLTE", bytes(range(256)) * 3) if color_type == 3 else b""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", zlib.compress(body))
            + chunk(b"IEND", b""))


def jpeg_bytes(h: int = 48, w: int = 64, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_image(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "jpeg", quality=80)


def with_jpeg_dims(data: bytes, h: int, w: int) -> bytes:
    """Rewrite the SOF0 frame header of a baseline JPEG to claim ``h`` x ``w``."""
    i = data.index(b"\xff\xc0")
    return data[:i + 5] + h.to_bytes(2, "big") + w.to_bytes(2, "big") + data[i + 9:]


def envelope(payload: bytes, encoding: str = "jpeg", shape: tuple[int, ...] = ()) -> FrameEnvelope:
    return FrameEnvelope(product="p", line="l", camera="c", frame_id=1, payload=payload, encoding=encoding,
                         shape=shape)


def message(meta: object, value: bytes = b"\xff\xd8x", key: bytes | None = b"cam-1") -> FrameEnvelope:
    raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    return FrameEnvelope.from_message(key, value, [("li-v", b"2"), ("li-meta", raw)])


VALID_META = {"product": "widget", "line": "l1", "camera": "cam-1", "frame_id": 7, "encoding": "jpeg",
              "shape": [48, 64, 3], "capture_ts": 1.7e9, "version": 2}


def check_envelope(env: FrameEnvelope) -> None:
    """The invariants downstream code (router, store, cache) relies on."""
    for name in ("product", "line", "camera"):
        v = getattr(env, name)
        assert isinstance(v, str) and 0 < len(v) <= 128
    assert isinstance(env.frame_id, int) and not isinstance(env.frame_id, bool) and 0 <= env.frame_id < 2**63
    assert env.encoding in ("jpeg", "png")
    assert np.isfinite(env.capture_ts)
    assert env.version in (1, 2)
    assert isinstance(env.payload, bytes) and env.payload
    assert all(isinstance(d, int) for d in env.shape)


def check_poison(exc: PoisonFrame) -> None:
    assert exc.reason in REASONS, exc.reason
    assert str(exc).startswith(exc.reason) and len(str(exc)) < 2000


def check_decoded(img: np.ndarray) -> None:
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[0] * img.shape[1] <= MAX_PIXELS and min(img.shape[:2]) >= 16


# --- strategies --------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
    | st.sampled_from(["x" * 129, "x" * 100_000, "jpeg", "png", "gif", "", "🏭", "'; DROP TABLE products; --"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
FIELDS = list(VALID_META) + ["specimen_id", "view"]


@st.composite
def mutated_meta(draw: st.DrawFn) -> dict:
    meta = dict(VALID_META)
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        if draw(st.booleans()):
            meta.pop(name, None)
        else:
            meta[name] = draw(json_values)
    return meta


li_meta_raw = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    json_values.map(lambda v: json.dumps(v).encode()),
    mutated_meta().map(lambda m: json.dumps(m).encode()),
    st.just(b'{"product": "p", "frame_id": 1e400, "capture_ts": 1e400}'),
    st.just(b'{"version": NaN}'),
    st.just(b"\xff\xfe\x00garbage"),
)

header_lists = st.lists(
    st.tuples(st.sampled_from(["li-v", "li-meta", "other", ""]), st.one_of(st.none(), li_meta_raw)), max_size=4)


# --- envelope headers ------------------------------------------------------------------------------
@FUZZ
@given(meta=mutated_meta(), key=st.one_of(st.none(), st.just(b"cam-1"), st.binary(max_size=20)),
       value=st.one_of(st.just(b""), st.none(), st.binary(min_size=1, max_size=64)))
def test_mutated_metadata_is_parsed_or_poison(meta: dict, key: bytes | None, value: bytes | None) -> None:
    try:
        env = FrameEnvelope.from_message(key, value, [("li-meta", json.dumps(meta).encode())])
    except PoisonFrame as exc:
        check_poison(exc)
    else:
        check_envelope(env)


@FUZZ
@given(headers=header_lists, value=st.binary(max_size=32))
def test_arbitrary_headers_are_parsed_or_poison(headers: list, value: bytes) -> None:
    try:
        env = FrameEnvelope.from_message(b"cam-1", value, headers)
    except PoisonFrame as exc:
        check_poison(exc)
    else:
        check_envelope(env)


@pytest.mark.parametrize("meta, reason, words", [
    (b"not json", "bad_envelope", "not JSON"),
    (b"[1, 2]", "bad_envelope", "not an object"),
    ({**VALID_META, "version": 99}, "bad_envelope", "unsupported envelope version 99"),
    ({k: v for k, v in VALID_META.items() if k != "product"}, "bad_envelope", "'product'"),
    ({**VALID_META, "frame_id": "7"}, "bad_envelope", "'frame_id'"),
    ({**VALID_META, "frame_id": 2**64}, "bad_envelope", "'frame_id'"),
    ({**VALID_META, "camera": "c" * 100_000}, "bad_envelope", "'camera'"),
    ({**VALID_META, "capture_ts": float("nan")}, "bad_envelope", "capture_ts"),
    ({**VALID_META, "capture_ts": 10**400}, "bad_envelope", "too large"),
    ({**VALID_META, "shape": [1e400, 3]}, "bad_envelope", "infinity"),
    ({**VALID_META, "shape": {"h": 1}}, "bad_envelope", ""),
    ({**VALID_META, "encoding": "gif"}, "bad_encoding", "'gif'"),
])
def test_bad_metadata_reasons(meta: object, reason: str, words: str) -> None:
    with pytest.raises(PoisonFrame) as info:
        message(meta)
    assert info.value.reason == reason
    assert words in str(info.value)


def test_missing_or_null_meta_header_and_empty_payload() -> None:
    good = json.dumps(VALID_META).encode()
    cases = [([], b"\xff\xd8", "missing li-meta"), ([("li-meta", None)], b"\xff\xd8", "NoneType"),
             ([("li-meta", good)], b"", "no image bytes"), ([("li-meta", good)], None, "no image bytes")]
    for headers, value, words in cases:
        with pytest.raises(PoisonFrame, match=words):
            FrameEnvelope.from_message(b"cam-1", value, headers)


def test_key_must_match_camera_and_valid_message_round_trips() -> None:
    with pytest.raises(PoisonFrame, match="key does not match"):
        message(VALID_META, key=b"cam-2")
    env = FrameEnvelope("widget", "l1", "cam-1", 3, jpeg_bytes(), shape=(48, 64, 3))
    again = FrameEnvelope.from_message(*env.to_message())
    assert again == env
    assert decode_image(again).shape == (48, 64, 3)


# --- image payloads ----------------------------------------------------------------------------------
@st.composite
def damaged_images(draw: st.DrawFn) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["jpeg", "png"]))
    h, w = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    if kind == "jpeg":
        data = bytearray(jpeg_bytes(h, w, seed=h * 100 + w))
    else:
        ct, depth = draw(st.sampled_from([(0, 8), (0, 16), (0, 1), (2, 8), (2, 16), (3, 8), (4, 8), (4, 16), (6, 8)]))
        data = bytearray(png_bytes(w, h, ct, depth))
    damage = draw(st.sampled_from(["none", "truncate", "flip", "garbage_tail", "random_body"]))
    if damage == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif damage == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif damage == "garbage_tail":
        data += draw(st.binary(min_size=1, max_size=64))
    elif damage == "random_body":
        data = data[:draw(st.sampled_from([2, 8, 24]))] + draw(st.binary(max_size=300))
    return bytes(data), draw(st.sampled_from([kind, kind, "png" if kind == "jpeg" else "jpeg"]))


@FUZZ
@given(payload=damaged_images(), declare_shape=st.booleans())
def test_damaged_images_decode_or_poison(payload: tuple[bytes, str], declare_shape: bool) -> None:
    data, encoding = payload
    shape = (48, 64) if declare_shape else ()
    try:
        img = decode_image(envelope(data, encoding, shape), max_pixels=MAX_PIXELS)
    except PoisonFrame as exc:
        check_poison(exc)
    else:
        check_decoded(img)
        if shape:
            assert img.shape[:2] == shape


@FUZZ
@given(h=st.integers(0, 2**16 - 1), w=st.integers(0, 2**16 - 1), fmt=st.sampled_from(["jpeg", "png"]))
def test_any_declared_header_size_is_bounded(h: int, w: int, fmt: str) -> None:
    """Headers claiming any size up to 65535x65535 never allocate more than ``max_pixels``."""
    data = with_jpeg_dims(jpeg_bytes(), h, w) if fmt == "jpeg" else png_bytes(w, h, 2, 8, body=b"\x00" * 64)
    try:
        img = decode_image(envelope(data, fmt), max_pixels=MAX_PIXELS)
    except PoisonFrame as exc:
        check_poison(exc)
        if h * w > MAX_PIXELS:
            assert exc.reason == "oversized"
    else:
        check_decoded(img)


def test_decompression_bomb_headers_are_refused_before_decoding() -> None:
    png = png_bytes(100_000, 100_000, 2, 8, body=b"")
    with pytest.raises(PoisonFrame, match="100000x100000") as info:
        decode_image(envelope(png, "png"))
    assert info.value.reason == "oversized"
    jpg = with_jpeg_dims(jpeg_bytes(), 60_000, 60_000)
    with pytest.raises(PoisonFrame, match="60000x60000") as info:
        decode_image(envelope(jpg, "jpeg"))
    assert info.value.reason == "oversized"
    with pytest.raises(PoisonFrame, match="exceeds") as info:
        decode_image(envelope(jpeg_bytes(), "jpeg", shape=(100_000, 100_000, 3)))
    assert info.value.reason == "oversized"


def test_other_formats_never_reach_the_decoder() -> None:
    """A BMP/TIFF sent as 'jpeg' would be sniffed by OpenCV with no size check: refused by signature."""
    img = np.zeros((32, 32, 3), np.uint8)
    for ext in (".bmp", ".tiff", ".ppm"):
        ok, buf = cv2.imencode(ext, img)
        assert ok
        with pytest.raises(PoisonFrame, match="signature") as info:
            decode_image(envelope(buf.tobytes(), "jpeg"))
        assert info.value.reason == "bad_encoding"
    with pytest.raises(PoisonFrame) as info:
        decode_image(envelope(jpeg_bytes(), "png"))
    assert info.value.reason == "bad_encoding"


@pytest.mark.parametrize("cut", [2, 20, 200, -40])
def test_truncated_jpeg_is_undecodable(cut: int) -> None:
    data = jpeg_bytes(64, 64)
    with pytest.raises(PoisonFrame) as info:
        decode_image(envelope(data[:cut], "jpeg"))
    assert info.value.reason == "undecodable"


@pytest.mark.parametrize("color_type, depth", [(4, 8), (4, 16), (0, 16), (2, 16), (0, 1), (3, 8)])
def test_unusual_png_layouts_become_rgb_uint8(color_type: int, depth: int) -> None:
    """Gray+alpha (2 channels), 16-bit, 1-bit and palette PNGs are valid images: RGB uint8 out."""
    img = decode_image(envelope(png_bytes(40, 30, color_type, depth), "png"))
    assert img.shape == (30, 40, 3) and img.dtype == np.uint8


def test_declared_shape_must_match_and_small_frames_are_refused() -> None:
    with pytest.raises(PoisonFrame) as info:
        decode_image(envelope(jpeg_bytes(48, 64), "jpeg", shape=(64, 48)))
    assert info.value.reason == "shape_mismatch"
    with pytest.raises(PoisonFrame) as info:
        decode_image(envelope(jpeg_bytes(8, 64), "jpeg"))
    assert info.value.reason == "too_small"
    with pytest.raises(PoisonFrame) as info:
        decode_image(envelope(jpeg_bytes(), "jpeg", shape=(48, -1)))
    assert info.value.reason == "bad_shape"


# --- through the consumer: poison goes to the dead-letter topic with its reason ------------------------
class _ProductEngine:
    """Knows one product; scores are the mean brightness (deterministic)."""

    name = "fake"

    def infer(self, product: str, images: list[np.ndarray]):
        from inference.engines.base import EngineOutput, UnknownProduct

        if product != "widget":
            raise UnknownProduct(product, ["widget"])
        maps = np.stack([cv2.resize(im[:, :, 0], (16, 16)).astype(np.float32) / 255 for im in images])
        return EngineOutput(np.array([im.mean() / 255 for im in images], np.float32), maps, "v0001", 0.9)

    def close(self) -> None:
        pass


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(bad=st.lists(st.one_of(
    st.tuples(header_lists, st.binary(max_size=64)),
    damaged_images().map(lambda p: ([("li-meta", json.dumps({**VALID_META, "encoding": p[1], "shape": []}).encode())],
                                    p[0])),
), min_size=1, max_size=6))
def test_consumer_dead_letters_every_poison_message_with_a_reason(tmp_path_factory, bad: list) -> None:
    from inference.consumer import InferenceConsumer
    from ingest.bus.memory import MemoryBus, MemoryConsumer
    from lineinspect.settings import Settings
    from storage.memory_cache import MemoryCache
    from storage.store import ResultStore

    home = tmp_path_factory.mktemp("c")
    s = Settings(home=home, topic_frames="f", topic_dlq="f.dlq", batch_max_records=64)
    bus = MemoryBus(partitions=2)
    good = FrameEnvelope("widget", "l1", "cam-1", 1, jpeg_bytes(), shape=(48, 64, 3))
    unknown = FrameEnvelope("gadget", "l1", "cam-1", 2, jpeg_bytes(seed=1), shape=(48, 64, 3))
    for env in (good, unknown):
        bus.produce("f", *env.to_message())
    for headers, value in bad:
        bus.produce("f", b"cam-1", value, headers)
    store = ResultStore.open(f"sqlite:///{(home / 'r.sqlite').as_posix()}")
    consumer = InferenceConsumer(s, MemoryConsumer(bus, "f", "g", dlq_topic="f.dlq"), _ProductEngine(), store,
                                 MemoryCache(), stat_interval_s=3600, backoff_initial_s=0.01, backoff_max_s=0.01)
    try:
        handled = consumer.run(idle_timeout_s=0.05)
    finally:
        consumer.close()
    total = 2 + len(bad)
    assert handled == total
    dlq = bus.records("f.dlq")
    assert consumer.stored + len(dlq) == total
    assert store.get_result("cam-1", 1) is not None and store.get_result("cam-1", 2) is None
    reasons = [dict(r.headers)["li-dlq-reason"].decode() for r in dlq]
    assert "unknown_product" in reasons
    assert set(reasons) <= REASONS | {"unknown_product"}
    for r in dlq:
        h = dict(r.headers)
        assert h["li-src-topic"] == b"f" and h["li-dlq-detail"] is not None
    assert sum(bus.committed("g", "f").values()) == total  # everything committed: nothing retried forever
    store.close()
