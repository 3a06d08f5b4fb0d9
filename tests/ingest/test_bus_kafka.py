"""The Kafka bus against the broker from deploy/services.sh: sizes, commits, lag, DLQ, outages."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from ingest.bus import MessageTooLarge
from ingest.bus.kafka import KafkaBatchConsumer, KafkaPublisher
from lineinspect.errors import ServiceUnavailable
from lineinspect.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture()
def settings(kafka_url: str) -> Settings:
    rid = uuid.uuid4().hex[:10]
    return Settings(bus_url=kafka_url, topic_frames=f"li-bus-{rid}", topic_dlq=f"li-bus-{rid}.dlq",
                    topic_partitions=2, consumer_group=f"li-bus-{rid}")


def _publish(settings: Settings, keyed: list[tuple[str, int]]) -> None:
    """Publish (key, i) messages with value str(i), flushed, and close the producer."""
    pub = KafkaPublisher(settings)
    try:
        for key, i in keyed:
            pub.publish(key.encode(), str(i).encode(), [])
        pub.flush(30)
    finally:
        pub.close()


def _drain(c: KafkaBatchConsumer, n: int, timeout_s: float = 30.0) -> list:
    out: list = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out += c.poll_batch(n - len(out), 500)
    return out


def test_publish_consume_commit_lag_and_dlq(settings: Settings) -> None:
    pub = KafkaPublisher(settings)
    big = b"x" * (2 * 1024 * 1024)  # over Kafka's 1 MiB default: the raised limits must agree
    for i in range(6):
        pub.publish(f"cam{i % 3}".encode(), big if i == 0 else str(i).encode(), [("i", str(i).encode())])
    pub.flush(30)
    with pytest.raises(MessageTooLarge):
        pub.publish(b"cam0", b"x" * (settings.max_message_bytes + 1), [])
    pub.close()

    c = KafkaBatchConsumer(settings)
    got = _drain(c, 6)
    assert sorted(dict(r.headers)["i"] for r in got) == [str(i).encode() for i in range(6)]
    assert any(len(r.value) == len(big) for r in got)
    assert sum(c.lag().values()) == 6  # nothing committed yet
    c.commit(got[:3])
    c.dead_letter(got[0], "undecodable", "test detail")
    c.commit(got)
    assert sum(c.lag().values()) == 0
    c.close()

    # a new member of the same group starts after the commits: nothing is redelivered
    c2 = KafkaBatchConsumer(settings)
    assert c2.poll_batch(6, 3000) == []
    c2.close()

    from kafka import KafkaConsumer

    dlq = KafkaConsumer(settings.topic_dlq, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                        consumer_timeout_ms=5000, group_id=None, max_partition_fetch_bytes=9 * 1024 * 1024)
    (msg,) = list(dlq)
    dlq.close()
    h = dict(msg.headers)
    assert h["li-dlq-reason"] == b"undecodable" and h["li-dlq-detail"] == b"test detail"
    assert h["li-src-topic"] == settings.topic_frames.encode() and h["i"] == dict(got[0].headers)["i"]
    assert msg.value == got[0].value


def test_uncommitted_records_are_redelivered(settings: Settings) -> None:
    _publish(settings, [("cam", i) for i in range(4)])
    c = KafkaBatchConsumer(settings)
    first = _drain(c, 4)
    c.commit(first[:1])
    c.close()  # the other three were never committed
    c2 = KafkaBatchConsumer(settings)
    again = _drain(c2, 3)
    c2.close()
    assert [r.value for r in again] == [b"1", b"2", b"3"]


def test_a_partition_paused_with_records_in_line_is_fetched_after_resume(settings: Settings) -> None:
    """Soak run 9 of the c1e6598 CI loop: a member held partitions for 5.5 minutes and fetched nothing. kafka-python
    3.0.12 parks the in-line records of a paused partition and never restores them once another partition's
    fetch was parsed meanwhile (the drained in-line slot is not ``None``): the partition is never fetched again.
    keep_alive pauses the partitions it holds while a partition assigned or revoked during its poll is not
    paused, which is this sequence. Fails on the unpatched client (no record of the paused partition after
    the resume)."""
    _publish(settings, [(f"cam{i}", i) for i in range(40)])
    c = KafkaBatchConsumer(settings)
    try:
        p, first, _others = _pause_with_records_in_line(c, settings)
        got = first + [r for r in _drain(c, 40, timeout_s=10) if r.partition == p.partition]
        end = c._consumer.end_offsets([p])[p]
        assert sorted(r.offset for r in got) == list(range(end)), f"partition {p.partition} stopped after a pause"
    finally:
        c.close()


def _pause_with_records_in_line(c: KafkaBatchConsumer, settings: Settings) -> tuple[Any, list, list]:
    """The sequence that stalls a partition on the unpatched client: one record handed out (the rest of its
    partition's fetch stays in line), that partition paused, the other one fetched and parsed meanwhile,
    then the resume. Returns the partition, its first record and the other partition's records."""
    from kafka import TopicPartition

    first: list = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (c.assignment() == [0, 1] and first):
        first = c.poll_batch(1, 200)
    assert c.assignment() == [0, 1] and first
    p = TopicPartition(settings.topic_frames, first[0].partition)
    c._consumer.pause(p)
    others = _drain(c, 40, timeout_s=5)
    assert others and all(r.partition != p.partition for r in others)
    c._consumer.resume(p)
    return p, first, others


def test_a_client_that_stops_fetching_a_held_partition_is_replaced(settings: Settings,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: with the fetcher workaround switched off, the paused partition stalls for good
    (the CI-loop failure); the stuck-client check replaces the client, which rejoins and reads from the
    last commit, so every record of the stalled partition still arrives (earlier ones may come twice)."""
    import ingest.bus.kafka as kb

    monkeypatch.setattr(kb, "clear_drained_in_line", lambda consumer: None)
    _publish(settings, [(f"cam{i}", i) for i in range(40)])
    c = KafkaBatchConsumer(settings, stuck_after_s=3.0)
    try:
        p, first, others = _pause_with_records_in_line(c, settings)
        got = first + others
        end = c._consumer.end_offsets([p])[p]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and {r.offset for r in got if r.partition == p.partition} != set(range(end)):
            got += c.poll_batch(40, 500)
        assert {r.offset for r in got if r.partition == p.partition} == set(range(end)), "the stalled partition never resumed"
        assert c.rebuilds >= 1
    finally:
        c.close()


def test_an_idle_client_with_nothing_to_read_is_not_replaced(settings: Settings) -> None:
    _publish(settings, [(f"cam{i}", i) for i in range(6)])
    c = KafkaBatchConsumer(settings, stuck_after_s=1.0)
    try:
        got = _drain(c, 6)
        assert len(got) == 6
        c.commit(got)
        deadline = time.monotonic() + 4  # four check periods with nothing unread
        while time.monotonic() < deadline:
            assert c.poll_batch(10, 300) == []
        assert c.rebuilds == 0 and c.assignment() == [0, 1]
    finally:
        c.close()


def test_unreachable_broker_names_kafka() -> None:
    s = Settings(bus_url="kafka://127.0.0.1:9", topic_frames="x")
    with pytest.raises(ServiceUnavailable, match="kafka is not reachable"):
        KafkaPublisher(s, connect_timeout_s=2)


def test_a_member_waiting_out_an_outage_does_not_stall_a_joining_member(settings: Settings) -> None:
    """The rebalance stall against the real broker: consumer A holds every partition and waits out an outage;
    B joins. B must get partitions while A is still waiting (A keeps the group alive), and A's records are
    not consumed by the keep-alive: everything published is handed out exactly once between them."""
    import threading

    _publish(settings, [(f"cam{i}", i) for i in range(8)])
    a = KafkaBatchConsumer(settings)
    got = _drain(a, 1)  # A joined and owns both partitions; it took at least one record
    assert got and a.assignment() == [0, 1]
    a.commit(got)
    outage_over = threading.Event()
    b_got: list = []
    b_assigned_during_outage = threading.Event()

    def run_b() -> None:
        b = KafkaBatchConsumer(settings, create_topics=False)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not b.assignment():
                b_got.extend(b.poll_batch(8, 500))
            if b.assignment() and not outage_over.is_set():
                b_assigned_during_outage.set()
            b_got.extend(_drain(b, 8, timeout_s=5))
            b.commit(b_got)
        finally:
            b.close()

    t = threading.Thread(target=run_b)
    t.start()
    deadline = time.monotonic() + 60  # A's "outage": keep-alive instead of sleep, until B has partitions
    while time.monotonic() < deadline and not b_assigned_during_outage.is_set() and t.is_alive():
        a.keep_alive(0.5)
    outage_over.set()
    t.join(90)
    assert b_assigned_during_outage.is_set(), "the joining member got no partitions while A waited"
    assert len(a.assignment()) == 1
    got += _drain(a, 8 - len(got) - len(b_got), timeout_s=10)
    a.close()
    assert sorted(int(r.value) for r in got + b_got) == list(range(8))


def _poll_busy(c: KafkaBatchConsumer, until, seconds: float, gap_s: float = 0.3) -> None:
    """Poll as a busy consumer does: a window of 1 ms (the smallest ``batch_max_wait_ms``; ``poll_batch`` always
    ends on a 0 ms poll), then work elsewhere (scoring, storing, committing) before the next poll."""
    deadline = time.monotonic() + seconds
    while not until() and time.monotonic() < deadline:
        c.poll_batch(8, 1)
        time.sleep(gap_s)


def test_a_join_that_finishes_between_polls_is_applied(settings: Settings) -> None:
    """kafka-python 3.0.12 runs JoinGroup -> SyncGroup as a background task; a poll that finds that task already
    finished starts a new JoinGroup instead of applying it (kafka/coordinator/base.py:497). A member whose join
    always finishes between two of its polls never gets an assignment. Fails on the unpatched client."""
    c = KafkaBatchConsumer(settings)
    try:
        _poll_busy(c, lambda: bool(c.assignment()), 20)
        assert c.assignment() == [0, 1], "the member never applied a finished join"
    finally:
        c.close()


def test_a_leader_rejoining_for_changed_metadata_finishes_its_join(settings: Settings) -> None:
    """The CI stall (a member revoked and never assigned again, alive and polling): the group leader rejoins
    because the topic metadata it assigned from changed (partitions added here; in CI the leader's first
    metadata refresh after its first assignment). kafka-python 3.0.12 wants that rejoin only through the
    snapshot comparison in ConsumerCoordinator.need_rejoin (coordinator/consumer.py:605), and the join task
    re-takes the snapshot itself in _perform_assignment (consumer.py:473): once the task has run in the
    background, no poll enters join_group_async again, the finished join is never applied (state stays
    REBALANCING, heartbeats stay off), the broker drops the member after the session timeout, and the member
    polls on, normally, without partitions for good. Fails on the unpatched client."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewPartitions

    c = KafkaBatchConsumer(settings)
    try:
        deadline = time.monotonic() + 30
        while c.assignment() != [0, 1] and time.monotonic() < deadline:
            c.poll_batch(8, 500)
        settle = time.monotonic() + 3  # polling normally, any rejoin right after the first assignment completes
        while time.monotonic() < settle:
            c.poll_batch(8, 500)
        assert c.assignment() == [0, 1]
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        try:
            admin.create_partitions({settings.topic_frames: NewPartitions(4)})
        finally:
            admin.close()
        _poll_busy(c, lambda: c.assignment() != [0, 1], 30)  # the metadata refresh (<= 10 s) starts the rejoin ...
        assert c.assignment() != [0, 1], "no rejoin for the new partitions"
        _poll_busy(c, lambda: False, 3)  # ... whose JoinGroup -> SyncGroup finishes while the member is busy
        deadline = time.monotonic() + 25  # then it polls normally, past the 10 s session timeout
        while c.assignment() != [0, 1, 2, 3] and time.monotonic() < deadline:
            c.poll_batch(8, 500)
        assert c.assignment() == [0, 1, 2, 3], f"the leader's rejoin never finished: assignment {c.assignment()}"
    finally:
        c.close()
