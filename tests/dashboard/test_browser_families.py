"""The Defect families page in Debian Chromium (Playwright): the Pareto chart, crops and heatmaps render,
and a name typed into the page is saved and shown."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from dashboard import cli
from lineinspect.settings import Settings
from tests.conftest import ON_CI
from tests.dashboard.conftest import SeedConfig, seed_families, seed_file
from tests.dashboard.test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    _free_port,
    _save,
    _wait_healthy,
)

pytestmark = pytest.mark.browser


@pytest.fixture()
def families_server(tmp_path) -> Iterator[tuple[str, dict[int, int]]]:
    if not CHROMIUM.exists():
        msg = "Chromium not installed: apt-get install -y chromium (deploy/services.sh install does it)"
        if ON_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    db_url, _ = seed_file(tmp_path / "fam.sqlite", SeedConfig(results=1200, images=24, end=time.time() - 5.0,
                                                              products=("magnetic_tile",)))
    counts = seed_families(db_url, types=3)
    port = _free_port()
    settings = Settings(home=tmp_path, db_url=db_url, cache_url="memory://", dashboard_port=port)
    log = open(tmp_path / "streamlit.log", "wb")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(cli.streamlit_command(port), env=cli.dashboard_env(settings), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url, counts
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_families_page_in_chromium(families_server, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    url, counts = families_server
    biggest = max(counts.values())
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("link", name="Defect families").click()
            page.get_by_role("heading", name="Defect families").wait_for(timeout=60_000)
            page.get_by_text(f"{biggest} regions", exact=False).first.wait_for(timeout=60_000)
            page.locator("[data-testid='stVegaLiteChart']").first.wait_for(timeout=30_000)
            page.locator("[data-testid='stImage'] img").first.wait_for(timeout=30_000)
            page.wait_for_timeout(1500)
            charts = page.locator("[data-testid='stVegaLiteChart']").count()
            images = page.locator("[data-testid='stImage'] img").count()
            shot = tmp_path / "dashboard-families.png"
            page.screenshot(path=str(shot), full_page=True)
            _save(shot)

            box = page.get_by_label("Name").first
            box.fill("crack")
            box.press("Enter")
            page.get_by_role("button", name="Save name").first.click()
            page.get_by_text("renamed", exact=False).first.wait_for(timeout=30_000)
            page.get_by_role("heading", name="crack").first.wait_for(timeout=30_000)
            named = tmp_path / "dashboard-families-named.png"
            page.screenshot(path=str(named), full_page=True)
            _save(named)
        finally:
            browser.close()
    assert charts >= 1 + len(counts)          # Pareto + a control chart per family
    assert images >= 2 * len(counts)          # crops + a location heatmap per family
    assert shot.stat().st_size > 20_000
