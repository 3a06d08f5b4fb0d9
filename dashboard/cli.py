"""``lineinspect dashboard [--db URL] [--cache URL] [--port N]``: run the Streamlit app.

Streamlit runs the app in its own process, so settings travel through the environment
(``LINEINSPECT_DB_URL`` ...), where ``load_settings()`` in the app reads them back.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from lineinspect.logs import kv
from lineinspect.settings import Settings, redact_url

log = logging.getLogger(__name__)
APP = Path(__file__).resolve().parent / "app.py"


def streamlit_command(port: int, address: str = "127.0.0.1", python: str = sys.executable) -> list[str]:
    """The ``streamlit run`` command line for the app (headless, no usage stats, and the toolbar
    reduced to what operators need: no Deploy button, no developer menu)."""
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1..65535, got {port}")
    return [
        python, "-m", "streamlit", "run", str(APP),
        "--server.headless", "true", "--server.address", address, "--server.port", str(port),
        "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
    ]


def dashboard_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: the parent's plus the resolved settings the app needs."""
    env = dict(os.environ if base is None else base)
    env["LINEINSPECT_DB_URL"] = settings.resolved_db_url
    env["LINEINSPECT_CACHE_URL"] = settings.cache_url
    env["LINEINSPECT_ENGINE_URL"] = settings.engine_url
    env["LINEINSPECT_HOME"] = str(settings.home)
    if settings.dashboard_password is not None:
        env["LINEINSPECT_DASHBOARD_PASSWORD"] = settings.dashboard_password.get_secret_value()
    return env


def serve(settings: Settings, address: str = "127.0.0.1") -> int:
    """Run the app on ``settings`` until it exits (Ctrl-C); returns its exit status."""
    cmd = streamlit_command(settings.dashboard_port, address)
    log.info("starting dashboard", extra=kv(url=f"http://{address}:{settings.dashboard_port}",
                                            db=redact_url(settings.resolved_db_url)))
    try:
        return subprocess.call(cmd, env=dashboard_env(settings))
    except KeyboardInterrupt:
        return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.with_overrides(db_url=args.db, cache_url=args.cache, dashboard_port=args.port)
    return serve(settings, args.address)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dashboard", help="run the Streamlit defect dashboard",
                              description="Run the Streamlit defect dashboard on 127.0.0.1.")
    p.add_argument("--db", default=None, help="database URL (env LINEINSPECT_DB_URL)")
    p.add_argument("--cache", default=None, help="cache URL: redis://... or memory:// (env LINEINSPECT_CACHE_URL)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (env LINEINSPECT_DASHBOARD_PORT, default 8501)")
    p.add_argument("--address", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.set_defaults(func=run)
