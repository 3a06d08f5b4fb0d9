"""storage: SQLAlchemy models and migrations, the result store, the Redis/in-memory cache, the model registry.

:func:`open_store` and :func:`open_cache` build the implementation the settings' URLs name; the
imports happen inside them so ``import storage`` stays cheap and needs neither driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lineinspect.settings import Settings
    from storage.cache import Cache
    from storage.store import ResultStore

__all__ = ["open_cache", "open_store"]


def open_store(settings: Settings, migrate: bool = True) -> ResultStore:
    """The result store at ``settings.resolved_db_url`` (migrated to head unless ``migrate=False``)."""
    from storage.store import ResultStore

    return ResultStore.open(settings.resolved_db_url, migrate=migrate, normal_cap=settings.keep_normal_cap)


def open_cache(settings: Settings, prefix: str = "li:") -> Cache:
    """``memory://`` -> :class:`MemoryCache`; ``redis://`` / ``rediss://`` -> :class:`RedisCache`."""
    url = settings.cache_url
    if url.startswith("memory://"):
        from storage.memory_cache import MemoryCache

        return MemoryCache(ttl_s=settings.cache_ttl_s, stream_maxlen=settings.anomaly_stream_maxlen)
    if url.startswith(("redis://", "rediss://")):
        from storage.redis_cache import RedisCache

        return RedisCache(url, ttl_s=settings.cache_ttl_s, stream_maxlen=settings.anomaly_stream_maxlen, prefix=prefix)
    from lineinspect.errors import ConfigError
    from lineinspect.settings import redact_url

    raise ConfigError(f"cache_url {redact_url(url)!r} must start with memory://, redis:// or rediss://")
