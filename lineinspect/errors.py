"""Errors every package raises for the user-facing failure modes, so the CLI can print one clear line."""

from __future__ import annotations

from lineinspect.redact import redact_url

__all__ = ["ConfigError", "ServiceUnavailable"]


class ConfigError(ValueError):
    """A broken or inconsistent configuration; the message says what to change."""

_HINTS = {
    "kafka": "start it with `bash deploy/services.sh start kafka` (or point LINEINSPECT_BUS_URL at your broker)",
    "postgresql": "start it with `bash deploy/services.sh start postgres` (or set LINEINSPECT_DB_URL)",
    "redis": "start it with `bash deploy/services.sh start redis` (or set LINEINSPECT_CACHE_URL=memory://)",
    "triton": "start it with `lineinspect serve-triton` (or set LINEINSPECT_ENGINE_URL=local://auto)",
}


class ServiceUnavailable(RuntimeError):
    """A service named in the settings cannot be reached; says which one and how to start it."""

    def __init__(self, service: str, url: str, cause: str = "", *, state: str | None = None) -> None:
        """``state`` says what is wrong when the service answers but refuses (e.g. "is out of memory");
        the default, "is not reachable", comes with the hint on how to start it."""
        hint = _HINTS.get(service, "") if state is None else ""
        msg = f"{service} {state or 'is not reachable'} at {redact_url(url)}"
        if cause:
            msg += f" ({redact_url(cause)})"
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)
        self.service = service
        self.url = url
