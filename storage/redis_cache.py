"""Redis implementation of :class:`storage.cache.Cache` (production).

Keys (``prefix`` defaults to ``li:``):
* ``{prefix}latest:{camera}``: hash of the newest result of a camera (JSON-encoded fields), TTL;
* ``{prefix}cnt:{product}:{line}:{minute}``: hash ``inspected`` / ``defects``, TTL;
* ``{prefix}anomalies``: stream of defect results (``XADD MAXLEN ~``), field ``data`` = JSON;
* ``{prefix}seen:{camera}:{frame_id}``: the per-frame marker that makes redelivery harmless.

Each result is applied by one Lua script, so the marker and the updates it guards happen together
or not at all: a redelivered frame finds its marker and changes nothing, and a write refused for
memory ("OOM command not allowed") is refused at the marker, before anything else was touched.
That surfaces as :class:`storage.cache.CacheUnavailable`, which the consumer can catch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import redis
from redis import exceptions as rexc

from lineinspect.settings import redact_url
from storage.cache import CacheUnavailable
from storage.db import env_secret
from storage.memory_cache import check_result, minute_of, minute_window

# What a full Redis is, in the log line and the error (it is reachable; it refuses writes).
OOM_STATE = "is out of memory (maxmemory reached; writes refused, reads still work)"

# KEYS: seen, latest, counter, stream.  ARGV: ttl, maxlen, is_defect, captured_at, payload, field, value, ...
_RECORD_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
local cur = redis.call('HGET', KEYS[2], 'captured_at')
if (not cur) or tonumber(cur) <= tonumber(ARGV[4]) then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], unpack(ARGV, 6))
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'inspected', 1)
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[3], 'defects', 1)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'data', ARGV[5])
end
redis.call('EXPIRE', KEYS[3], ARGV[1])
return 1
"""


class RedisCache:
    """The dashboard's "now" view in Redis, idempotent per ``(camera, frame_id)``."""

    def __init__(self, url: str, ttl_s: int = 24 * 3600, stream_maxlen: int = 10_000, prefix: str = "li:",
                 timeout_s: float = 5.0) -> None:
        if ttl_s <= 0 or stream_maxlen <= 0:
            raise ValueError("ttl_s and stream_maxlen must be > 0")
        if not url.startswith(("redis://", "rediss://")):
            raise ValueError(f"RedisCache needs a redis:// or rediss:// URL, not {redact_url(url)!r}")
        self.url = url
        self.ttl_s = int(ttl_s)
        self.stream_maxlen = int(stream_maxlen)
        self.prefix = prefix
        kw: dict = {"decode_responses": True, "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
                    "health_check_interval": 30}
        if urlsplit(url).password is None:
            pw = env_secret("LINEINSPECT_REDIS_PASSWORD")
            if pw is not None:
                kw["password"] = pw
        self._r = redis.Redis.from_url(url, **kw)
        self._record = self._r.register_script(_RECORD_LUA)
        with self._errors():
            self._r.ping()

    def __repr__(self) -> str:
        return f"RedisCache({redact_url(self.url)!r}, prefix={self.prefix!r})"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            raise CacheUnavailable("redis", self.url, redact_url(str(exc)) or type(exc).__name__) from exc
        except rexc.OutOfMemoryError as exc:
            raise CacheUnavailable("redis", self.url, str(exc), state=OOM_STATE) from exc
        except rexc.ResponseError as exc:
            text = str(exc)
            if "OOM" in text:  # older clients report it as a plain ResponseError
                raise CacheUnavailable("redis", self.url, text, state=OOM_STATE) from exc
            if "NOAUTH" in text or "WRONGPASS" in text:
                raise CacheUnavailable("redis", self.url, "check LINEINSPECT_REDIS_PASSWORD or the URL",
                                       state="refused authentication") from exc
            raise

    def _key(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    def record_results(self, results: list[dict]) -> None:
        for d in results:
            check_result(d)
        if not results:
            return
        with self._errors():
            pipe = self._r.pipeline(transaction=False)
            for d in results:
                fields: list[str] = []
                for k, v in d.items():
                    fields += [str(k), json.dumps(v)]
                keys = [self._key("seen", d["camera"], int(d["frame_id"])), self._key("latest", d["camera"]),
                        self._key("cnt", d["product"], d["line"], minute_of(d["captured_at"])),
                        self._key("anomalies")]
                args = [self.ttl_s, self.stream_maxlen, "1" if d["verdict"] == "defect" else "0",
                        repr(float(d["captured_at"])), json.dumps(d), *fields]
                self._record(keys=keys, args=args, client=pipe)
            pipe.execute()

    def latest(self, camera: str) -> dict | None:
        with self._errors():
            h = self._r.hgetall(self._key("latest", camera))
        return {k: json.loads(v) for k, v in h.items()} if h else None

    def counters(self, product: str, line: str, minutes: int = 60) -> list[tuple[int, int, int]]:
        window = minute_window(time.time(), minutes)
        with self._errors():
            pipe = self._r.pipeline(transaction=False)
            for m in window:
                pipe.hmget(self._key("cnt", product, line, m), ["inspected", "defects"])
            got = pipe.execute()
        return [(m, int(i or 0), int(d or 0)) for m, (i, d) in zip(window, got)]

    def anomalies(self, count: int = 50) -> list[dict]:
        if count <= 0:
            return []
        with self._errors():
            entries: list[tuple[Any, dict[Any, Any]]] = self._r.xrevrange(self._key("anomalies"), count=int(count))  # type: ignore[assignment]
        return [json.loads(fields["data"]) for _id, fields in entries]

    def ping(self) -> bool:
        try:
            return bool(self._r.ping())
        except rexc.RedisError:
            return False

    def close(self) -> None:
        self._r.close()
