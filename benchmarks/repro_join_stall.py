"""Reproduce the second rebalance stall against a real broker: kafka-python 3.0.12 as pinned ("pinned": the
``apply_finished_joins`` patch switched off for this process) side by side with the patched consumer ("fixed").

The client runs JoinGroup -> SyncGroup as a background task and applies its result only when a ``poll()`` is
waiting on it as it ends (ingest/bus/kafka.py, ``apply_finished_joins``, says where and why). Three scenarios,
each trial run once per mode, modes alternating:

* ``busy``: one member polls with a 1 ms window (``poll_batch`` always ends on a 0 ms poll) and works 0.3 s
  between polls. Measured: JoinGroups sent, assignments applied, time to the first assignment (cap ``--cap``).
* ``first``: one fresh member on an idle topic polls as the consumer loop does (``batch_max_wait_ms`` window,
  5 ms between polls). As group leader it rejoins right after its first assignment (its metadata snapshot was
  empty when it assigned); measured: does it hold the partitions ``--cap`` seconds later.
* ``survivor``: member B consumes (same loop), member A joins, takes records and leaves (LeaveGroup); measured:
  time from A's leave until B holds every partition again (cap ``--cap``; past the 10 s session timeout a
  stuck member has been dropped by the broker and never comes back on its own).

    nice -n 10 python benchmarks/repro_join_stall.py --trials 5 --bus kafka://127.0.0.1:29692
Uses the broker of ``LINEINSPECT_TEST_KAFKA_URL`` / ``--bus`` (topics and groups are new per trial; nothing is
stopped). Writes benchmarks/results/join_stall.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import ingest.bus.kafka as kafka_bus  # noqa: E402 - after the sys.path line above
from ingest.bus.kafka import KafkaBatchConsumer, KafkaPublisher  # noqa: E402
from lineinspect.settings import Settings  # noqa: E402

PATCH = kafka_bus.apply_finished_joins
MODES = ("pinned", "fixed")


class _Count(logging.Handler):
    """Counts kafka-python's coordinator log lines: JoinGroups sent, assignments applied."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.n: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        m = record.getMessage()
        if m.startswith("(Re-)joining group"):
            self.n["join_sent"] += 1
        elif m.startswith("Setting newly assigned partitions"):
            self.n["applied"] += 1


def _mode(mode: str) -> None:
    kafka_bus.apply_finished_joins = PATCH if mode == "fixed" else (lambda consumer: False)


def _settings(bus: str, tag: str, wait_ms: int) -> Settings:
    rid = f"{tag}-{uuid.uuid4().hex[:8]}"
    return Settings(bus_url=bus, topic_frames=f"js-{rid}", topic_dlq=f"js-{rid}.dlq", topic_partitions=4,
                    consumer_group=f"js-{rid}", batch_max_records=8, batch_max_wait_ms=wait_ms)


def busy(bus: str, cap: float, counter: _Count) -> dict[str, Any]:
    s = _settings(bus, "busy", 1)
    counter.n.clear()
    c = KafkaBatchConsumer(s)
    t0 = time.monotonic()
    first = None
    try:
        while time.monotonic() - t0 < cap:
            c.poll_batch(8, 1)
            if c.assignment():
                first = round(time.monotonic() - t0, 2)
                break
            time.sleep(0.3)
    finally:
        c.close()
    return {"assigned_after_s": first, "join_sent": counter.n["join_sent"], "applied": counter.n["applied"]}


def _loop(c: KafkaBatchConsumer, wait_ms: int, stop: threading.Event, on_poll: Any = None) -> None:
    """The consumer loop's polling rhythm: poll_batch(window), commit what came, a little work, again."""
    while not stop.is_set():
        recs = c.poll_batch(8, wait_ms)
        if recs:
            c.commit(recs)
        if on_poll is not None:
            on_poll()
        time.sleep(0.005)


def first(bus: str, cap: float, wait_ms: int) -> dict[str, Any]:
    s = _settings(bus, "first", wait_ms)
    c = KafkaBatchConsumer(s)
    seen: dict[str, float] = {}
    t0 = time.monotonic()

    def note() -> None:
        if c.assignment() and "first" not in seen:
            seen["first"] = time.monotonic() - t0

    stop = threading.Event()
    t = threading.Thread(target=_loop, args=(c, wait_ms, stop, note))
    t.start()
    time.sleep(cap)
    stop.set()
    t.join(30)
    held = c.assignment()
    c.close()
    return {"first_assignment_s": round(seen["first"], 2) if "first" in seen else None,
            "holds_all_after_cap": held == [0, 1, 2, 3]}


def survivor(bus: str, cap: float, wait_ms: int) -> dict[str, Any]:
    s = _settings(bus, "surv", wait_ms)
    pub = KafkaPublisher(s)
    for i in range(40):
        pub.publish(f"cam{i}".encode(), b"x", [])
    pub.flush(30)
    pub.close()
    b = KafkaBatchConsumer(s)
    left: dict[str, float] = {}

    def note() -> None:
        if "t" in left and "back" not in left and b.assignment() == [0, 1, 2, 3]:
            left["back"] = time.monotonic() - left["t"]

    stop = threading.Event()
    tb = threading.Thread(target=_loop, args=(b, wait_ms, stop, note))
    tb.start()
    time.sleep(1.0)
    a = KafkaBatchConsumer(s, create_topics=False)
    t0 = time.monotonic()
    while not a.assignment() and time.monotonic() - t0 < cap:
        a.poll_batch(8, 100)
    a_assigned = bool(a.assignment())
    a.poll_batch(4, 500)
    a.close()
    left["t"] = time.monotonic()
    while "back" not in left and time.monotonic() - left["t"] < cap:
        time.sleep(0.1)
    stop.set()
    tb.join(30)
    b.close()
    return {"a_assigned": a_assigned, "b_back_after_s": round(left["back"], 2) if "back" in left else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bus", default=os.environ.get("LINEINSPECT_TEST_KAFKA_URL", "kafka://127.0.0.1:29092"))
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--cap", type=float, default=25.0, help="seconds a member is given (past the 10 s session timeout)")
    ap.add_argument("--wait-ms", type=int, default=Settings().batch_max_wait_ms, help="poll window (batch_max_wait_ms)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "join_stall.json")
    args = ap.parse_args()

    counter = _Count()
    lg = logging.getLogger("kafka.coordinator")
    lg.setLevel(logging.INFO)
    lg.addHandler(counter)
    logging.getLogger("ingest.bus.kafka").setLevel(logging.ERROR)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {m: {"busy": [], "first": [], "survivor": []} for m in MODES}
    load0 = list(os.getloadavg())
    with tqdm(total=args.trials * len(MODES) * 3, desc="join stall") as bar:
        for _ in range(args.trials):
            for mode in MODES:
                _mode(mode)
                runs[mode]["busy"].append(busy(args.bus, min(args.cap, 15.0), counter))
                bar.update()
                runs[mode]["first"].append(first(args.bus, args.cap, args.wait_ms))
                bar.update()
                runs[mode]["survivor"].append(survivor(args.bus, args.cap, args.wait_ms))
                bar.update()
    _mode("fixed")

    def summary(r: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        backs = [x["b_back_after_s"] for x in r["survivor"] if x["b_back_after_s"] is not None]
        return {
            "busy_assigned": sum(x["assigned_after_s"] is not None for x in r["busy"]),
            "busy_join_sent_total": sum(x["join_sent"] for x in r["busy"]),
            "busy_applied_total": sum(x["applied"] for x in r["busy"]),
            "first_stuck": sum(not x["holds_all_after_cap"] for x in r["first"]),
            "survivor_stuck": sum(x["b_back_after_s"] is None for x in r["survivor"]),
            "survivor_back_median_s": round(statistics.median(backs), 2) if backs else None,
            "survivor_back_max_s": max(backs) if backs else None,
        }

    out = {"trials": args.trials, "cap_s": args.cap, "wait_ms": args.wait_ms, "bus": args.bus,
           "loadavg_start": load0, "loadavg_end": list(os.getloadavg()),
           "summary": {m: summary(runs[m]) for m in MODES}, "runs": runs}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["summary"], indent=1))


if __name__ == "__main__":
    main()
