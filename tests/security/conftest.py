"""Security fixtures: the storage tests' fresh-database fixtures (SQLite and, integration, PostgreSQL)."""

from tests.storage.conftest import db_url, make_row, pg_url, sqlite_url  # noqa: F401 - re-exported fixtures
