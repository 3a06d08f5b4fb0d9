"""Apache Kafka behind the bus seam (kafka-python).

Delivery is at least once: consumers never auto-commit; :meth:`KafkaBatchConsumer.commit` is called
by the inference consumer only after the results are durable in the database, and redelivered
frames are harmless because results are keyed by ``(camera, frame_id)``.

Sizes: frames up to ``settings.max_message_bytes`` (8 MiB by default) are refused up front when
larger; the broker/topic limit (``max.message.bytes``), the producer's ``max_request_size`` and
the consumer's fetch sizes all carry :data:`FRAMING` bytes of headroom on top, so a frame that
passes the check is never rejected deeper down (deploy/kafka/server.properties.in matches).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from typing import Any

from ingest.bus import check_size, dlq_headers
from ingest.bus.base import Record
from lineinspect.errors import ConfigError, ServiceUnavailable
from lineinspect.logs import kv
from lineinspect.settings import Settings

log = logging.getLogger(__name__)
SESSION_TIMEOUT_S = 10.0  # a consumer that stops heartbeating leaves the group after this

FRAMING = 64 * 1024  # record-batch overhead allowed on top of max_message_bytes
# Held partitions behind their end offset and nothing handed out for this long: the client is stuck
# (see KafkaBatchConsumer._check_stuck) and is replaced.
STUCK_AFTER_S = 60.0


def security_config(settings: Settings) -> dict[str, Any]:
    """kafka-python client options for SSL / SASL from the settings (nothing for PLAINTEXT)."""
    proto = settings.kafka_security_protocol
    cfg: dict[str, Any] = {"security_protocol": proto}
    if proto in ("SSL", "SASL_SSL") and settings.kafka_ssl_cafile:
        if not settings.kafka_ssl_cafile.is_file():
            raise ConfigError(f"kafka_ssl_cafile {settings.kafka_ssl_cafile} does not exist")
        cfg["ssl_cafile"] = str(settings.kafka_ssl_cafile)
    if proto.startswith("SASL"):
        if not (settings.kafka_sasl_mechanism and settings.kafka_sasl_username and settings.kafka_sasl_password):
            raise ConfigError(f"kafka_security_protocol={proto} needs LINEINSPECT_KAFKA_SASL_MECHANISM, "
                              "_SASL_USERNAME and _SASL_PASSWORD")
        cfg.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                   sasl_plain_username=settings.kafka_sasl_username,
                   sasl_plain_password=settings.kafka_sasl_password.get_secret_value())
    return cfg


def apply_finished_joins(consumer: Any) -> bool:
    """Make a kafka-python 3.0.x consumer apply every JoinGroup -> SyncGroup round it started (returns False,
    changing nothing, on a client without these internals).

    The client runs that round as a background task and applies its result (assignment, STABLE state,
    heartbeats, ``on_partitions_assigned``) only if a ``poll()`` is waiting on the task when it finishes.
    Two defects follow (kafka-python 3.0.12 and upstream master a3b3836f, coordinator/base.py):

    * a poll that finds the task already finished sends a new JoinGroup instead of applying it
      (``join_group_async``: ``if self._join_task is None or self._join_task.is_done``), so a member whose
      round always ends between two polls (short poll windows, work in between) never gets partitions;
    * a rejoin wanted only because the leader's metadata snapshot changed (``ConsumerCoordinator.need_rejoin``)
      stops being wanted as soon as the task has run ``_perform_assignment``, which re-takes the snapshot:
      ``poll()`` then never calls into the join again, the member stays REBALANCING without heartbeats, the
      broker drops it after the session timeout, and it polls on with no partitions for good (the CI stall).

    The fix: a started round is wanted until it is applied, and a finished, successful one is applied.
    See benchmarks/RESULTS.md (rebalance stall) and tests/ingest/test_bus_kafka.py."""
    try:
        from kafka.coordinator.base import MemberState
    except ImportError:
        return False
    coord = getattr(consumer, "_coordinator", None)
    needed = ("_join_task", "rejoining", "rejoin_needed", "state", "_generation", "_lock", "_subscription",
              "join_group_async", "need_rejoin", "_on_join_complete_async", "_enable_heartbeat")
    if coord is None or not all(hasattr(coord, n) for n in needed):
        log.warning("kafka client internals differ from kafka-python 3.0.x; finished group joins are not patched",
                    extra=kv(client=type(consumer).__module__))
        return False
    join_group, need_rejoin = coord.join_group_async, coord.need_rejoin

    def need_rejoin_until_applied() -> bool:
        if coord.rejoining and coord._subscription.partitions_auto_assigned():
            return True  # a round was started (listeners told, partitions revoked) and not applied yet
        return bool(need_rejoin())

    async def join_group_applying_finished(timeout_ms: int | None = None) -> bool:
        task = coord._join_task
        if task is not None and task.is_done and task.succeeded() and coord.state is MemberState.REBALANCING:
            # what join_group_async does after awaiting a successful round, done for the round nobody awaited
            coord._join_task = None
            with coord._lock:
                coord.rejoining = False
                coord.rejoin_needed = False
                coord.state = MemberState.STABLE
                coord._enable_heartbeat()
            gen = coord._generation
            log.info("applying a group join that finished between polls",
                     extra=kv(group=coord.group_id, generation=gen.generation_id))
            await coord._on_join_complete_async(gen.generation_id, gen.member_id, gen.protocol, task.value)
        return bool(await join_group(timeout_ms=timeout_ms))  # rejoins again if still needed

    coord.need_rejoin = need_rejoin_until_applied
    coord.join_group_async = join_group_applying_finished
    return True


def clear_drained_in_line(consumer: Any) -> None:
    """Work around a kafka-python 3.0.12 fetcher defect that silently stops a partition for good (soak run 9
    of the c1e6598 CI loop: a member held partitions [0, 1] for 5.5 minutes and fetched nothing).

    ``Fetcher.fetched_records`` parks the in-line records of a partition that is paused, and restores them
    only ``if self._next_partition_records is None`` (kafka/consumer/fetcher.py:589); but a consumed in-line
    slot is left holding a drained, falsy ``PartitionRecords``, never ``None``. Once any other partition's
    fetch has been parsed after the pause, the parked records are never restored, and a parked partition
    is never fetched again (``_fetchable_partitions`` skips it), paused or not. :meth:`KafkaBatchConsumer.keep_alive`
    pauses partitions, so this bit whenever a partition had records in line when a wait began. Called
    before every ``poll()``: an empty slot is set back to ``None`` (what the client treats it as anyway)."""
    fetcher: Any = getattr(consumer, "_fetcher", None)
    in_line = getattr(fetcher, "_next_partition_records", None)
    if in_line is not None and not in_line:
        fetcher._next_partition_records = None


def _unavailable(settings: Settings, exc: BaseException) -> ServiceUnavailable:
    return ServiceUnavailable("kafka", settings.bus_url, f"{type(exc).__name__}: {exc}")


def ensure_topics(settings: Settings, topics: list[str], timeout_s: float = 30.0, connect_timeout_s: float = 10.0) -> None:
    """Create missing topics with ``topic_partitions`` partitions and the raised message size."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="lineinspect-admin",
                                 request_timeout_ms=int(timeout_s * 1000),
                                 bootstrap_timeout_ms=int(connect_timeout_s * 1000), **security_config(settings))
    except KafkaError as exc:
        raise _unavailable(settings, exc) from exc
    try:
        existing = set(admin.list_topics())
        replicas = min(3, max(1, len(admin.describe_cluster().get("brokers") or [])))
        new = [NewTopic(t, settings.topic_partitions, replicas,
                        topic_configs={"max.message.bytes": str(settings.max_message_bytes + FRAMING)})
               for t in dict.fromkeys(topics) if t not in existing]
        if new:
            try:
                admin.create_topics(new, timeout_ms=int(timeout_s * 1000), wait_for_metadata=True)
                log.info("created kafka topics", extra=kv(topics=[t.name for t in new], partitions=settings.topic_partitions))
            except TopicAlreadyExistsError:
                pass  # another process won the race
    except KafkaError as exc:
        raise _unavailable(settings, exc) from exc
    finally:
        admin.close()


class KafkaPublisher:
    """Frames to ``settings.topic_frames``, keyed by camera; ``acks=all`` and retries for durability."""

    def __init__(self, settings: Settings, linger_ms: int = 5, create_topics: bool = True,
                 connect_timeout_s: float = 10.0) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self.settings = settings
        self.topic = settings.topic_frames
        boot = int(connect_timeout_s * 1000)
        if create_topics:
            ensure_topics(settings, [settings.topic_frames, settings.topic_dlq], connect_timeout_s=connect_timeout_s)
        compression = "lz4" if importlib.util.find_spec("lz4") else None
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=settings.kafka_bootstrap, client_id="lineinspect-publisher",
                acks="all", linger_ms=linger_ms, compression_type=compression, retries=10,
                max_request_size=settings.max_message_bytes + FRAMING, max_block_ms=30_000,
                bootstrap_timeout_ms=boot, **security_config(settings))
        except KafkaError as exc:
            raise _unavailable(settings, exc) from exc
        self._failed: list[BaseException] = []

    def publish(self, key: bytes, value: bytes, headers: list[tuple[str, bytes]], topic: str | None = None) -> None:
        check_size(key, value, headers, self.settings.max_message_bytes)
        if self._failed:
            raise self._failed.pop(0)
        fut = self._producer.send(topic or self.topic, key=key, value=value, headers=headers)
        fut.add_errback(self._on_error)

    def _on_error(self, exc: BaseException) -> None:
        log.error("kafka delivery failed", extra=kv(error=str(exc)))
        self._failed.append(exc)

    def flush(self, timeout_s: float | None = None) -> None:
        from kafka.errors import KafkaError

        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise _unavailable(self.settings, exc) from exc
        if self._failed:
            raise RuntimeError(f"{len(self._failed)} message(s) were not delivered; first: {self._failed[0]}")

    def close(self, timeout_s: float = 10.0) -> None:
        close_producer(self._producer, timeout_s)


def close_producer(producer: Any, timeout_s: float) -> None:
    """Close a KafkaProducer even when its pending records cannot be delivered.

    kafka-python 3.0.12's ``close()`` flushes first and, when that flush times out (broker down),
    raises before stopping anything: the sender thread and its sockets live on and ``__del__``
    fails again later. Undelivered records were never acknowledged, so their senders re-send or
    report them; they are aborted here (the client's own force-close) and the close completes."""
    from kafka.errors import KafkaTimeoutError

    try:
        producer.close(timeout=timeout_s)
    except KafkaTimeoutError:
        log.warning("kafka producer closed with undelivered records", extra=kv(timeout_s=timeout_s))
        sender = getattr(producer, "_sender", None)  # no public force-close in 3.0.12
        if sender is not None:
            sender.force_close()
            sender.join(timeout_s)
        producer.close(timeout=timeout_s)  # the aborted batches are done: the flush returns at once


class KafkaBatchConsumer:
    """Batches from ``settings.topic_frames`` in a consumer group; commits only what it is told to.

    A rebalance listener tracks the assignment: after a partition is revoked, commits for it are
    dropped (its new owner re-reads from the last commit; the store makes the replay harmless).
    """

    def __init__(self, settings: Settings, group: str | None = None, create_topics: bool = True,
                 connect_timeout_s: float = 10.0, stuck_after_s: float = STUCK_AFTER_S) -> None:
        from kafka import ConsumerRebalanceListener, KafkaProducer
        from kafka.errors import KafkaError

        self.settings = settings
        self.topic = settings.topic_frames
        self.dlq_topic = settings.topic_dlq
        self.group = group or settings.consumer_group
        self._boot_ms = int(connect_timeout_s * 1000)
        if create_topics:
            ensure_topics(settings, [self.topic, self.dlq_topic], connect_timeout_s=connect_timeout_s)
        self._consumer = self._new_client()
        try:
            self._dlq = KafkaProducer(
                bootstrap_servers=settings.kafka_bootstrap, client_id="lineinspect-dlq", acks="all", retries=10,
                max_request_size=settings.max_message_bytes + 2 * FRAMING, bootstrap_timeout_ms=self._boot_ms,
                **security_config(settings))
        except KafkaError as exc:
            self._consumer.close(autocommit=False)  # not left with its threads and sockets
            raise _unavailable(settings, exc) from exc
        self._assigned: set[int] = set()
        self._rebalancing_since: float | None = None  # revoked, not yet assigned again
        self._warned_rebalance = False
        self.stuck_after_s = stuck_after_s
        self.rebuilds = 0  # Kafka clients replaced because they held partitions and stopped fetching them
        self._last_progress = time.monotonic()  # records handed out, or the assignment changed
        owner = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                owner._assigned -= {tp.partition for tp in revoked if tp.topic == owner.topic}
                owner._rebalancing_since = owner._last_progress = time.monotonic()
                log.info("partitions revoked", extra=kv(group=owner.group, partitions=sorted(tp.partition for tp in revoked)))

            def on_partitions_assigned(self, assigned: Any) -> None:
                owner._assigned |= {tp.partition for tp in assigned if tp.topic == owner.topic}
                if owner._warned_rebalance:
                    log.warning("group rebalance finished", extra=kv(
                        group=owner.group, waited_s=round(time.monotonic() - (owner._rebalancing_since or 0), 1)))
                owner._rebalancing_since, owner._warned_rebalance = None, False
                owner._last_progress = time.monotonic()
                log.info("partitions assigned", extra=kv(group=owner.group, partitions=sorted(tp.partition for tp in assigned)))

        self._listener = _Listener()
        self._subscribe()

    def _new_client(self) -> Any:
        """A KafkaConsumer for this group with the group-join workaround applied (not yet subscribed)."""
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        s = self.settings
        fetch = s.max_message_bytes + FRAMING
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=s.kafka_bootstrap, group_id=self.group, client_id="lineinspect-consumer",
                enable_auto_commit=False, auto_offset_reset="earliest",
                max_poll_records=max(s.batch_max_records, 1),
                fetch_max_bytes=max(fetch, 52_428_800), max_partition_fetch_bytes=fetch,
                session_timeout_ms=int(SESSION_TIMEOUT_S * 1000), heartbeat_interval_ms=3_000,
                # also the rebalance timeout: a member that never rejoins holds the group this long
                max_poll_interval_ms=s.kafka_max_poll_interval_ms,
                # A topic created moments ago (by us or a camera) must reach the group's assignment in
                # seconds, not at the default 5-minute metadata refresh.
                metadata_max_age_ms=10_000,
                bootstrap_timeout_ms=self._boot_ms, **security_config(s))
        except KafkaError as exc:
            raise _unavailable(s, exc) from exc
        apply_finished_joins(consumer)
        return consumer

    def _subscribe(self) -> None:
        from kafka.errors import KafkaError

        try:  # learn the topic's partitions before joining, so the first assignment is not empty
            self._consumer.partitions_for_topic(self.topic)
        except KafkaError as exc:
            log.warning("topic metadata not available yet; the group will pick it up on refresh",
                        extra=kv(topic=self.topic, error=str(exc)))
        self._consumer.subscribe([self.topic], listener=self._listener)

    def assignment(self) -> list[int]:
        return sorted(self._assigned)

    def poll_batch(self, max_records: int, max_wait_ms: int) -> list[Record]:
        from kafka.errors import KafkaError

        out: list[Record] = []
        self._check_rebalance()
        deadline = time.monotonic() + max_wait_ms / 1000.0
        try:
            while len(out) < max_records:
                remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
                clear_drained_in_line(self._consumer)
                got = self._consumer.poll(timeout_ms=remaining_ms, max_records=max_records - len(out))
                for tp_records in got.values():
                    out.extend(Record(m.topic, m.partition, m.offset, m.key, m.value,
                                      [(k, v) for k, v in (m.headers or [])], m.timestamp) for m in tp_records)
                if remaining_ms == 0:
                    break
        except KafkaError as exc:
            if out:
                log.warning("kafka poll failed; returning the records in hand", extra=kv(error=str(exc), n=len(out)))
                return out
            raise _unavailable(self.settings, exc) from exc
        if out:
            self._last_progress = time.monotonic()
        else:
            self._check_stuck()
        return out

    def _check_stuck(self) -> None:
        """Replace the Kafka client when it holds partitions with unread records and has handed out
        nothing for ``stuck_after_s``, none of them paused and no rebalance under way.

        Defence in depth against client defects that stop fetching without an error (two are worked
        around above; soak run 9 of the c1e6598 CI loop was one: partitions [0, 1] held for 5.5
        minutes, nothing fetched). A new client rejoins the group and reads from the last commit,
        so nothing is lost; records handed out but not yet committed come again, which the store
        absorbs (results are keyed by camera and frame id)."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        now = time.monotonic()
        if not self._assigned or self._rebalancing_since is not None or now - self._last_progress < self.stuck_after_s:
            return
        self._last_progress = now  # checked: the next check is a full period later
        c = self._consumer
        tps = [TopicPartition(self.topic, p) for p in sorted(self._assigned)]
        if set(tps) & set(c.paused()):
            return
        try:
            ends = c.end_offsets(tps, timeout_ms=5_000)
            positions = {tp: c.position(tp, timeout_ms=5_000) for tp in tps}
        except KafkaError:
            return  # the broker is away: the poll path reports and waits out outages
        behind = {tp.partition: ends[tp] - pos for tp, pos in positions.items()
                  if pos is not None and ends.get(tp) is not None and ends[tp] > pos}
        if not behind:
            return
        log.warning("kafka client holds partitions with unread records but fetched nothing; replacing it",
                    extra=kv(group=self.group, idle_s=self.stuck_after_s, unread=behind))
        self._rebuild()

    def _rebuild(self) -> None:
        """A new client in place of this one (created first: if the broker is away, the old one stays)."""
        new = self._new_client()
        old, self._consumer = self._consumer, new
        self._assigned = set()
        self._rebalancing_since = self._last_progress = time.monotonic()
        try:
            old.close(autocommit=False)  # leaves the group: its partitions are assigned again
        except Exception as exc:  # noqa: BLE001 - the old client is being discarded either way
            log.warning("closing the replaced kafka client failed", extra=kv(error=str(exc)))
        self._subscribe()
        self.rebuilds += 1

    def keep_alive(self, timeout_s: float) -> None:
        """Poll with every assigned partition paused, for up to ``timeout_s``: heartbeats alone do not rejoin a
        rebalance in kafka-python (the heartbeat thread only *requests* the rejoin, the JoinGroup is sent
        from ``poll()``), so a consumer that sleeps through an outage keeps the whole group, and any member
        joining it, without partitions until it polls again (up to ``kafka_max_poll_interval_ms``).

        Nothing is consumed: paused partitions return no records (kafka-python keeps their buffered
        fetches), and a partition assigned during this call that does return records is sought back to
        its first returned offset, so the next :meth:`poll_batch` hands those records out."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        c = self._consumer
        try:
            held = list(c.assignment())
            if held:
                c.pause(*held)
            try:
                clear_drained_in_line(c)
                got = c.poll(timeout_ms=max(0, int(timeout_s * 1000)))
            finally:
                now = [tp for tp in c.assignment() if tp in c.paused()]
                if now:
                    c.resume(*now)
            for tp, msgs in got.items():
                if msgs:
                    c.seek(TopicPartition(tp.topic, tp.partition), min(m.offset for m in msgs))
            self._check_rebalance()
        except KafkaError as exc:  # the broker is the outage being waited out, or restarting: the caller waits
            log.debug("keep-alive poll failed", extra=kv(error=str(exc)))
            time.sleep(max(0.0, timeout_s))
        finally:
            self._last_progress = time.monotonic()  # waiting out an outage is not a stuck client

    def _check_rebalance(self) -> None:
        """Say so once when a rebalance outlasts two session timeouts: some member is not rejoining, and
        the group (this consumer included) waits for it up to ``kafka_max_poll_interval_ms``."""
        since = self._rebalancing_since
        if since is not None and not self._warned_rebalance and time.monotonic() - since > 2 * SESSION_TIMEOUT_S:
            self._warned_rebalance = True
            log.warning("group rebalance is taking long: a member is not rejoining; no partitions until it does "
                        "or the group drops it", extra=kv(group=self.group, waited_s=round(time.monotonic() - since, 1),
                                                          max_wait_s=self.settings.kafka_max_poll_interval_ms / 1000))

    def commit(self, records: list[Record]) -> None:
        from kafka import TopicPartition
        from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError
        from kafka.structs import OffsetAndMetadata

        offsets: dict[int, int] = {}
        for r in records:
            if r.topic == self.topic:
                offsets[r.partition] = max(offsets.get(r.partition, 0), r.offset + 1)
        owned = {p: o for p, o in offsets.items() if p in self._assigned}
        lost = sorted(set(offsets) - set(owned))
        if lost:
            log.info("not committing revoked partitions (their new owner replays them)", extra=kv(partitions=lost))
        if not owned:
            return
        try:
            self._consumer.commit({TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1) for p, o in owned.items()})
        except (CommitFailedError, RebalanceInProgressError) as exc:
            log.warning("commit rejected by a rebalance; the records will be redelivered", extra=kv(error=str(exc)))
        except KafkaError as exc:
            raise _unavailable(self.settings, exc) from exc

    def dead_letter(self, record: Record, reason: str, detail: str = "") -> None:
        """Produce the record to the DLQ and wait for the broker's ack (the caller commits after)."""
        from kafka.errors import KafkaError

        headers = list(record.headers) + dlq_headers(record, reason, detail)
        try:
            self._dlq.send(self.dlq_topic, key=record.key, value=record.value, headers=headers).get(timeout=30)
        except KafkaError as exc:
            raise _unavailable(self.settings, exc) from exc

    def lag(self) -> dict[int, int]:
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        tps = [TopicPartition(self.topic, p) for p in sorted(self._assigned)]
        if not tps:
            return {}
        try:
            ends = self._consumer.end_offsets(tps, timeout_ms=5_000)
            out = {}
            for tp in tps:
                committed = self._consumer.committed(tp, timeout_ms=5_000) or 0
                out[tp.partition] = max(0, ends.get(tp, 0) - committed)
            return out
        except KafkaError as exc:
            log.warning("lag unavailable", extra=kv(error=str(exc)))
            return {}

    def close(self) -> None:
        try:
            close_producer(self._dlq, 5.0)
        finally:
            self._consumer.close(autocommit=False)
