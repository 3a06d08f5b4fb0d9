"""Structured logging: key=value (or JSON) lines, secrets redacted before they reach a handler."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from lineinspect.redact import redact as _scrub


class _KVFormatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": _scrub(record.getMessage()),
        }
        extra = getattr(record, "kv", None)
        if extra:
            fields.update({k: (_scrub(v) if isinstance(v, str) else v) for k, v in extra.items()})
        if record.exc_info:
            fields["exc"] = _scrub(self.formatException(record.exc_info))
        if self.as_json:
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_q(v)}" for k, v in fields.items())


def _q(v: object) -> str:
    s = str(v)
    return json.dumps(s) if (" " in s or "=" in s or not s) else s


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time, not the stream of the moment it was made:
    a handler bound to a replaced stream (a test's capture, a daemonised process) would write to a
    closed file and lose the record."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def setup_logging(level: str = "INFO", as_json: bool = False) -> None:
    """Install the one lineinspect handler on the root logger (idempotent; other handlers, such as a
    test runner's capture, are left in place)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _StderrHandler):
            root.removeHandler(h)
    h = _StderrHandler()
    h.setFormatter(_KVFormatter(as_json))
    root.addHandler(h)
    root.setLevel(level.upper())
    for noisy in ("kafka", "urllib3", "matplotlib", "PIL", "tritonclient", "pytriton", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def kv(**fields: object) -> dict:
    """``log.info("batch stored", extra=kv(n=8, ms=12.5))``"""
    return {"kv": fields}
