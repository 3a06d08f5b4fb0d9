"""Fixtures: the SQLite/PostgreSQL store fixtures of tests/storage."""

from tests.storage.conftest import db_url, pg_url, sqlite_url  # noqa: F401 - re-exported fixtures
