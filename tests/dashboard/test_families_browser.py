"""The Defect families page in Debian Chromium (Playwright): Pareto, heatmap, example crops from kept
frames, and naming a family from the page."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import create_engine, select

from inference.families import Family
from storage.families import FamilyStore, RegionRow
from storage.models import FrameImage, InspectionResult, Product
from tests.dashboard.test_browser import CHROMIUM, CHROMIUM_ARGS, _save, server  # noqa: F401 - fixture

pytestmark = pytest.mark.browser


def _seed_families(db_path) -> tuple[str, int]:
    """Three families over the seeded flagged frames that kept their image; returns (product, top family)."""
    url = f"sqlite:///{db_path.as_posix()}"
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(InspectionResult.id, Product.name, InspectionResult.width,
                                   InspectionResult.height, InspectionResult.captured_at)
                            .join(FrameImage, FrameImage.result_id == InspectionResult.id)
                            .join(Product, Product.id == InspectionResult.product_id)).all()
    product = max({r[1] for r in rows}, key=lambda p: sum(r[1] == p for r in rows))
    mine = [r for r in rows if r[1] == product]
    fams = [Family(k, np.eye(3, dtype=np.float32)[k - 1], 0) for k in (1, 2, 3)]
    regs = []
    for i, (rid, _, w, h, ts) in enumerate(mine):
        fam = 1 if i % 2 == 0 else (2 if i % 3 else 3)  # family 1 is the most frequent
        fams[fam - 1].count += 1
        x, y = int(w * (0.2 if fam == 1 else 0.6)), int(h * 0.3)
        regs.append(RegionRow(int(rid), product, 0, fam, 400, (x, y, 20, 20), ((x + 10) / w, (y + 10) / h), float(ts),
                              fams[fam - 1].centroid))
    FamilyStore(engine, url).save(product, 0.3, fams, regs)
    engine.dispose()
    return product, 1


def test_families_page_in_chromium(server, tmp_path) -> None:  # noqa: F811 - the fixture
    from playwright.sync_api import sync_playwright

    url, _ = server
    product, top = _seed_families(tmp_path / "live.sqlite")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2200})
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("link", name="Defect families").click()
            page.get_by_text("Pareto of families").wait_for(timeout=60_000)
            page.locator("[data-testid='stVegaLiteChart']").first.wait_for(timeout=30_000)
            page.locator("[data-testid='stImage'] img").first.wait_for(timeout=30_000)  # example crops
            page.get_by_label("Name of this family").fill("scratch")
            page.get_by_role("button", name="Save name").click()
            page.get_by_text("is now called 'scratch'").wait_for(timeout=30_000)
            page.get_by_text(f"#{top} scratch").first.wait_for(timeout=30_000)  # the Pareto shows the name
            page.wait_for_timeout(1000)
            shot = tmp_path / "dashboard-families.png"
            page.screenshot(path=str(shot), full_page=True)
            _save(shot)
            charts = page.locator("[data-testid='stVegaLiteChart']").count()
        finally:
            browser.close()
    engine = create_engine(f"sqlite:///{(tmp_path / 'live.sqlite').as_posix()}")
    try:
        names = {f["family"]: f["name"] for f in FamilyStore(engine).load(product)[1]}
    finally:
        engine.dispose()
    assert names[top] == "scratch" and charts >= 2 and shot.stat().st_size > 20_000
