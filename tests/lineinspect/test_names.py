"""The one name rule and child_path: properties over generated names, not a list of cases."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lineinspect.names import (
    MAX_LEN,
    InvalidName,
    check_name,
    check_text,
    child_path,
    is_valid_name,
)

KINDS = sorted(MAX_LEN)
VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
valid_names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,40}(\.[A-Za-z0-9_-]{1,10}){0,3}\Z")


@given(kind=st.sampled_from(KINDS), value=st.text(max_size=200))
def test_accepted_names_are_plain_ascii_within_the_column(kind: str, value: str) -> None:
    ok = is_valid_name(kind, value)
    expected = bool(VALID.fullmatch(value)) and ".." not in value and len(value) <= MAX_LEN[kind]
    assert ok == expected
    if ok:
        value.encode("ascii")
        assert "\x00" not in value and "/" not in value and "\\" not in value


@given(kind=st.sampled_from(KINDS), name=valid_names)
def test_valid_names_pass_and_make_paths_inside_the_base(tmp_path_factory: pytest.TempPathFactory, kind: str,
                                                          name: str) -> None:
    assert check_name(kind, name) == name
    base = tmp_path_factory.mktemp("base")
    p = child_path(base, name, kind)
    assert p.parent == base.resolve() and p.name == name


@pytest.mark.parametrize("name", ["../etc", "..", ".", "a/../../b", "/abs/path", "a/b", "a\\b", "a\x00b", "\x00",
                                  "prod\u2215uct", "\uff0e\uff0e\u2215x", "b\u0430d", "caf\u00e9", "", " x", "x ",
                                  "-rf", ".hidden", "a..b", "x" * 129, "ok\n", "tab\tname"])
def test_hostile_names_are_refused_everywhere(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidName):
        check_name("product", name)
    with pytest.raises(InvalidName):
        child_path(tmp_path, name)


@given(name=st.text(min_size=1, max_size=300))
@settings(max_examples=300)
def test_child_path_never_leaves_its_base(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    base = tmp_path_factory.mktemp("b")
    try:
        p = child_path(base, name)
    except InvalidName:
        return
    assert p.resolve().parent == base.resolve()


def test_child_path_refuses_a_symlink_that_points_outside(tmp_path: Path) -> None:
    base = tmp_path / "models"
    base.mkdir()
    (base / "evil").symlink_to(tmp_path)
    with pytest.raises(InvalidName, match="outside"):
        child_path(base, "evil")


def test_non_strings_and_overlong_names_are_refused_per_column() -> None:
    for v in (None, 1, b"bytes", ["x"]):
        with pytest.raises(InvalidName):
            check_name("camera", v)
    assert check_name("view", "v" * 64)
    with pytest.raises(InvalidName, match="at most 64"):
        check_name("view", "v" * 65)
    assert check_name("camera", "c" * 128)


@given(value=st.text(max_size=80))
def test_text_fields_refuse_control_characters_and_overlong_text(value: str) -> None:
    bad = any(ord(c) < 32 or ord(c) == 127 for c in value) or len(value) > 64 or \
        any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if bad:
        with pytest.raises(InvalidName):
            check_text("model_version", value, 64)
    else:
        assert check_text("model_version", value, 64) == value
