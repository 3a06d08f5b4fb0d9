"""Reproduce the rebalance stall against a real broker, bounded: old behaviour (a consumer waiting out an
outage sleeps) against the fix (it keeps polling with its partitions paused, ``KafkaBatchConsumer.keep_alive``).

Each trial races the join with topic creation: member A and member B are created at once on a topic that
does not exist yet (both create it), A takes its first assignment and then "waits out an outage" for
``--outage`` seconds; short-lived members join and leave meanwhile (each one another rebalance). Measured:
how long B, and the short-lived members, go from joining to holding partitions. With ``sleep`` the group
cannot finish any rebalance while A sleeps (kafka-python rejoins only from ``poll()``; heartbeats keep A
in the group), so B waits for the whole outage; with ``keep_alive`` it does not.

    nice -n 10 python benchmarks/repro_rebalance_stall.py --trials 3 --outage 20
Uses the broker of ``LINEINSPECT_TEST_KAFKA_URL`` / ``--bus`` (the shared one is fine: nothing is stopped).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ingest.bus.kafka import KafkaBatchConsumer  # noqa: E402 - after the sys.path line above
from lineinspect.settings import Settings  # noqa: E402


def _until_assigned(c: KafkaBatchConsumer, deadline: float) -> float | None:
    t = time.monotonic()
    while time.monotonic() < deadline:
        c.poll_batch(8, 200)
        if c.assignment():
            return round(time.monotonic() - t, 2)
    return None


def trial(bus: str, mode: str, outage_s: float, short_lived: int) -> dict[str, Any]:
    rid = uuid.uuid4().hex[:8]
    s = Settings(bus_url=bus, topic_frames=f"li-stall-{rid}", topic_dlq=f"li-stall-{rid}.dlq", topic_partitions=4,
                 consumer_group=f"li-stall-{rid}")
    out: dict[str, Any] = {"mode": mode}
    a_ready = threading.Event()
    outage_over = threading.Event()
    end = time.monotonic() + outage_s + 60

    def member_a() -> None:
        a = KafkaBatchConsumer(s)  # races B's topic creation and join
        try:
            out["a_first_assignment_s"] = _until_assigned(a, end)
            a_ready.set()
            t = time.monotonic()
            while time.monotonic() - t < outage_s:  # the outage: store down, model held, sink full...
                if mode == "keep_alive":
                    a.keep_alive(0.5)
                else:
                    time.sleep(0.5)
            outage_over.set()
            _until_assigned(a, time.monotonic() + 5)
        finally:
            outage_over.set()
            a.close()

    def member_b() -> None:
        b = KafkaBatchConsumer(s)
        try:
            a_ready.wait(outage_s + 30)
            t = time.monotonic()  # from A's first assignment: B is now the member waiting for a rebalance
            got = _until_assigned(b, end) if not b.assignment() else 0.0
            out["b_assigned_after_s"] = got
            out["b_assigned_during_outage"] = got is not None and not outage_over.is_set()
            out["b_wait_from_a_assignment_s"] = round(time.monotonic() - t, 2)
        finally:
            b.close()

    def short(i: int, waits: list[float | None]) -> None:
        c = KafkaBatchConsumer(s, create_topics=False)
        try:
            waits.append(_until_assigned(c, time.monotonic() + outage_s + 10))
        finally:
            c.close()

    ta, tb = threading.Thread(target=member_a), threading.Thread(target=member_b)
    ta.start()
    tb.start()
    a_ready.wait(120)
    waits: list[float | None] = []
    shorts = []
    for i in range(short_lived):
        time.sleep(outage_s / (short_lived + 2))
        th = threading.Thread(target=short, args=(i, waits))
        th.start()
        shorts.append(th)
    for th in [ta, tb, *shorts]:
        th.join(outage_s + 120)
    out["short_lived_waits_s"] = waits
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bus", default=os.environ.get("LINEINSPECT_TEST_KAFKA_URL", "kafka://127.0.0.1:29092"))
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--outage", type=float, default=20.0)
    ap.add_argument("--short-lived", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "rebalance_stall.json")
    args = ap.parse_args()
    res: dict[str, Any] = {"outage_s": args.outage, "trials": args.trials, "loadavg_start": os.getloadavg()}
    for mode in ("sleep", "keep_alive"):  # side by side, alternating would mix; each mode's trials in a row
        runs = [trial(args.bus, mode, args.outage, args.short_lived) for _ in range(args.trials)]
        b = [r["b_wait_from_a_assignment_s"] for r in runs]
        sl = [w for r in runs for w in r["short_lived_waits_s"] if w is not None]
        res[mode] = {"runs": runs, "b_wait_median_s": statistics.median(b), "b_wait_max_s": max(b),
                     "b_assigned_during_outage": sum(bool(r["b_assigned_during_outage"]) for r in runs),
                     "short_lived_wait_median_s": statistics.median(sl) if sl else None,
                     "short_lived_never_assigned": sum(w is None for r in runs for w in r["short_lived_waits_s"])}
        print(mode, json.dumps({k: v for k, v in res[mode].items() if k != "runs"}), flush=True)
    res["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
