"""One frame the store refuses never stops consumption: bisect, store the rest, dead-letter it alone, commit.

Run on SQLite and on the real PostgreSQL. With the name rule at the envelope, a message can no
longer carry such metadata, so these tests reach the store past the envelope: a store that refuses
one row the way PostgreSQL would, an engine whose output the store refuses, and (PostgreSQL) the
envelope and store checks switched off so the server itself refuses the row.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import ingest.envelope
import storage.store
from ingest.bus.memory import MemoryBus, MemoryPublisher
from ingest.envelope import FrameEnvelope, encode_image
from lineinspect.settings import Settings
from storage.records import ResultRow
from storage.store import ResultStore
from tests.inference.test_consumer import FakeEngine, frame, make

pytestmark = pytest.mark.timeout(300)


def publish_raw(bus: MemoryBus, settings: Settings, metas: list[dict], camera: str = "cam-1", first: int = 1) -> None:
    """Envelopes built directly (no publisher checks); ``metas`` override fields per frame."""
    pub = MemoryPublisher(bus, settings.topic_frames)
    for i, meta in enumerate(metas):
        payload = encode_image(frame(20 + i), "png")
        fields = {"product": "widget", "line": "L1", "camera": camera, "frame_id": first + i, **meta}
        env = FrameEnvelope(payload=payload, encoding="png", shape=(64, 64, 3), capture_ts=time.time(), **fields)
        key, value, headers = env.to_message()
        pub.publish(key, value, headers)


def dlq(bus: MemoryBus, settings: Settings) -> list[tuple[str, bytes]]:
    return [(dict(r.headers)["li-dlq-reason"].decode(), r.value) for r in bus.records(settings.topic_dlq)]


class RefusingStore:
    """Refuses any batch holding one given frame id, with an error that is no outage (as PostgreSQL
    refuses a row it cannot hold); counts calls to show the batch was bisected, not retried."""

    def __init__(self, real: ResultStore, bad_frame: int) -> None:
        self.real, self.bad, self.calls = real, bad_frame, 0

    def save_results(self, rows: list[ResultRow]) -> list[int | None]:
        self.calls += 1
        if any(r.frame_id == self.bad for r in rows):
            raise RuntimeError(f"value not storable in frame {self.bad}")
        return self.real.save_results(rows)


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_refused_row_is_dead_lettered_alone_and_the_rest_stored(settings: Settings, db_url: str,
                                                                 pipelined: bool) -> None:
    bus = MemoryBus(partitions=1)
    publish_raw(bus, settings, [{} for _ in range(12)])
    with ResultStore.open(db_url) as real:
        store = RefusingStore(real, bad_frame=6)
        c = make(settings, bus, store, pipelined=pipelined)
        assert c.run(max_frames=12, idle_timeout_s=2) == 12
        c.close()
        assert sorted(r["frame_id"] for r in real.results_for_camera("cam-1")) == [i for i in range(1, 13) if i != 6]
        reasons = dlq(bus, settings)
        assert [r for r, _ in reasons] == ["unstorable"]
        assert bus.committed("g", settings.topic_frames) == {0: 12}
        assert c.dead_lettered == 1 and c.stored == 11
        assert store.calls <= 3 * 4  # three batches of 4, each at most 1 + 2 + 2 writes: bisected, not retried


class HostileVersionEngine(FakeEngine):
    """Returns a model version the store cannot hold for frames of one red level (an engine bug
    that only some frames trigger)."""

    def infer(self, product: str, images: list[np.ndarray]):
        out = super().infer(product, images)
        if any(int(im[0, 0, 1]) == 23 for im in images):
            out.model_version = "v1\x00" + "x" * 80
        return out


def test_rows_the_store_validation_refuses_are_dead_lettered(settings: Settings, db_url: str) -> None:
    bus = MemoryBus(partitions=1)
    publish_raw(bus, settings, [{} for _ in range(8)])
    with ResultStore.open(db_url) as store:
        settings1 = settings.model_copy(update={"batch_max_records": 1})  # the hostile output covers its batch only
        c = make(settings1, bus, store, engine=HostileVersionEngine())
        assert c.run(max_frames=8, idle_timeout_s=2) == 8
        c.close()
        assert store.count_results() == 7
        assert [r for r, _ in dlq(bus, settings)] == ["unstorable"]
        assert bus.committed("g", settings.topic_frames) == {0: 8}


@pytest.fixture()
def checks_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bypass the name rule at the envelope and the store's own validation (the old behaviour)."""
    def lenient(kind: str, value: object, max_len: int | None = None) -> str:
        if not isinstance(value, str) or not value or len(value) > 128:
            raise ValueError(f"{kind} must be a non-empty string of at most 128 characters")
        return value

    monkeypatch.setattr(ingest.envelope, "check_name", lenient)
    monkeypatch.setattr(storage.store, "_validate", lambda r: None)


@pytest.mark.integration
def test_postgresql_refusing_a_row_past_the_envelope_costs_only_that_frame(settings: Settings, pg_url: str,
                                                                         checks_off: None) -> None:
    bus = MemoryBus(partitions=1)
    metas: list[dict] = [{} for _ in range(10)]
    metas[2] = {"view": "v" * 100}            # varchar(64): 22001 string data right truncation
    metas[7] = {"view": "top\x00side"}         # NUL in text: refused by the driver / server
    publish_raw(bus, settings, metas)
    with ResultStore.open(pg_url) as store:
        c = make(settings, bus, store)
        assert c.run(max_frames=10, idle_timeout_s=2) == 10
        c.close()
        stored = sorted(r["frame_id"] for r in store.results_for_camera("cam-1"))
        assert stored == [i for i in range(1, 11) if i not in (3, 8)]
        assert [r for r, _ in dlq(bus, settings)] == ["unstorable", "unstorable"]
        assert bus.committed("g", settings.topic_frames) == {0: 10}


text_values = st.one_of(st.text(min_size=1, max_size=140), st.text(alphabet="ab\x00\x01\ud7ff", min_size=1, max_size=70))


@pytest.mark.integration
@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(views=st.lists(st.one_of(st.none(), text_values), min_size=4, max_size=4),
       specimens=st.lists(st.one_of(st.none(), text_values), min_size=4, max_size=4))
def test_any_metadata_past_the_envelope_never_stops_the_line_on_postgresql(settings: Settings, pg_url: str,
                                                                          checks_off: None, views: list,
                                                                          specimens: list) -> None:
    """Whatever text reaches PostgreSQL: every frame is stored or dead-lettered, all are committed."""
    camera = f"cam-{time.monotonic_ns()}"
    bus = MemoryBus(partitions=1)
    metas = [{"view": v, "specimen_id": s} for v, s in zip(views, specimens)]
    publish_raw(bus, settings, metas, camera=camera)
    with ResultStore.open(pg_url) as store:  # migrating an up-to-date database is a no-op
        c = make(settings, bus, store, pipelined=False)
        assert c.run(max_frames=4, idle_timeout_s=2) == 4
        c.close()
        stored = len(store.results_for_camera(camera))
    dead = dlq(bus, settings)
    assert stored + len(dead) == 4 and all(r in ("unstorable", "bad_envelope") for r, _ in dead)
    assert bus.committed("g", settings.topic_frames) == {0: 4}
