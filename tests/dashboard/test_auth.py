"""Password check (the AppTest of the login form is in test_pages.py)."""

from __future__ import annotations

from pydantic import SecretStr

from dashboard.auth import password_ok


def test_password_ok() -> None:
    assert password_ok("s3cret", SecretStr("s3cret"))
    assert not password_ok("s3cre", SecretStr("s3cret"))
    assert not password_ok("", SecretStr("s3cret"))
    assert password_ok("anything", None) and password_ok("anything", SecretStr(""))
    assert password_ok("ünï", "ünï")
