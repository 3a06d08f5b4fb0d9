"""Every dashboard page under streamlit's AppTest against a seeded SQLite history: no
exceptions, and the numbers shown equal the ones computed from the seed's own arrays."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sqlalchemy import create_engine, func, select

from dashboard import charts
from storage.models import TrainingSample
from tests.dashboard.conftest import SeedConfig, seed_file

PAGES = ["views/overview.py", "views/anomalies.py", "views/locations.py", "views/scores.py",
         "views/specimens.py", "views/health.py", "views/drift.py", "views/families.py"]


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def captions(at) -> list[str]:
    return [c.value for c in at.caption]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_without_exceptions(seeded_db, make_app, page: str) -> None:
    url, _ = seeded_db
    at = make_app(url)
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.title[0].value


def test_overview_numbers_match_the_seed(seeded_db, make_app) -> None:
    url, t = seeded_db
    at = make_app(url)
    assert not at.exception
    m = metrics(at)
    assert m["Inspected"] == f"{t.captured_at.size:,}"
    assert m["Defects"] == f"{int(t.defect.sum()):,}"
    assert m["Defect rate"] == f"{t.defect.mean() * 100:.2f} %"
    assert m["False alarms"] == f"{int(t.false_alarm.sum()):,}"
    span_min = (t.captured_at.max() - t.captured_at.min()) / 60
    assert m["Active rate"] == f"{t.captured_at.size / span_min:,.1f} /min"

    # p-chart over hourly buckets, recomputed from the seed with numpy
    hours = np.floor(t.captured_at / 3600).astype(np.int64)
    keys = np.unique(hours)
    pc = charts.p_chart([int((hours == k).sum()) for k in keys], [int(((hours == k) & t.defect).sum()) for k in keys])
    expected = f"{int(pc.out.sum())} of {len(keys)} buckets outside the limits."
    assert any(expected in c for c in captions(at)), captions(at)
    assert pc.out.any()  # the seed's defect burst is out of control

    per_product = at.dataframe[-3].value  # breakdown tabs: product, line, camera
    for name, pid in t.product_ids.items():
        row = per_product[per_product["name"] == name].iloc[0]
        assert row["inspected"] == int((t.product == pid).sum())
        assert row["defects"] == int(((t.product == pid) & t.defect).sum())


def test_overview_filters_by_product_and_window(seeded_db, make_app) -> None:
    url, t = seeded_db
    at = make_app(url)
    at.sidebar.selectbox(key="range").set_value("Last 8 hours")
    at.sidebar.radio(key="anchor").set_value("newest result")
    at.sidebar.multiselect(key="products").select("tire").run()
    assert not at.exception
    end = t.captured_at.max() + 1.0
    sel = (t.captured_at >= end - 8 * 3600) & (t.captured_at < end) & (t.product == t.product_ids["tire"])
    m = metrics(at)
    assert m["Inspected"] == f"{int(sel.sum()):,}"
    assert m["Defect rate"] == f"{(sel & t.defect).sum() / sel.sum() * 100:.2f} %"
    for bucket in ("minute", "shift (8 h)"):
        at.radio(key="overview_bucket").set_value(bucket).run()
        assert not at.exception and metrics(at)["Inspected"] == f"{int(sel.sum()):,}"


def test_overview_live_range_with_no_recent_data_says_so(seeded_db, make_app) -> None:
    url, _ = seeded_db
    at = make_app(url, all_time=False)  # "Last 24 hours" up to now: the seeded history is older
    assert metrics(at)["Inspected"] == "0"
    assert any("No inspection results" in i.value for i in at.info)


def test_anomalies_gallery_shows_the_newest_defects(seeded_db, make_app) -> None:
    url, t = seeded_db
    at = make_app(url)
    at.switch_page("views/anomalies.py").run()
    assert not at.exception
    cards = [c for c in captions(at) if c.startswith("score **")]
    assert len(cards) == 12
    newest = np.argsort(-t.captured_at[t.defect])[:12]
    scores, thresholds = t.score[t.defect][newest], t.threshold[t.defect][newest]
    for cap, s, thr in zip(cards, scores, thresholds):
        assert cap.startswith(f"score **{s:.3f}** / threshold {thr:.3f} · model v2")
    assert sum(b.label == "Mark as false alarm" for b in at.button) == 12


def test_mark_false_alarm_updates_counts_and_keeps_a_training_sample(make_app, tmp_path) -> None:
    url, t = seed_file(tmp_path / "fa.sqlite", SeedConfig(results=800, images=10, seed=11))
    at = make_app(url)
    assert metrics(at)["Defects"] == f"{int(t.defect.sum()):,}"
    at.switch_page("views/anomalies.py").run()
    button = next(b for b in at.button if b.label == "Mark as false alarm")
    rid = int(button.key.removeprefix("fa_"))
    button.click().run()
    assert not at.exception
    assert any(f"Result {rid} marked as a false alarm" in s.value for s in at.success)
    assert f"fa_{rid}" not in {b.key for b in at.button}
    at.switch_page("views/overview.py").run()
    m = metrics(at)
    assert m["Defects"] == f"{int(t.defect.sum()) - 1:,}"
    assert m["False alarms"] == f"{int(t.false_alarm.sum()) + 1:,}"
    with create_engine(url).connect() as conn:
        src = conn.execute(select(TrainingSample.source, TrainingSample.result_id)).all()
    assert src == [("false_alarm", rid)]


def test_locations_accumulate_the_stored_masks(seeded_db, make_app) -> None:
    url, t = seeded_db
    at = make_app(url)
    at.switch_page("views/locations.py").run()
    assert not at.exception
    idx = np.array(t.image_result_ids) - 1  # result ids follow the seed's insertion order
    got = [int(m.group(1)) for c in captions(at) if (m := re.match(r"(\d+) masks", c))]
    expected = [int(((t.product[idx] == t.product_ids[n]) & t.defect[idx]).sum()) for n in sorted(t.product_ids)]
    assert got == [e for e in expected if e > 0]


def test_scores_page_shows_each_products_threshold(seeded_db, make_app) -> None:
    url, t = seeded_db
    at = make_app(url)
    at.switch_page("views/scores.py").run()
    assert not at.exception
    caps = [c for c in captions(at) if "frames · threshold" in c]
    for cap, name in zip(caps, sorted(t.product_ids)):
        n = int((t.product == t.product_ids[name]).sum())
        assert cap.startswith(f"{n:,} frames · threshold {t.thresholds[name]:.3f} (v2, registry)")
    assert len(caps) == len(t.product_ids)


def test_specimens_page_numbers(seeded_db, make_app) -> None:
    url, t = seeded_db
    at = make_app(url)
    at.switch_page("views/specimens.py").run()
    assert not at.exception
    m = metrics(at)
    assert m["Specimens"] == f"{t.specimens:,}"
    assert m["Defective specimens"] == f"{t.specimen_defects:,}"
    assert m["Incomplete"] == f"{t.incomplete_specimens:,}"
    views = at.dataframe[-1].value  # the picked specimen's frame verdicts, one row per view
    assert set(views["view"]) <= {"top", "side"} and len(views) >= 1


def test_health_page_numbers(seeded_db, make_app) -> None:
    url, t = seeded_db
    at = make_app(url)
    at.switch_page("views/health.py").run()
    assert not at.exception
    assert any(c.startswith(f"2 consumers · {t.consumer_frames:,} frames") for c in captions(at)), captions(at)
    assert metrics(at)["Throughput"] == f"{t.consumer_frames / t.consumer_seconds:,.2f} fps"
    models = at.dataframe[-1].value
    assert sorted(models["status"].value_counts().items()) == [("active", 3), ("candidate", 3), ("retired", 3)]
    assert any("Local engine" in md.value for md in at.markdown)


def test_login_gate(seeded_db, make_app) -> None:
    url, t = seeded_db
    at = make_app(url, password="open sesame")
    assert not at.metric and not at.exception
    at.text_input(key="login_password").input("wrong")
    at.button[0].click().run()
    assert not at.metric and any("Wrong password" in e.value for e in at.error)
    at.text_input(key="login_password").input("open sesame")
    at.button[0].click().run()
    assert not at.exception
    assert "Inspected" in metrics(at)
    assert "login_password" not in at.session_state  # the typed password is not kept around


def test_pages_need_the_entrypoint() -> None:
    from streamlit.testing.v1 import AppTest

    from tests.dashboard.conftest import APP

    at = AppTest.from_file(str(APP.parent / "views" / "overview.py"), default_timeout=30).run()
    assert at.exception and "dashboard/app.py" in at.exception[0].value


def test_empty_database_pages_render(make_app, tmp_path) -> None:
    from storage.models import Base

    url = f"sqlite:///{(tmp_path / 'empty.sqlite').as_posix()}"
    Base.metadata.create_all(create_engine(url))
    at = make_app(url)
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
    with create_engine(url).connect() as conn:
        assert conn.execute(select(func.count()).select_from(TrainingSample)).scalar_one() == 0


def test_overview_falls_back_to_coarser_buckets_on_long_ranges(make_app, tmp_path) -> None:
    url, t = seed_file(tmp_path / "week.sqlite", SeedConfig(results=600, hours=24 * 5, images=0))
    at = make_app(url)
    at.radio(key="overview_bucket").set_value("minute").run()
    assert not at.exception
    assert any("showing per hour" in c for c in captions(at))
    assert metrics(at)["Inspected"] == f"{t.captured_at.size:,}"


@pytest.mark.parametrize(("url", "says"), [
    ("postgresql+psycopg://u:secret@127.0.0.1:1/x", "is not reachable"),   # nothing listens on port 1
    (None, "no lineinspect tables yet: run `lineinspect db-upgrade`"),        # a database never migrated
])
def test_a_database_the_pages_cannot_read_is_explained_not_a_stack_trace(make_app, tmp_path, url, says) -> None:
    at = make_app(url or f"sqlite:///{tmp_path / 'empty.sqlite'}", all_time=False)
    assert not at.exception
    assert len(at.error) == 1 and says in at.error[0].value and "secret" not in at.error[0].value
