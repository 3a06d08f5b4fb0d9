"""`lineinspect dashboard`: command line and environment handed to streamlit."""

from __future__ import annotations

import argparse

import pytest
from pydantic import SecretStr

from dashboard import cli
from lineinspect.settings import Settings


def test_streamlit_command_is_headless_on_localhost() -> None:
    cmd = cli.streamlit_command(8555, python="py")
    assert cmd[:4] == ["py", "-m", "streamlit", "run"] and cmd[4].endswith("dashboard/app.py")
    flags = dict(zip(cmd[5::2], cmd[6::2]))
    assert flags == {"--server.headless": "true", "--server.address": "127.0.0.1", "--server.port": "8555",
                     "--browser.gatherUsageStats": "false", "--client.toolbarMode": "minimal"}
    with pytest.raises(ValueError):
        cli.streamlit_command(0)


def test_env_carries_settings(tmp_path) -> None:
    s = Settings(home=tmp_path, db_url="sqlite:///x.sqlite", cache_url="redis://h:1/0", dashboard_password=SecretStr("pw"))
    env = cli.dashboard_env(s, base={"PATH": "/bin"})
    assert env["PATH"] == "/bin" and env["LINEINSPECT_DB_URL"] == "sqlite:///x.sqlite"
    assert env["LINEINSPECT_CACHE_URL"] == "redis://h:1/0" and env["LINEINSPECT_DASHBOARD_PASSWORD"] == "pw"
    assert "LINEINSPECT_DASHBOARD_PASSWORD" not in cli.dashboard_env(Settings(home=tmp_path), base={})


def test_register_and_run_pass_flags_through(monkeypatch, tmp_path) -> None:
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["dashboard", "--db", "sqlite:///d.sqlite", "--cache", "memory://", "--port", "9123"])
    assert args.func(args, Settings(home=tmp_path)) == 0
    cmd, env = calls[0]
    assert "9123" in cmd and env["LINEINSPECT_DB_URL"] == "sqlite:///d.sqlite" and env["LINEINSPECT_CACHE_URL"] == "memory://"
