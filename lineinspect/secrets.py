"""Secrets come from the environment or from files, never from code, and are never logged.

Container platforms (Docker/Kubernetes secrets, systemd credentials) hand secrets over as files;
the convention is ``NAME_FILE=/run/secrets/...`` next to (or instead of) ``NAME=value``. This module
is that convention in one place:

* :func:`env_secret` reads ``NAME`` or, when it is unset, the first line of the file ``NAME_FILE``;
* :func:`fill_secret_files` lets every secret setting (``LINEINSPECT_KAFKA_SASL_PASSWORD``,
  ``LINEINSPECT_DASHBOARD_PASSWORD``, ...) also be given as ``LINEINSPECT_<FIELD>_FILE``;
* :func:`known_secrets` lists the secret values in play so tests and log audits can check that
  none of them ever reaches a log line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from lineinspect.errors import ConfigError

if TYPE_CHECKING:  # types only: pydantic is imported where it is used
    from pydantic import BaseModel

PREFIX = "LINEINSPECT_"
# Plain-environment secrets read directly by the clients (not Settings fields).
CLIENT_SECRETS = ("LINEINSPECT_DB_PASSWORD", "LINEINSPECT_REDIS_PASSWORD")


def read_secret_file(path: str | Path, name: str) -> str:
    """First line of ``path`` without its line ending; an unreadable file is a :class:`ConfigError`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {name}_FILE {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name}_FILE {str(path)!r} is not UTF-8 text") from None
    lines = text.splitlines()
    return lines[0].strip() if lines else ""


def env_secret(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """``NAME`` when set and non-empty, else the first line of the file named by ``NAME_FILE``, else None."""
    env = os.environ if environ is None else environ
    if env.get(name):
        return env[name]
    path = env.get(f"{name}_FILE")
    if path:
        return read_secret_file(path, name)
    return None


def fill_secret_files(data: object, secret_fields: Iterable[str],
                      environ: Mapping[str, str] | None = None) -> object:
    """Settings ``before`` hook: fill unset secret fields from ``LINEINSPECT_<FIELD>_FILE``.

    A value already given (environment, env file or keyword) wins over the file, so the file is
    only a way to *provide* a secret, never to silently replace one.
    """
    if not isinstance(data, dict):
        return data
    env = os.environ if environ is None else environ
    out = dict(data)
    for fld in secret_fields:
        if out.get(fld) not in (None, ""):
            continue
        path = env.get(f"{PREFIX}{fld.upper()}_FILE")
        if path:
            out[fld] = read_secret_file(path, f"{PREFIX}{fld.upper()}")
    return out


def url_password(url: str | None) -> str | None:
    """The password embedded in ``scheme://user:password@host`` (URL-decoded), if any."""
    if not url or "://" not in url:
        return None
    try:
        pw = urlsplit(url).password
    except ValueError:
        return None
    return unquote(pw) if pw else None


def known_secrets(settings: BaseModel, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret value the settings and environment carry (for 'never logged' audits)."""
    from pydantic import SecretStr

    found: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, str):
            found.append(url_password(value) or "")
    for name in CLIENT_SECRETS:
        found.append(env_secret(name, environ) or "")
    return sorted({s for s in found if s})
