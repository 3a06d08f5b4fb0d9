"""FramePublisher: envelopes keyed by camera, monotonic ids, size limit."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.bus import MessageTooLarge
from ingest.bus.memory import MemoryBus, MemoryPublisher
from ingest.envelope import FrameEnvelope, decode_image
from ingest.publisher import FramePublisher, time_based_frame_id
from lineinspect.settings import Settings


def _frame(v: int = 0) -> np.ndarray:
    rng = np.random.default_rng(v)
    return rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)


def test_publishes_envelopes_with_consecutive_ids() -> None:
    bus = MemoryBus(partitions=3)
    pub = FramePublisher(Settings(), "widget", "L1", "cam-7", MemoryPublisher(bus, "frames"), first_frame_id=100,
                         encoding="png")
    for i in range(3):
        pub.publish(_frame(i), capture_ts=1000.0 + i)
    pub.flush()
    recs = bus.records("frames")
    assert len({r.partition for r in recs}) == 1  # one camera -> one partition
    envs = [FrameEnvelope.from_message(r.key, r.value, r.headers) for r in recs]
    assert [e.frame_id for e in envs] == [100, 101, 102]
    assert all(e.camera == "cam-7" and e.product == "widget" and e.shape == (32, 48, 3) for e in envs)
    assert np.array_equal(decode_image(envs[1]), _frame(1))  # PNG is lossless
    assert pub.next_frame_id == 103 and pub.published == 3


def test_default_start_is_time_based_and_jpeg() -> None:
    bus = MemoryBus()
    before = time_based_frame_id()
    pub = FramePublisher(Settings(), "p", "l", "c", MemoryPublisher(bus, "f"))
    env = pub.publish(_frame())
    assert before <= env.frame_id <= time_based_frame_id()
    assert env.encoding == "jpeg" and env.payload[:2] == b"\xff\xd8"


def test_refused_frame_does_not_consume_an_id() -> None:
    pub = FramePublisher(Settings(), "p", "l", "c", MemoryPublisher(MemoryBus(), "f", max_message_bytes=500),
                         first_frame_id=5, encoding="png")
    with pytest.raises(MessageTooLarge, match="max_message_bytes"):
        pub.publish(_frame())
    assert pub.next_frame_id == 5


@pytest.mark.parametrize("kw", [{"product": ""}, {"encoding": "gif"}, {"quality": 0}, {"first_frame_id": -1}])
def test_bad_arguments(kw: dict) -> None:
    args = {"product": "p", "line": "l", "camera": "c", "publisher": MemoryPublisher(MemoryBus(), "f"), **kw}
    with pytest.raises(ValueError):
        FramePublisher(Settings(), **args)
