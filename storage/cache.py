"""The cache seam: what the dashboard needs *now*, without a database query.

* latest result per camera (hash, TTL),
* rolling counters per product / line / minute (inspected, defects; TTL),
* a capped stream of anomalies (newest first for the gallery).

:class:`RedisCache` (production) and :class:`MemoryCache` (embedded default) implement it;
:func:`open_cache` picks one from the URL. Implementations live in this module's siblings.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from lineinspect.errors import ServiceUnavailable


class CacheUnavailable(ServiceUnavailable):
    """The cache cannot take writes right now (unreachable, or out of memory); nothing was half-applied.

    A consumer catches it, logs it and carries on: the database already holds the results.
    """


@runtime_checkable
class Cache(Protocol):
    def record_results(self, results: list[dict]) -> None:
        """Update latest-per-camera, minute counters and the anomaly stream for stored results.

        Each dict has at least: product, line, camera, frame_id, score, threshold, verdict
        ("ok"|"defect"), model_version, captured_at (epoch s).
        """

    def latest(self, camera: str) -> dict | None: ...

    def counters(self, product: str, line: str, minutes: int = 60) -> list[tuple[int, int, int]]:
        """[(minute_epoch, inspected, defects)] for the last ``minutes`` minutes, oldest first."""

    def anomalies(self, count: int = 50) -> list[dict]:
        """The newest ``count`` anomalies, newest first."""

    def ping(self) -> bool: ...

    def close(self) -> None: ...
