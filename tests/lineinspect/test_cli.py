"""The one console script: every package's commands are registered, errors are one line and exit
status 2, and ``lineinspect config`` prints the effective settings with secrets hidden."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from lineinspect import cli
from lineinspect.demo import console_command

EXPECTED_COMMANDS = {"demo", "config", "train", "eval", "retrain", "models", "scheduler", "publish", "consume",
                     "export", "serve-triton", "db-upgrade", "prune", "dashboard"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k in [k for k in os.environ if k.startswith("LINEINSPECT_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("LINEINSPECT_HOME", str(tmp_path))


def _commands() -> set[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)  # type: ignore[arg-type]


def test_every_package_registers_its_commands() -> None:
    assert _commands() >= EXPECTED_COMMANDS


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: lineinspect" in capsys.readouterr().out


def test_config_prints_settings_with_secrets_redacted(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LINEINSPECT_DB_URL", "postgresql+psycopg://app:hunter2@db:5432/li")
    monkeypatch.setenv("LINEINSPECT_DASHBOARD_PASSWORD", "s3cret-pw")
    assert cli.main(["config", "--json"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "s3cret-pw" not in out
    d = json.loads(out)
    assert d["dashboard_password"] == "***" and "app" in d["db_url"] and d["bus_url"] == "memory://"
    assert d["resolved_db_url"] == d["db_url"]


def test_a_config_error_is_one_line_and_exit_status_2(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LINEINSPECT_BUS_URL", "http://nope")
    assert cli.main(["config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lineinspect: error: invalid configuration") and "bus_url" in err


@pytest.mark.parametrize("argv", [
    ["retrain", "--product", "../x"],                    # would fail half-way inside a retrain job
    ["models", "list", "--product", "bad name"],
    ["scheduler", "--once", "--product", "ok", "--product", "a/b"],
    ["publish", "--source", "sim://w", "--product", "p", "--line", "l", "--camera", "cam\x00"],
])
def test_a_name_no_store_could_hold_is_refused_before_anything_opens(argv: list[str], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LINEINSPECT_HOME", str(tmp_path))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lineinspect: error:") and "name" in err and "Traceback" not in err
    assert not (tmp_path / "lineinspect.sqlite").exists()  # refused before the store was opened


@pytest.mark.parametrize(("extra", "message"), [(["--quality", "200"], "--quality must be within 1..100"),
                                                (["--fps", "-5"], "--fps must be >= 0"),
                                                (["--count", "0"], "--count must be > 0")])
def test_bad_publish_options_are_refused_before_the_bus_is_opened(extra: list[str], message: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["publish", "--source", "sim://w", "--product", "p", "--line", "l", "--camera", "c",
            "--bus", "kafka://127.0.0.1:1"]  # nothing listens there: the options must be refused first
    assert cli.main(argv + extra) == 2
    assert message in capsys.readouterr().err


def test_an_unexpected_exception_is_exit_status_1(monkeypatch: pytest.MonkeyPatch) -> None:
    import lineinspect.config_cli as config_cli

    def boom(args: object, settings: object) -> int:
        raise RuntimeError("bug")

    monkeypatch.setattr(config_cli, "run_config", boom)
    assert cli.main(["config"]) == 1


def test_the_demo_prints_a_dashboard_command_that_runs_from_any_shell() -> None:
    cmd = console_command()
    exe = cmd.split()[0]
    assert Path(exe).is_absolute(), cmd  # not a bare `lineinspect`, which a fresh shell may not find
    assert os.access(exe, os.X_OK)
    assert exe == sys.executable or Path(exe).name == "lineinspect"
