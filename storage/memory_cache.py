"""In-process implementation of :class:`storage.cache.Cache` (the embedded default).

Same semantics as :class:`storage.redis_cache.RedisCache`: each ``(camera, frame_id)`` counts
once within the TTL however often it is redelivered, the latest result per camera only moves
forward in capture time, counters are per product / line / minute, the anomaly stream is capped.
Thread-safe (one lock); expired entries are dropped lazily.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque

REQUIRED_FIELDS = ("product", "line", "camera", "frame_id", "score", "threshold", "verdict", "model_version",
                   "captured_at")


def check_result(d: dict) -> None:
    """Reject a result dict the cache cannot use, naming what is missing or wrong."""
    missing = [k for k in REQUIRED_FIELDS if k not in d]
    if missing:
        raise ValueError(f"cache result is missing {missing} (got keys {sorted(d)})")
    if d["verdict"] not in ("ok", "defect"):
        raise ValueError(f"cache result verdict must be 'ok' or 'defect', not {d['verdict']!r}")
    if not math.isfinite(float(d["captured_at"])):
        raise ValueError(f"cache result captured_at must be a finite epoch time, not {d['captured_at']!r}")


def minute_of(ts: float) -> int:
    """Epoch seconds of the start of the minute holding ``ts``."""
    return int(math.floor(float(ts) / 60.0)) * 60


def minute_window(now: float, minutes: int) -> list[int]:
    """The last ``minutes`` minute starts up to and including the current one, oldest first."""
    if minutes <= 0:
        raise ValueError("minutes must be > 0")
    cur = minute_of(now)
    return [cur - 60 * i for i in range(minutes - 1, -1, -1)]


class MemoryCache:
    """Latest-per-camera, minute counters and an anomaly stream held in this process."""

    def __init__(self, ttl_s: float = 24 * 3600, stream_maxlen: int = 10_000) -> None:
        if ttl_s <= 0 or stream_maxlen <= 0:
            raise ValueError("ttl_s and stream_maxlen must be > 0")
        self.ttl_s = float(ttl_s)
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[str, int], float] = OrderedDict()  # key -> expiry, in insertion order
        self._latest: dict[str, tuple[dict, float]] = {}
        self._counts: dict[tuple[str, str, int], list] = {}  # -> [inspected, defects, expiry]
        self._stream: deque[dict] = deque(maxlen=int(stream_maxlen))

    def record_results(self, results: list[dict]) -> None:
        for d in results:
            check_result(d)
        now = time.time()
        with self._lock:
            self._expire(now)
            for d in results:
                key = (str(d["camera"]), int(d["frame_id"]))
                if key in self._seen:
                    continue
                self._seen[key] = now + self.ttl_s
                entry = dict(d)
                cur = self._latest.get(key[0])
                if cur is None or cur[1] < now or float(cur[0]["captured_at"]) <= float(d["captured_at"]):
                    self._latest[key[0]] = (entry, now + self.ttl_s)
                ckey = (str(d["product"]), str(d["line"]), minute_of(d["captured_at"]))
                c = self._counts.setdefault(ckey, [0, 0, 0.0])
                c[0] += 1
                c[1] += d["verdict"] == "defect"
                c[2] = now + self.ttl_s
                if d["verdict"] == "defect":
                    self._stream.append(entry)

    def _expire(self, now: float) -> None:
        while self._seen:
            key, exp = next(iter(self._seen.items()))
            if exp > now:
                break
            self._seen.popitem(last=False)
        for cam in [c for c, (_, exp) in self._latest.items() if exp <= now]:
            del self._latest[cam]
        for k in [k for k, v in self._counts.items() if v[2] <= now]:
            del self._counts[k]

    def latest(self, camera: str) -> dict | None:
        with self._lock:
            cur = self._latest.get(camera)
            if cur is None or cur[1] <= time.time():
                return None
            return dict(cur[0])

    def counters(self, product: str, line: str, minutes: int = 60) -> list[tuple[int, int, int]]:
        now = time.time()
        out = []
        with self._lock:
            for m in minute_window(now, minutes):
                c = self._counts.get((product, line, m))
                if c is not None and c[2] > now:
                    out.append((m, c[0], c[1]))
                else:
                    out.append((m, 0, 0))
        return out

    def anomalies(self, count: int = 50) -> list[dict]:
        if count <= 0:
            return []
        with self._lock:
            newest = list(self._stream)[-count:]
        return [dict(d) for d in reversed(newest)]

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        with self._lock:
            self._seen.clear()
            self._latest.clear()
            self._counts.clear()
            self._stream.clear()
