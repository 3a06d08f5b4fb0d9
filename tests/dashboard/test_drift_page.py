"""The Drift page, the overview banner and the health section against a seeded history with one open alarm."""

from __future__ import annotations

from sqlalchemy import create_engine

from storage.drift import DriftStore
from tests.dashboard.conftest import seed_file

P, CAM = "tire", "cam-1-top"  # a product and camera of the seeded history


def test_drift_alarm_shows_everywhere_and_the_operator_confirms_the_new_normal(make_app, tmp_path) -> None:
    url, truth = seed_file(tmp_path / "drift.sqlite")
    engine = create_engine(url)
    ds = DriftStore(engine, url)
    onset = float(truth.captured_at.max()) - 600
    aid, created = ds.open_alarm(P, CAM, kinds=["brightness", "score"], onset_at=onset, onset_frame_id=42,
                                 model_version="v0003", evidence={"checks": {
                                     "brightness": {"value": 31.5, "limit": 12.0, "unit": "grey levels (0-255)"},
                                     "score": {"value": 1.8, "limit": 1.0, "unit": "median score / calibration p99"}}})
    assert created
    flagged = ds.mark_drifted(P, CAM, onset)
    assert flagged == int(((truth.camera == truth.camera_ids[CAM]) & (truth.product == truth.product_ids[P])
                           & (truth.captured_at >= onset)).sum()) > 0
    at = make_app(url)
    assert not at.exception, [e.value for e in at.exception]
    assert any("Drift alarm: 1 camera(s)" in e.value and f"{P}/{CAM}" in e.value for e in at.error)  # overview banner
    assert {m.label: m.value for m in at.metric}["Drifted verdicts"] == f"{flagged:,}"  # overview count

    at.switch_page("views/health.py").run()
    assert not at.exception
    assert any("1 open drift alarm" in w.value and P in w.value for w in at.warning)

    at.switch_page("views/drift.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert {m.label: m.value for m in at.metric}["Open drift alarms"] == "1"
    assert {m.label: m.value for m in at.metric}["Drifted verdicts"] == f"{flagged:,}"
    evidence = at.dataframe[0].value
    assert set(evidence["check"]) == {"brightness", "score"} and 31.5 in set(evidence["value"])
    at.button(key=f"rb_{aid}").click().run()
    assert not at.exception
    assert any(f"Re-baseline of {P} requested" in s.value for s in at.success)
    alarm = ds.alarm(aid)
    assert alarm["rebaseline_by"] == "dashboard" and abs(alarm["rebaseline_since"] - int(onset)) <= 60
    engine.dispose()


def test_operator_dismisses_a_false_drift_alarm(make_app, tmp_path) -> None:
    url, truth = seed_file(tmp_path / "dismiss.sqlite")
    engine = create_engine(url)
    ds = DriftStore(engine, url)
    onset = float(truth.captured_at.max()) - 600
    aid, _ = ds.open_alarm(P, CAM, kinds=["position"], onset_at=onset, onset_frame_id=42,
                           model_version="v0003", evidence={"checks": {"position": {"value": 4.0, "limit": 3.0}}})
    flagged = ds.mark_drifted(P, CAM, onset)
    at = make_app(url)
    at.switch_page("views/drift.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.button(key=f"dis_{aid}").disabled  # no name, no dismissal
    at.text_input(key=f"dis_by_{aid}").input("ana").run()
    at.text_input(key=f"dis_why_{aid}").input("fixture swapped for cleaning, back now").run()
    at.button(key=f"dis_{aid}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(f"Alarm #{aid} dismissed by ana; {flagged:,} verdicts" in s.value for s in at.success)
    alarm = ds.alarm(aid)
    assert alarm["status"] == "dismissed" and alarm["closed_by"] == "ana" and alarm["resolved_at"] is not None
    assert "fixture swapped" in alarm["resolution"] and ds.drifted_count(aid) == 0
    engine.dispose()
