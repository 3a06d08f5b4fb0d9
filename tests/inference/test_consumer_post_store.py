"""The consumer's post-store steps: called after the durable store with the stored rows and their own
envelopes (refused rows left out), and a failing step never blocks the commit."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.bus.memory import MemoryBus
from lineinspect.settings import Settings
from storage.store import ResultStore
from tests.inference.test_consumer import make, publish
from tests.inference.test_consumer_unstorable import RefusingStore, publish_raw


@pytest.mark.parametrize("pipelined", [True, False])
def test_steps_see_stored_rows_with_their_envelopes_and_failures_do_not_block(settings: Settings, store: ResultStore,
                                                                             pipelined: bool) -> None:
    bus = MemoryBus(partitions=1)
    publish_raw(bus, settings, [{} for _ in range(12)])
    seen: list[tuple[int, int]] = []

    def record(rows, envs):
        assert store.get_result(rows[0].camera, rows[0].frame_id) is not None  # durable before the step
        seen.extend((r.frame_id, e.frame_id) for r, e in zip(rows, envs, strict=True))

    def explode(rows, envs):
        raise RuntimeError("monitor bug")

    c = make(settings, bus, RefusingStore(store, bad_frame=6), pipelined=pipelined, post_store=[explode, record])
    assert c.run(max_frames=12, idle_timeout_s=2) == 12
    c.close()
    assert sorted(seen) == [(i, i) for i in range(1, 13) if i != 6]
    assert bus.committed("g", settings.topic_frames) == {0: 12}


def test_no_steps_is_the_default(settings: Settings, store: ResultStore) -> None:
    bus = MemoryBus(partitions=1)
    publish(bus, settings, 4)
    c = make(settings, bus, store)
    assert c.post_store == [] and c.run(max_frames=4, idle_timeout_s=2) == 4
    c.close()


class _PixelStep:
    """A step that asks for the pixels the engine scored (DriftMonitor, FamilyMonitor do)."""

    takes_images = True

    def __init__(self) -> None:
        self.got: list[tuple[int, tuple[int, ...]]] = []

    def __call__(self, rows, envs, images) -> None:
        self.got.extend((r.frame_id, im.shape) for r, im in zip(rows, images, strict=True))


def test_steps_that_take_images_get_the_engine_input_without_a_second_decode(settings: Settings,
                                                                             store: ResultStore) -> None:
    from tests.inference.test_consumer import SizedEngine, _publish_jpeg

    bus = MemoryBus(partitions=1)
    _publish_jpeg(bus, settings, np.full((480, 640, 3), 120, np.uint8), n=3)
    step = _PixelStep()
    c = make(settings, bus, store, engine=SizedEngine((32, 32)), post_store=[step])
    assert c.run(max_frames=3, idle_timeout_s=2) == 3
    c.close()
    assert step.got == [(1, (32, 32, 3)), (2, (32, 32, 3)), (3, (32, 32, 3))]


def test_full_resolution_frames_are_not_held_for_the_steps(settings: Settings, store: ResultStore) -> None:
    """A tiling product's frames are decoded at full resolution: not kept for the sink (memory); steps get None."""
    from tests.inference.test_consumer import SizedEngine, _publish_jpeg

    bus = MemoryBus(partitions=1)
    _publish_jpeg(bus, settings, np.full((1100, 1000, 3), 120, np.uint8), n=1)
    got: list[object] = []

    class _Step(_PixelStep):
        def __call__(self, rows, envs, images) -> None:
            got.extend(images)

    c = make(settings, bus, store, engine=SizedEngine(None), post_store=[_Step()])
    assert c.run(max_frames=1, idle_timeout_s=2) == 1
    c.close()
    assert got == [None]
