"""Pure math behind the dashboard's charts: p-chart control limits, time buckets and shifts.

No Streamlit here, so every number the pages show can be unit-tested.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import numpy as np

SHIFT_S = 8 * 3600.0

# name -> (bucket seconds, origin seconds): shifts start at 06:00, 14:00 and 22:00 UTC
BUCKETS: dict[str, tuple[float, float]] = {
    "minute": (60.0, 0.0),
    "hour": (3600.0, 0.0),
    "shift (8 h)": (SHIFT_S, 6 * 3600.0),
}


@dataclass(frozen=True)
class PChart:
    """Centre line and per-point 3-sigma limits of a p-chart (limits depend on each point's n)."""

    center: float
    ucl: np.ndarray
    lcl: np.ndarray
    rate: np.ndarray
    out: np.ndarray  # bool: point outside its limits


def p_chart(inspected: np.ndarray | list[int], defects: np.ndarray | list[int], sigmas: float = 3.0) -> PChart:
    """p-chart for defect proportions with varying sample sizes.

    Centre ``p̄ = Σd / Σn``; limits ``p̄ ± k·sqrt(p̄(1-p̄)/nᵢ)`` clipped to [0, 1] (the binomial's
    standard error for each bucket's own n).
    """
    n = np.asarray(inspected, dtype=float)
    d = np.asarray(defects, dtype=float)
    if n.shape != d.shape or n.ndim != 1:
        raise ValueError(f"inspected and defects must be 1-D and the same length, got {n.shape} and {d.shape}")
    if (n <= 0).any():
        raise ValueError("every bucket needs at least one inspected frame")
    if (d < 0).any() or (d > n).any():
        raise ValueError("defects must lie between 0 and the inspected count")
    if n.size == 0:
        empty = np.zeros(0)
        return PChart(0.0, empty, empty, empty, np.zeros(0, bool))
    center = float(d.sum() / n.sum())
    sd = np.sqrt(center * (1.0 - center) / n)
    ucl = np.minimum(center + sigmas * sd, 1.0)
    lcl = np.maximum(center - sigmas * sd, 0.0)
    rate = d / n
    return PChart(center, ucl, lcl, rate, (rate > ucl) | (rate < lcl))


def bucket_start(ts: float, bucket_s: float, origin: float = 0.0) -> float:
    """Start of the bucket holding ``ts`` (same arithmetic as the SQL: floor((ts - origin) / w))."""
    if not bucket_s > 0:
        raise ValueError(f"bucket_s must be > 0, got {bucket_s!r}")
    return math.floor((ts - origin) / bucket_s) * bucket_s + origin


def shift_label(ts: float, origin: float = BUCKETS["shift (8 h)"][1]) -> str:
    """'2026-01-01 06-14' for the 8-hour shift holding ``ts`` (UTC)."""
    start = bucket_start(ts, SHIFT_S, origin)
    end = start + SHIFT_S
    return f"{time.strftime('%Y-%m-%d', time.gmtime(start))} {time.gmtime(start).tm_hour:02d}-{time.gmtime(end).tm_hour:02d}"


def fill_buckets(rows: list[dict], start: float, end: float, bucket_s: float, origin: float = 0.0,
                 max_buckets: int = 5000) -> list[dict]:
    """Insert zero rows for empty buckets between ``start`` and ``end`` so a trend line shows gaps
    as zero output instead of interpolating over them. Rows need a ``start`` key; other numeric
    keys of missing buckets are 0."""
    first = bucket_start(start, bucket_s, origin)
    count = int(math.ceil((end - first) / bucket_s))
    if count > max_buckets:
        return rows  # too fine for the range: leave the sparse rows as they are
    keys = [k for k in (rows[0] if rows else {}) if k != "start"]
    by_start = {round(r["start"], 6): r for r in rows}
    out = []
    for i in range(max(count, 0)):
        s = first + i * bucket_s
        out.append(by_start.get(round(s, 6), {"start": s, **{k: 0 for k in keys}}))
    seen = {round(r["start"], 6) for r in out}
    out.extend(r for r in rows if round(r["start"], 6) not in seen)
    return sorted(out, key=lambda r: r["start"])


def throughput_per_min(inspected: int, start: float | None, end: float | None,
                       first_at: float | None, last_at: float | None) -> float:
    """Frames per minute while the line ran: over the span from the first to the last frame in the
    range (clipped to it), at least one minute so a handful of rows does not read as a huge rate.
    Not the range's average: a line that ran one hour of the last 24 would show a rate 24x below
    what the health page's live fps says."""
    if inspected <= 0 or first_at is None or last_at is None:
        return 0.0
    lo = first_at if start is None else max(start, first_at)
    hi = last_at if end is None else min(end, last_at)
    return inspected / max((hi - lo) / 60.0, 1.0)


def fmt_metrics(metrics: object) -> str:
    """A model version's metrics for a table cell: compact JSON, or '-' when it has none."""
    if not metrics:
        return "-"
    return json.dumps(metrics, sort_keys=True, separators=(", ", ": "), default=str)


def fmt_ms(ms: float | None) -> str:
    """A latency for a metric tile: '85 ms', '10.3 s', '4.2 min' (tiles truncate long numbers)."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms / 60_000:.1f} min"


def fmt_ts(ts: float | None) -> str:
    """Epoch seconds as 'YYYY-mm-dd HH:MM:SS UTC' (dashboard times are UTC throughout)."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def family_rate(inspected: list[dict], family: list[dict]) -> list[dict]:
    """Per bucket with inspected frames: ``{start, inspected, frames}`` where ``frames`` is how many of
    them had a region of the family (0 where none did): the inputs of the family's p-chart."""
    hits = {round(r["start"], 6): int(r["frames"]) for r in family}
    return [{"start": r["start"], "inspected": int(r["inspected"]), "frames": hits.get(round(r["start"], 6), 0)}
            for r in inspected if int(r["inspected"]) > 0]
