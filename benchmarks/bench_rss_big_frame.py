"""RSS of one process taking 8 MiB frames through the Kafka bus (fetch, dead-letter, commit), round after round.

The soak's long-lived consumer grew in steps right after the poison rounds (which carry one raw frame just over
``max_message_bytes``) and stayed flat between them. This isolates the bus path: a high-water mark (the first big
frame raises RSS, later ones do not) is the allocator keeping buffers; growth every round would be a leak.

    nice -n 10 python benchmarks/bench_rss_big_frame.py      (the broker of LINEINSPECT_TEST_KAFKA_URL)
"""

from __future__ import annotations

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
    rid = uuid.uuid4().hex[:8]
    s = Settings(bus_url=os.environ.get("LINEINSPECT_TEST_KAFKA_URL", "kafka://127.0.0.1:29092"),
                 topic_frames=f"li-rss-{rid}", topic_dlq=f"li-rss-{rid}.dlq", topic_partitions=4,
                 consumer_group=f"li-rss-{rid}")
    pub, c = KafkaPublisher(s), KafkaBatchConsumer(s)
    small = 20

    def round_trip(big: bool) -> None:
        if big:  # as a raw client would send it: inside the broker's headroom, over the consumer's limit
            pub._producer.send(s.topic_frames, key=b"cam", value=os.urandom(s.max_message_bytes + 1024), headers=[])
        for _ in range(small):
            pub.publish(b"cam", os.urandom(2000), [])
        pub.flush(60)
        got: list = []
        while len(got) < small + big:
            got += c.poll_batch(small + 1, 500)
        for r in got:
            if len(r.value) > s.max_message_bytes:
                c.dead_letter(r, "oversized", "bench_rss_big_frame")
        c.commit(got)

    for _ in range(2):
        round_trip(False)
    res = {"baseline_mb": rss_mb(), "after_small_rounds_mb": [], "after_big_rounds_mb": []}
    for _ in range(3):
        round_trip(False)
        res["after_small_rounds_mb"].append(rss_mb())
    for _ in range(5):
        round_trip(True)
        time.sleep(0.5)
        res["after_big_rounds_mb"].append(rss_mb())
    c.close()
    pub.close()
    res["loadavg"] = os.getloadavg()
    out = REPO / "benchmarks" / "results" / "rss_big_frame.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
