"""storage.db.is_outage on the errors real databases raise: outages wait, a row's own fault does not."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.pool import NullPool

from lineinspect.errors import ServiceUnavailable
from storage.db import is_outage, make_engine


def _raised(engine, sql: str, params: dict | None = None) -> BaseException:
    with pytest.raises((DBAPIError, StatementError, ValueError, OverflowError)) as info, engine.begin() as conn:
        conn.execute(text(sql), params or {})
    return info.value


@pytest.mark.integration
def test_postgresql_data_errors_are_the_rows_fault_and_outages_are_not(pg_url: str) -> None:
    engine = create_engine(pg_url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id bigint PRIMARY KEY, s varchar(8), n integer)"))
        conn.execute(text("INSERT INTO t VALUES (1, 'a', 1)"))
    row_faults = {
        "NUL byte": ("INSERT INTO t VALUES (2, :s, 1)", {"s": "a\x00b"}),
        "value too long (22001)": ("INSERT INTO t VALUES (3, :s, 1)", {"s": "x" * 9}),
        "integer out of range (22003)": ("INSERT INTO t VALUES (4, 'a', :n)", {"n": 2**40}),
        "bigint overflow": ("INSERT INTO t VALUES (:i, 'a', 1)", {"i": 2**70}),
        "unique violation (23505)": ("INSERT INTO t VALUES (1, 'a', 1)", None),
        "not null (23502)": ("INSERT INTO t VALUES (5, 'a', 1), (NULL, 'b', 2)", None),
        "lone surrogate": ("INSERT INTO t VALUES (6, :s, 1)", {"s": "\ud800"}),
    }
    for what, (sql, params) in row_faults.items():
        exc = _raised(engine, sql, params)
        assert not is_outage(exc), f"{what}: {type(exc).__name__}: {exc}"
    # a statement timeout (57014) and an administrator's terminate (57P01) are outages
    with pytest.raises(DBAPIError) as info, engine.begin() as conn:
        conn.execute(text("SET LOCAL statement_timeout = 50"))
        conn.execute(text("SELECT pg_sleep(2)"))
    assert is_outage(info.value)
    victim = engine.connect()
    pid = victim.execute(text("SELECT pg_backend_pid()")).scalar_one()
    victim.commit()
    with engine.begin() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    with pytest.raises(DBAPIError) as info:
        victim.execute(text("SELECT 1"))
    assert is_outage(info.value)
    victim.close()
    engine.dispose()


def test_unreachable_postgresql_is_an_outage() -> None:
    with pytest.raises(DBAPIError) as info:
        make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    assert is_outage(info.value)
    assert is_outage(ServiceUnavailable("postgresql", "postgresql://x:pw@h/db", "connection refused"))
    assert is_outage(ConnectionResetError("peer reset")) and is_outage(TimeoutError())


def test_sqlite_locked_and_missing_tables_are_outages_bad_rows_are_not(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.sqlite'}"
    engine = create_engine(url, connect_args={"timeout": 0.05})
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT NOT NULL, f REAL NOT NULL)"))
    assert not is_outage(_raised(engine, "INSERT INTO t VALUES (1, NULL, 1.0)"))          # integrity
    assert not is_outage(_raised(engine, "INSERT INTO t VALUES (1, 'a', :f)", {"f": float("nan")}))  # NaN -> NULL
    assert not is_outage(_raised(engine, "INSERT INTO t VALUES (:i, 'a', 1.0)", {"i": 2**70}))  # binding overflow
    assert not is_outage(_raised(engine, "INSERT INTO t VALUES (2, :s, 1.0)", {"s": object()}))  # unbindable
    assert is_outage(_raised(engine, "INSERT INTO missing VALUES (1)"))  # not migrated yet: wait
    holder = sqlite3.connect(tmp_path / "x.sqlite", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        exc = _raised(engine, "INSERT INTO t VALUES (3, 'a', 1.0)")
        assert "locked" in str(exc) and is_outage(exc)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    engine.dispose()


def test_validation_errors_are_the_rows_fault() -> None:
    for exc in (ValueError("x"), TypeError("x"), OverflowError("x"), UnicodeEncodeError("utf-8", "\ud800", 0, 1, "x")):
        assert not is_outage(exc)
