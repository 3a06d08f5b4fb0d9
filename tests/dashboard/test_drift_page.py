"""The Drift page, the overview banner and the health section against a seeded history with one open alarm."""

from __future__ import annotations

from sqlalchemy import create_engine

from storage.drift import DriftStore
from tests.dashboard.conftest import seed_file


def test_drift_alarm_shows_everywhere_and_the_operator_confirms_the_new_normal(make_app, tmp_path) -> None:
    url, truth = seed_file(tmp_path / "drift.sqlite")
    engine = create_engine(url)
    ds = DriftStore(engine, url)
    onset = float(truth.captured_at.max()) - 600
    aid, created = ds.open_alarm("bolt", "cam-a1", kinds=["brightness", "score"], onset_at=onset, onset_frame_id=42,
                                 model_version="v0003", evidence={"checks": {
                                     "brightness": {"value": 31.5, "limit": 12.0, "unit": "grey levels (0-255)"},
                                     "score": {"value": 1.8, "limit": 1.0, "unit": "median score / calibration p99"}}})
    assert created
    at = make_app(url)
    assert not at.exception, [e.value for e in at.exception]
    assert any("Drift alarm: 1 camera(s)" in e.value and "bolt/cam-a1" in e.value for e in at.error)  # overview banner

    at.switch_page("views/health.py").run()
    assert not at.exception
    assert any("1 open drift alarm" in w.value and "bolt" in w.value for w in at.warning)

    at.switch_page("views/drift.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert {m.label: m.value for m in at.metric}["Open drift alarms"] == "1"
    evidence = at.dataframe[0].value
    assert set(evidence["check"]) == {"brightness", "score"} and 31.5 in set(evidence["value"])
    at.button(key=f"rb_{aid}").click().run()
    assert not at.exception
    assert any("Re-baseline of bolt requested" in s.value for s in at.success)
    alarm = ds.alarm(aid)
    assert alarm["rebaseline_by"] == "dashboard" and abs(alarm["rebaseline_since"] - int(onset)) <= 60
    engine.dispose()
