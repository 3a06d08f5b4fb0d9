"""SQL only through bound parameters: hostile names are refused, hostile text round-trips as data, and no query text is built by formatting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from sqlalchemy import inspect

from lineinspect.names import InvalidName
from storage import queries
from storage.store import ResultStore
from tests.security.conftest import make_row

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("lineinspect", "ingest", "inference", "storage", "dashboard", "training", "deploy")
HOSTILE = [
    "x'; DROP TABLE inspection_results; --",
    'q" OR "1"="1',
    "a%sb%(x)s:param",
    "back\\slash\\'",
    "ünïcode-🏭",
    "semi;colon/*comment*/",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_and_hostile_text_round_trips_harmlessly(db_url: str, name: str) -> None:
    """Names obey the one name rule (lineinspect.names), so a hostile name is refused before any SQL
    runs; free text (model_version) may hold quotes and SQL and is stored as plain data."""
    with ResultStore.open(db_url) as store:
        tables_before = set(inspect(store.db_engine).get_table_names())
        with pytest.raises(InvalidName):
            store.save_results([make_row(1, product=name, line=name, camera=name)])
        assert store.count_results() == 0
        rows = [make_row(1, model_version=name), make_row(2, "defect", model_version=name, mask_png=b"\x89PNG",
                                                          frame_bytes=b"\xff\xd8")]
        ids = store.save_results(rows)
        assert all(isinstance(i, int) for i in ids)
        assert store.save_results(rows) == ids  # idempotent redelivery, same ids
        got = store.get_result("cam1", 2)
        assert got is not None and got["model_version"] == name
        assert store.count_results(product=name) == 0  # reads bind hostile names as data
        assert store.get_result(name, 2) is None and store.results_for_camera(name) == []
        assert store.count_results(product="x' OR '1'='1") == 0
        with store.db_engine.connect() as conn:  # the dashboard's read path
            assert [p["name"] for p in queries.products(conn)] == ["bolt"]
        assert set(inspect(store.db_engine).get_table_names()) == tables_before


def _formatted_sql_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls of text()/execute()/exec_driver_sql() whose SQL is built by formatting a non-integer value."""
    bad = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        fn = node.func
        name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
        if name not in ("text", "execute", "exec_driver_sql", "executescript"):
            continue
        arg = node.args[0]
        if isinstance(arg, ast.JoinedStr):
            # Allowed: values formatted as integers ({N:d}) and identifiers quoted by the dialect.
            for part in arg.values:
                if not isinstance(part, ast.FormattedValue):
                    continue
                spec = ast.unparse(part.format_spec) if part.format_spec else ""
                if spec.endswith("d'") or "quoted" in ast.unparse(part.value):
                    continue
                bad.append((node.lineno, ast.unparse(arg)))
        elif isinstance(arg, ast.BinOp) and isinstance(arg.op, (ast.Mod, ast.Add)) or isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) and arg.func.attr == "format":
            bad.append((node.lineno, ast.unparse(arg)))
    return bad


def test_no_sql_is_built_by_string_formatting() -> None:
    offenders = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            for line, src in _formatted_sql_calls(ast.parse(path.read_text(encoding="utf-8"))):
                offenders.append(f"{path.relative_to(REPO)}:{line}: {src}")
    assert not offenders, "SQL text built by formatting (use bound parameters):\n" + "\n".join(offenders)


def test_the_formatting_scan_catches_what_it_should() -> None:
    src = ('conn.execute(text(f"SELECT * FROM t WHERE name = \'{name}\'"))\n'
           'conn.exec_driver_sql("DELETE FROM t WHERE id = %s" % rid)\n'
           'cur.execute("SELECT {}".format(x))\n'
           'cur.execute(f"PRAGMA busy_timeout={N:d}")\n'
           'conn.execute(text("SELECT 1 WHERE a = :a"), {"a": name})\n')
    assert sorted(line for line, _ in _formatted_sql_calls(ast.parse(src))) == [1, 2, 3]
