"""The one redaction function every output path uses (logs, ``lineinspect config``, ``db-upgrade``,
CLI error lines, reprs, dead-letter details).

Credentials reach text in several shapes, all of which are masked to ``***``:

* URL user info: ``postgresql://user:secret@host/db``;
* URL query parameters: ``?password=``, ``&sslpassword=``, ``sasl_plain_password=``, ``token=``,
  ``access_token=``, ``api_key=``, ``secret=`` ... (libpq and redis-py accept a password there);
* ``key=value`` / ``key: value`` / ``"key": "value"`` pairs in messages and reprs
  (``password='x'`` in a libpq DSN, ``sasl_plain_password: x`` in a dump).

It imports nothing from the project, so settings, secrets, errors and logs can all use it
without import cycles.
"""

from __future__ import annotations

import re

MASK = "***"

# Parameter names that carry a credential (case-insensitive, matched as the end of a key name so
# ``sslpassword``, ``sasl_plain_password`` and ``db_password`` are covered by ``password``).
_KEYS = r"(?:[a-z0-9_.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|credentials?|auth))"

_URL_USERINFO = re.compile(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s?#]*:)(?P<pw>[^\s/]*)(?P<at>@)")
# key=value in a query string or a DSN: the value runs to &, ;, whitespace, a quote or the end
_QUERY = re.compile(rf"(?i)(?P<key>\b{_KEYS})(?P<eq>=)(?P<val>'[^']*'|\"[^\"]*\"|[^&;\s'\",)]+)")
# key: value / "key": "value" / key = value (JSON, YAML, reprs)
_PAIR = re.compile(rf"(?i)(?P<key>[\"']?\b{_KEYS}[\"']?)(?P<eq>\s*[:=]\s*)(?P<val>'[^']*'|\"[^\"]*\"|[^\s,;&)}}\]]+)")


def redact(text: str) -> str:
    """``text`` with every credential replaced by ``***`` (see the module docstring)."""
    if not text:
        return text
    out = _URL_USERINFO.sub(lambda m: m.group("pre") + MASK + m.group("at"), text)
    out = _QUERY.sub(_mask, out)
    return _PAIR.sub(_mask, out)


def _mask(m: re.Match[str]) -> str:
    val = m.group("val")
    if val == MASK or val.strip("'\"") in (MASK, "", "None", "null"):
        return m.group(0)
    quote = val[0] if val[:1] in ("'", '"') else ""
    return f"{m.group('key')}{m.group('eq')}{quote}{MASK}{quote}"


def redact_url(url: str) -> str:
    """A URL (or any text holding URLs) with its password and credential parameters masked."""
    return redact(url)
