"""RSS of one process taking 8 MiB frames through the Kafka bus (fetch, dead-letter, commit), round after round.

The soak's long-lived consumer grew in steps right after the poison rounds (each carries two frames of about
``max_message_bytes``: ``oversized`` and ``raw_oversized``) and stayed flat between them. This isolates the bus
path: a high-water mark (the first big frame raises RSS, later ones do not) is the allocator keeping buffers;
growth every round would be a leak. Then rounds with two big frames in hand at once (two partitions, one poll):
if RSS steps up once more and stays, the level is set by how many big frames are in hand together.

    nice -n 10 python benchmarks/bench_rss_big_frame.py      (the broker of LINEINSPECT_TEST_KAFKA_URL)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ingest.bus.kafka import KafkaBatchConsumer, KafkaPublisher  # noqa: E402 - after the sys.path line above
from lineinspect.settings import Settings  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return -1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "rss_big_frame.json")
    args = ap.parse_args()
    rid = uuid.uuid4().hex[:8]
    s = Settings(bus_url=os.environ.get("LINEINSPECT_TEST_KAFKA_URL", "kafka://127.0.0.1:29092"),
                 topic_frames=f"li-rss-{rid}", topic_dlq=f"li-rss-{rid}.dlq", topic_partitions=4,
                 consumer_group=f"li-rss-{rid}")
    pub, c = KafkaPublisher(s), KafkaBatchConsumer(s)
    small = 20

    def round_trip(big: int) -> None:
        for p in range(big):  # as a raw client would send it: inside the broker's headroom, over the consumer's limit
            pub._producer.send(s.topic_frames, partition=p, key=b"cam", value=os.urandom(s.max_message_bytes + 1024),
                               headers=[])
        for _ in range(small):
            pub.publish(b"cam", os.urandom(2000), [])
        pub.flush(60)
        got: list = []
        while len(got) < small + big:
            got += c.poll_batch(small + big, 500)
        for r in got:
            if len(r.value) > s.max_message_bytes:
                c.dead_letter(r, "oversized", "bench_rss_big_frame")
        c.commit(got)

    for _ in range(2):
        round_trip(0)
    res: dict[str, object] = {"baseline_mb": rss_mb()}
    small_mb: list[float] = []
    big_mb: list[float] = []
    pair_mb: list[float] = []
    for _ in range(3):
        round_trip(0)
        small_mb.append(rss_mb())
    for _ in range(5):
        round_trip(1)
        time.sleep(0.5)
        big_mb.append(rss_mb())
    for _ in range(4):
        round_trip(2)
        time.sleep(0.5)
        pair_mb.append(rss_mb())
    res.update(after_small_rounds_mb=small_mb, after_big_rounds_mb=big_mb, after_two_big_at_once_rounds_mb=pair_mb)
    c.close()
    pub.close()
    res["loadavg"] = list(os.getloadavg())
    res["malloc_env"] = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    out: Path = args.out
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
