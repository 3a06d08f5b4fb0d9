"""Time the dashboard's heavy queries on a large seeded history (default: 1,000,000 results).

    python benchmarks/dashboard_queries.py --db sqlite:////tmp/li-bench.sqlite --results 1000000

Seeds the database when it is empty, then runs each query a few times and prints the median
wall time. Numbers are for the report, never for assertions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, func, select

from dashboard.imaging import accumulate_masks
from storage import queries as q
from storage.models import Base, InspectionResult
from storage.seed import SeedConfig, seed_history


def _time(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(first run ms, median of the rest ms)."""
    t = time.perf_counter()
    fn()
    first = (time.perf_counter() - t) * 1000
    rest = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        rest.append((time.perf_counter() - t) * 1000)
    return first, statistics.median(rest) if rest else first


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--results", type=int, default=1_000_000)
    ap.add_argument("--hours", type=float, default=7 * 24.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    engine = create_engine(args.db)
    Base.metadata.create_all(engine)
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(InspectionResult)).scalar_one()
    if n == 0:
        t = time.perf_counter()
        seed_history(engine, SeedConfig(results=args.results, hours=args.hours, images=500))
        print(f"seeded in {time.perf_counter() - t:.1f} s")
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(InspectionResult)).scalar_one()
        lo, hi = q.time_bounds(conn)
        pid = q.products(conn)[0]["id"]
    assert lo is not None and hi is not None
    all_time = q.Filters()
    day = q.Filters(start=hi + 1 - 86400, end=hi + 1)
    hour = q.Filters(start=hi + 1 - 3600, end=hi + 1)
    day_product = q.Filters(start=hi + 1 - 86400, end=hi + 1, product_ids=(pid,))
    print(f"{n:,} inspection results over {(hi - lo) / 3600:.0f} h on {engine.dialect.name}")

    def run(fn: Callable, *a: object) -> Callable[[], object]:
        def go() -> object:
            with engine.connect() as conn:
                return fn(conn, *a)
        return go

    cases = [
        ("summary, all time", run(q.summary, all_time)),
        ("summary, last 24 h", run(q.summary, day)),
        ("summary, last hour", run(q.summary, hour)),
        ("summary, last 24 h, one product", run(q.summary, day_product)),
        ("breakdown per camera, all time", run(q.breakdown, all_time, "camera")),
        ("breakdown per product, last 24 h", run(q.breakdown, day, "product")),
        ("trend per minute, last 24 h", run(q.trend, day, 60.0)),
        ("trend per hour, all time", run(q.trend, all_time, 3600.0)),
        ("trend per shift, all time", run(q.trend, all_time, 8 * 3600.0, 6 * 3600.0)),
        ("score histogram, all time", run(q.score_histogram, all_time, 0.05)),
        ("score histogram, last 24 h", run(q.score_histogram, day, 0.05)),
        ("latest 24 anomalies", run(q.latest_anomalies, all_time, 24)),
        ("latest 24 anomalies, one product", run(q.latest_anomalies, q.Filters(product_ids=(pid,)), 24)),
        ("current thresholds", run(q.current_thresholds)),
        ("specimen summary, all time", run(q.specimen_summary, all_time)),
        ("consumer health, last 24 h", run(q.consumer_health, day.start, day.end)),
        ("time bounds", run(q.time_bounds)),
    ]
    for name, fn in cases:
        first, med = _time(fn, args.repeat)
        print(f"{name:<40} first {first:8.1f} ms   median {med:8.1f} ms")
    masks = run(q.recent_defect_masks, pid, all_time, 500)
    first, med = _time(lambda: accumulate_masks(masks(), (64, 64)), args.repeat)
    print(f"{'location map (500 masks, fetch+decode)':<40} first {first:8.1f} ms   median {med:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
