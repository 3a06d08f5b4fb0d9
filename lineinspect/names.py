"""One name rule for product, line, camera, view and specimen, and one way to turn a name into a path.

Names arrive from Kafka messages, the CLI and the dashboard and end up in database columns, Redis
keys, Prometheus labels and file-system paths (model directories, retrain work folders, exports).
One rule that every store and every file system can hold is checked at each of those doors:

* ASCII letters, digits, ``.``, ``_`` and ``-`` only (no spaces, no ``/``, no NUL, no unicode
  lookalikes such as the fullwidth solidus or the Cyrillic ``а``);
* the first character is a letter or a digit (so no ``.hidden``, ``-option`` or ``..``);
* no ``..`` anywhere (never a parent reference, whatever joins it);
* at most the width of the column that stores it (:data:`MAX_LEN`).

Other free text (model versions, engine names, DLQ details) goes through :func:`check_text`: a
length per column and no NUL or control characters (PostgreSQL refuses NUL in text; control
characters forge log lines).
"""

from __future__ import annotations

import re
from pathlib import Path

# Widths of the columns each kind of name is stored in (storage/models.py); the envelope, the
# store and the registry all check against these, so nothing valid at the door fails in the store.
MAX_LEN: dict[str, int] = {"product": 128, "line": 128, "camera": 128, "specimen": 128, "view": 64}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidName(ValueError):
    """A name or text field that some store or file system could not hold safely."""


def check_name(kind: str, value: object, max_len: int | None = None) -> str:
    """``value`` if it is a valid ``kind`` name (see the module docstring), else :class:`InvalidName`."""
    limit = max_len if max_len is not None else MAX_LEN.get(kind, 128)
    if not isinstance(value, str) or not value:
        raise InvalidName(f"{kind} name must be a non-empty string, not {_show(value)}")
    if len(value) > limit:
        raise InvalidName(f"{kind} name is {len(value)} characters long; at most {limit} are allowed")
    if not _NAME.fullmatch(value) or ".." in value:
        raise InvalidName(f"{kind} name {_show(value)} is not allowed: use ASCII letters, digits, '.', '_' and '-', "
                          "starting with a letter or digit, without '..'")
    return value


def check_frame_names(product: object, line: object, camera: object, specimen_id: object = None,
                      view: object = None) -> None:
    """The name rule over a frame's identity (envelope on the wire, result row in storage); the
    optional specimen and view are checked when present."""
    for kind, value in (("product", product), ("line", line), ("camera", camera)):
        check_name(kind, value)
    if specimen_id is not None:
        check_name("specimen", specimen_id)
    if view is not None:
        check_name("view", view)


def is_valid_name(kind: str, value: object) -> bool:
    try:
        check_name(kind, value)
    except InvalidName:
        return False
    return True


def check_text(field: str, value: object, max_len: int) -> str:
    """``value`` if it is a string of at most ``max_len`` characters without NUL/control characters,
    encodable as UTF-8 (no lone surrogates), else :class:`InvalidName`."""
    if not isinstance(value, str):
        raise InvalidName(f"{field} must be a string, not {type(value).__name__}")
    if len(value) > max_len:
        raise InvalidName(f"{field} is {len(value)} characters long; the column holds {max_len}")
    if _CONTROL.search(value):
        raise InvalidName(f"{field} {_show(value)} contains NUL or control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName(f"{field} {_show(value)} is not valid UTF-8 text (lone surrogate)") from None
    return value


def child_path(base: str | Path, name: str, kind: str = "product", max_len: int | None = None) -> Path:
    """``base / name`` for a valid ``kind`` name, refusing anything that would resolve outside ``base``.

    The name rule already excludes separators and ``..``; the resolved-path check is the second
    lock (symlinks inside ``base`` that point elsewhere are refused too). ``max_len`` defaults to
    the kind's column width; derived names (``<product>-<timestamp>``) pass a file-system limit."""
    check_name(kind, name, max_len=max_len)
    root = Path(base).resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise InvalidName(f"{kind} name {_show(name)} resolves outside {root}")
    return root / name


def _show(value: object) -> str:
    """A bounded, escaped rendering for error messages (hostile input must not flood or forge logs)."""
    text = ascii(value)
    return text if len(text) <= 80 else text[:77] + "..."
