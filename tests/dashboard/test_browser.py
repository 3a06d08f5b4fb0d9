"""The real thing: ``streamlit run`` on a free 127.0.0.1 port against a seeded database, driven by
Debian Chromium through Playwright; the key numbers must appear on the rendered page."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboard import cli
from lineinspect.settings import Settings
from tests.conftest import ON_CI
from tests.dashboard.conftest import SeedConfig, seed_file

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"streamlit did not answer {url}/_stcore/health within {timeout_s} s")


@pytest.fixture()
def server(tmp_path) -> Iterator[tuple[str, object]]:
    """A live dashboard over a history that ends now (so the default "Last 24 hours" shows it all)."""
    if not CHROMIUM.exists():
        msg = "Chromium not installed: apt-get install -y chromium (deploy/services.sh install does it)"
        if ON_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    db_url, truth = seed_file(tmp_path / "live.sqlite", SeedConfig(results=3000, images=24, end=time.time() - 5.0))
    port = _free_port()
    settings = Settings(home=tmp_path, db_url=db_url, cache_url="memory://", dashboard_port=port)
    log = open(tmp_path / "streamlit.log", "wb")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(cli.streamlit_command(port), env=cli.dashboard_env(settings), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url, truth
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _save(shot: Path) -> Path:
    artifacts = os.environ.get("LINEINSPECT_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / shot.name)
    return shot


def test_overview_and_gallery_in_chromium(server, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    url, t = server
    inspected = f"{t.captured_at.size:,}"
    rate = f"{t.defect.mean() * 100:.2f} %"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_text(inspected, exact=True).first.wait_for(timeout=60_000)
            page.get_by_text(rate, exact=True).first.wait_for(timeout=30_000)
            page.locator("[data-testid='stVegaLiteChart']").first.wait_for(timeout=30_000)
            page.wait_for_timeout(1500)  # let the charts finish drawing
            values = page.get_by_test_id("stMetricValue").all_inner_texts()
            # operators' console: no Deploy button, no developer menu (client.toolbarMode=minimal)
            chrome = {tid: page.get_by_test_id(tid).count() for tid in ("stAppDeployButton", "stMainMenu")}
            overview = tmp_path / "dashboard-overview.png"
            page.screenshot(path=str(overview), full_page=True)
            _save(overview)

            page.get_by_role("link", name="Latest anomalies").click()
            page.get_by_role("button", name="Mark as false alarm").first.wait_for(timeout=30_000)
            page.locator("[data-testid='stImage'] img").first.wait_for(timeout=30_000)
            page.wait_for_timeout(1000)
            gallery = tmp_path / "dashboard-anomalies.png"
            page.screenshot(path=str(gallery), full_page=True)
            _save(gallery)
        finally:
            browser.close()
    assert chrome == {"stAppDeployButton": 0, "stMainMenu": 0}
    assert inspected in values and rate in values
    assert f"{int(t.defect.sum()):,}" in values
    assert overview.stat().st_size > 20_000 and gallery.stat().st_size > 20_000
