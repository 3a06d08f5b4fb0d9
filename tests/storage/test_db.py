from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from lineinspect.errors import ConfigError, ServiceUnavailable
from storage.db import current_revision, make_engine, open_engine, resolve_url, upgrade
from storage.models import Base


def test_upgrade_is_idempotent_and_matches_models(db_url):
    head = upgrade(db_url)
    assert head != "0001"  # later migrations (e.g. 0002_drift) chain onto the initial schema
    assert upgrade(db_url) == head  # already at head: a no-op
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) == head
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
            assert set(inspect(conn).get_table_names()) >= set(Base.metadata.tables)
        assert diff == []
    finally:
        engine.dispose()


def test_sqlite_engine_settings(sqlite_url):
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    finally:
        engine.dispose()


def test_sqlite_foreign_keys_are_enforced(sqlite_url):
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        with pytest.raises(Exception, match="FOREIGN KEY"), engine.begin() as conn:
            conn.execute(text("INSERT INTO cameras (name, line_id, created_at) VALUES (:n, :l, 0)"),
                         {"n": "c", "l": 999})
    finally:
        engine.dispose()


def test_sqlite_unusable_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=str(blocker)):
        open_engine(f"sqlite:///{blocker}/sub/db.sqlite")


def test_unreachable_postgres_names_the_service_and_hides_the_password():
    url = "postgresql+psycopg://u:s3cretpw@127.0.0.1:1/db?connect_timeout=2"
    with pytest.raises(ServiceUnavailable) as info:
        open_engine(url)
    assert info.value.service == "postgresql"
    assert "s3cretpw" not in str(info.value)
    assert "deploy/services.sh" in str(info.value)


def test_password_and_tls_options_pass_through(monkeypatch, tmp_path):
    monkeypatch.delenv("LINEINSPECT_DB_PASSWORD", raising=False)
    secret = tmp_path / "pw"
    secret.write_text("fromfile\n")
    monkeypatch.setenv("LINEINSPECT_DB_PASSWORD_FILE", str(secret))
    url = resolve_url("postgresql+psycopg://app@db:5432/li?sslmode=verify-full&sslrootcert=/ca.pem")
    assert url.password == "fromfile"
    assert url.query == {"sslmode": "verify-full", "sslrootcert": "/ca.pem"}
    monkeypatch.setenv("LINEINSPECT_DB_PASSWORD", "fromenv")
    assert resolve_url("postgresql+psycopg://app@db/li").password == "fromenv"
    assert resolve_url("postgresql+psycopg://app:inurl@db/li").password == "inurl"  # the URL wins


@pytest.mark.parametrize("url", ["mysql://u@h/db", "not a url"])
def test_unsupported_urls_are_config_errors(url):
    with pytest.raises(ConfigError):
        resolve_url(url)
