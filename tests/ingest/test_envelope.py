"""Envelope round trip and the poison cases the consumer dead-letters."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ingest.envelope import FrameEnvelope, PoisonFrame, decode_image, encode_image


def _img(h: int = 40, w: int = 56) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _env(**kw) -> FrameEnvelope:
    img = _img()
    base = dict(product="widget", line="L1", camera="cam-1", frame_id=7, payload=encode_image(img, "png"),
                encoding="png", shape=img.shape, capture_ts=123.5)
    base.update(kw)
    return FrameEnvelope(**base)


def test_round_trip_keeps_fields_and_pixels() -> None:
    img = _img()
    env = _env(payload=encode_image(img, "png"), specimen_id="S1", view="top")
    back = FrameEnvelope.from_message(*env.to_message())
    assert back == env
    assert np.array_equal(decode_image(back), img)
    assert back.key == ("cam-1", 7)


def test_v1_message_is_accepted() -> None:
    key, value, headers = _env().to_message()
    meta = json.loads(dict(headers)["li-meta"])
    for k in ("specimen_id", "view"):
        meta.pop(k)
    meta["version"] = 1
    back = FrameEnvelope.from_message(key, value, [("li-v", b"1"), ("li-meta", json.dumps(meta).encode())])
    assert back.version == 1 and back.specimen_id is None


@pytest.mark.parametrize("mutate, reason", [
    (lambda k, v, h: (k, v, []), "bad_envelope"),
    (lambda k, v, h: (k, v, [("li-meta", b"{not json")]), "bad_envelope"),
    (lambda k, v, h: (k, b"", h), "empty_payload"),
    (lambda k, v, h: (b"other-cam", v, h), "bad_envelope"),
    (lambda k, v, h: (k, v, [("li-meta", json.dumps({**json.loads(dict(h)["li-meta"]), "version": 99}).encode())]), "bad_envelope"),
    (lambda k, v, h: (k, v, [("li-meta", json.dumps({**json.loads(dict(h)["li-meta"]), "frame_id": -1}).encode())]), "bad_envelope"),
    (lambda k, v, h: (k, v, [("li-meta", json.dumps({**json.loads(dict(h)["li-meta"]), "encoding": "gif"}).encode())]), "bad_encoding"),
])
def test_malformed_messages_are_poison(mutate, reason) -> None:
    with pytest.raises(PoisonFrame) as exc:
        FrameEnvelope.from_message(*mutate(*_env().to_message()))
    assert exc.value.reason == reason


def test_undecodable_oversized_and_mismatched_payloads() -> None:
    with pytest.raises(PoisonFrame) as e1:
        decode_image(_env(payload=b"\x89PNG\r\n\x1a\n garbage bytes"))  # PNG signature, no image behind it
    assert e1.value.reason == "undecodable"
    with pytest.raises(PoisonFrame) as e0:
        decode_image(_env(payload=b"\x89PNG garbage bytes"))  # not the full PNG signature
    assert e0.value.reason == "bad_encoding"
    with pytest.raises(PoisonFrame) as e2:
        decode_image(_env(), max_pixels=100)
    assert e2.value.reason == "oversized"
    with pytest.raises(PoisonFrame) as e3:
        decode_image(_env(shape=(41, 56, 3)))
    assert e3.value.reason == "shape_mismatch"
