import json

import pytest

from ingest.simulator import LineSimulator
from lineinspect.cli import main
from lineinspect.settings import load_settings
from storage.registry import ModelRegistry
from storage.store import ResultStore
from tests.training.test_retrain import options
from training.retrain import retrain

# No --size/--backbone: retrains reuse the active version's (tiny) architecture.
FAST = ["--iters", "3", "--holdout", "0.4", "--min-samples", "8", "--max-fpr", "0.5", "--no-progress"]


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LINEINSPECT_HOME", str(tmp_path / "var"))
    for k in ("LINEINSPECT_DB_URL", "LINEINSPECT_MODELS_DIR"):
        monkeypatch.delenv(k, raising=False)
    LineSimulator("widget", size=(64, 64), seed=3).write_mvtec(tmp_path / "widget", 24, 0, 4)
    LineSimulator("widget", size=(64, 64), seed=4).write_mvtec(tmp_path / "more", 12, 0, 0)
    return tmp_path


def first_tiny_version() -> None:
    s = load_settings()
    with ResultStore.open(s.resolved_db_url) as store:
        assert retrain(store, ModelRegistry(store, s.resolved_models_dir), "widget", options(iters=3)).promoted


def test_seed_retrain_list_promote_rollback(home, capsys):
    assert main(["retrain", "--product", "widget", "--seed-from", str(home / "widget"), "--import-only"]) == 0
    assert "imported 24 seed images" in capsys.readouterr().out
    first_tiny_version()
    assert main(["retrain", "--product", "widget", "--json", *FAST, "--anomalies", str(home / "widget"),
                 "--force"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "ok" and out["version"] == "v0002" and out["model_status"] == "active"
    assert out["parent"] == "v0001" and out["snapshot"]["by_source"] == {"seed": 24}
    assert out["candidate"]["n_anomalous"] == 4 and out["active"]["n_anomalous"] == 4
    assert main(["models", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["status"]) for v in listed] == [("v0001", "retired"), ("v0002", "active")]
    assert listed[1]["parent"] == "v0001" and listed[1]["samples"] == 24
    assert main(["models", "rollback", "--product", "widget"]) == 0
    assert "widget v0001: active" in capsys.readouterr().out
    assert main(["models", "promote", "--product", "widget", "--version", "v0002"]) == 0
    assert main(["models", "promote", "--product", "widget", "--version", "v0009"]) == 2
    assert "no version 'v0009'" in capsys.readouterr().err
    assert main(["models", "list", "--product", "widget"]) == 0
    assert "v0002    active" in capsys.readouterr().out
    assert main(["models", "runs"]) == 0
    assert capsys.readouterr().out.count(" ok ") == 1  # the API call above ran outside a job


def test_scheduler_once_and_bad_arguments(home, capsys):
    assert main(["retrain", "--product", "widget", "--seed-from", str(home / "widget"), "--import-only"]) == 0
    first_tiny_version()
    assert main(["scheduler", "--once", "--min-new", "10", *FAST]) == 0   # nothing new: no job
    assert main(["retrain", "--product", "widget", "--seed-from", str(home / "more"), "--import-only"]) == 0
    assert main(["scheduler", "--once", "--min-new", "10", *FAST]) == 0
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in listed] == ["v0001", "v0002"] and listed[1]["samples"] == 36
    assert main(["scheduler", "--once"]) == 0                     # default nightly cron: not due again today
    assert len(json.loads((main(["models", "list", "--json"]), capsys.readouterr().out)[1])) == 2
    assert main(["scheduler", "--once", "--interval-s", "0"]) == 2
    assert main(["scheduler", "--once", "--cron", "nightly"]) == 2
    assert main(["retrain", "--product", "widget", "--import-only"]) == 2
    assert main(["retrain", "--product", "nothing", *FAST]) == 3  # skipped: no samples
    # bad numbers are refused up front, whether or not the product has samples
    for bad in (["--iters", "0"], ["--min-samples", "0"], ["--max-samples", "-1"], ["--holdout", "1.5"]):
        assert main(["retrain", "--product", "widget", *FAST, *bad]) == 2


def test_models_dismiss_drift(home, capsys):
    from storage.drift import DriftStore

    s = load_settings()
    with ResultStore.open(s.resolved_db_url) as store:
        aid, _ = DriftStore.of(store).open_alarm("widget", "cam-1", kinds=["brightness"], onset_at=1.0,
                                                 onset_frame_id=0, model_version="v0001", evidence={})
    assert main(["models", "dismiss-drift", "--alarm", str(aid), "--by", "ana", "--reason", "lamp test"]) == 0
    assert f"drift alarm #{aid} dismissed by ana" in capsys.readouterr().out
    assert main(["models", "dismiss-drift", "--alarm", str(aid), "--by", "ana"]) == 2  # no longer open
    assert "not open" in capsys.readouterr().err
    assert main(["models", "dismiss-drift", "--alarm", "999", "--by", "ana"]) == 2
    with ResultStore.open(s.resolved_db_url) as store:
        a = DriftStore.of(store).alarm(aid)
    assert a["status"] == "dismissed" and a["closed_by"] == "ana" and a["resolution"] == "dismissed by ana: lamp test"
