import json

import cv2
import numpy as np
import pytest

from inference.model.inp_former import InpConfig
from ingest.simulator import LineSimulator
from lineinspect.names import InvalidName
from storage.registry import ModelRegistry, RegistryError
from storage.store import ResultStore
from training.gate import GatePolicy
from training.retrain import (
    RetrainError,
    RetrainOptions,
    anomaly_files,
    decode_sample,
    import_seed,
    labelled_normal_files,
    new_samples_since,
    retrain,
    split_samples,
    take_snapshot,
)
from training.train import TrainConfig, train

SIZE = (64, 64)


def tiny_model():
    return InpConfig(backbone="random_tiny", input_hw=SIZE, width=32, head_dim=16, decoder_blocks=2)


def options(**kw):
    base = dict(iters=12, holdout=0.4, min_samples=8, model=tiny_model(), train_overrides={"batch_size": 4},
                progress=False, policy=GatePolicy(max_fpr=0.5))
    base.update(kw)
    return RetrainOptions(**base)


def png(rgb):
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture()
def store(tmp_path):
    s = ResultStore.open(f"sqlite:///{(tmp_path / 'r.sqlite').as_posix()}")
    yield s
    s.close()


@pytest.fixture()
def registry(store, tmp_path):
    return ModelRegistry(store, tmp_path / "models")


def add_frames(store, product, n, start=0, sim_product=None):
    sim = LineSimulator(sim_product or product, size=SIZE, seed=1)
    for img in sim.normal_frames(n, start=start):
        assert store.add_training_sample(product, png(img), source="clear_normal")


def test_split_is_deterministic_disjoint_and_stable_as_data_grows():
    shas = [f"{i:064x}" for i in range(200)]
    a = split_samples(shas, 0.2, seed=0)
    assert a == split_samples(list(shas), 0.2, seed=0)
    assert set(a.train).isdisjoint(a.calibration) and set(a.train).isdisjoint(a.gate)
    assert sorted(a.train + a.calibration + a.gate) == list(range(200))
    assert 20 <= len(a.calibration) + len(a.gate) <= 60 and a.calibration and a.gate
    grown = split_samples(shas + [f"{i:064x}" for i in range(200, 400)], 0.2, seed=0)
    assert set(a.gate) <= set(grown.gate) and set(a.calibration) <= set(grown.calibration)
    assert split_samples(shas, 0.2, seed=1) != a


def test_split_small_sets_still_get_both_halves():
    s = split_samples(["a", "b", "c", "d"], 0.2)
    assert len(s.calibration) == 1 and len(s.gate) == 1 and len(s.train) == 2
    with pytest.raises(ValueError):
        split_samples(["a", "b", "c"], 0.2)
    with pytest.raises(ValueError):
        split_samples(["a"] * 10, 1.0)


def test_seed_import_dedups_and_snapshot_counts_sources(store, tmp_path):
    LineSimulator("widget", size=SIZE, seed=2).write_mvtec(tmp_path / "cat", 5, 0, 0)
    assert import_seed(store, "widget", tmp_path / "cat") == (5, 0)
    assert import_seed(store, "widget", tmp_path / "cat" / "train" / "good") == (0, 5)
    add_frames(store, "widget", 3)
    snap = take_snapshot(store.training_samples("widget"), "widget")
    assert snap.by_source == {"clear_normal": 3, "seed": 5} and snap.shas == sorted(snap.shas)
    img = decode_sample(store.training_samples("widget")[0].data)
    assert img.shape == (*SIZE, 3) and img.dtype == np.uint8
    (tmp_path / "empty").mkdir()
    with pytest.raises(RetrainError, match="no images"):
        import_seed(store, "widget", tmp_path / "empty")
    with pytest.raises(RetrainError, match="does not exist"):
        import_seed(store, "widget", tmp_path / "missing")


def test_anomaly_files_skip_good_and_ground_truth(tmp_path):
    LineSimulator("cap", size=SIZE, seed=0).write_mvtec(tmp_path / "cap", 1, 2, 4)
    files = anomaly_files(tmp_path / "cap")
    assert len(files) == 4 and all("good" not in f.parts and "ground_truth" not in f.parts for f in files)
    assert [f.parent.name for f in labelled_normal_files(tmp_path / "cap")] == ["good", "good"]
    assert labelled_normal_files(tmp_path / "cap" / "test") == labelled_normal_files(tmp_path / "cap")
    assert labelled_normal_files(tmp_path / "cap" / "ground_truth") == []


def test_too_few_samples_is_a_clear_error(store, registry):
    add_frames(store, "widget", 3)
    with pytest.raises(RetrainError, match="3 training samples"):
        retrain(store, registry, "widget", options())


def test_first_version_promoted_then_identical_retrain_passes_gate(store, registry, tmp_path):
    add_frames(store, "widget", 24)
    first = retrain(store, registry, "widget", options())
    assert first.status == "active" and first.version == "v0001" and first.parent_version is None
    info = registry.active("widget")
    assert info.version == "v0001" and info.threshold > 0 and info.backbone == "random_tiny"
    assert info.data_snapshot["n"] == 24 and info.data_snapshot["by_source"] == {"clear_normal": 24}
    assert len(info.data_snapshot["sha256"]) == 24 and info.data_snapshot["n_gate"] >= 1
    assert info.metrics["gate"]["promote"] and info.metrics["active"] is None
    assert json.loads((info.path / "config.json").read_text())["version"] == "v0001"  # engines report it
    cal = info.metrics["calibration"]
    assert cal["threshold_quantile"] == 0.99 and cal["n"] == info.data_snapshot["n_calibration"]

    # same data, same seed: the same model again, so the comparison on the same slice is a tie
    second = retrain(store, registry, "widget", options())
    assert second.version == "v0002" and second.parent_version == "v0001"
    assert second.active == second.candidate and second.candidate.n_normal >= 1
    assert second.status == "active", second.decision.summary
    assert [v.status for v in registry.list("widget")] == ["retired", "active"]

    assert new_samples_since(store, "widget", registry.active("widget")) == 0
    add_frames(store, "widget", 4, start=100)
    assert new_samples_since(store, "widget", registry.active("widget")) == 4


def test_wrong_product_candidate_is_refused_end_to_end(store, registry, tmp_path):
    # the real (frozen, pretrained) backbone: random features cannot tell two products apart
    model = InpConfig(backbone="efficientnet_lite0", input_hw=SIZE, width=32, head_dim=16, decoder_blocks=2)
    add_frames(store, "widget", 40)
    LineSimulator("widget", size=SIZE, seed=5).write_mvtec(tmp_path / "wa", 0, 4, 8)
    opts = options(model=model, holdout=0.5, anomalies_dir=str(tmp_path / "wa"))
    good = retrain(store, registry, "widget", opts)
    assert good.status == "active"
    # a model trained on another product's images, offered as the next widget version
    cap = LineSimulator("cap", size=SIZE, seed=1).normal_frames(16)
    cfg = TrainConfig(model=model, batch_size=4)
    wrong = train(cap[:12], cfg, tmp_path / "wrong", iters=12, seed=0, calibration_images=cap[12:], progress=False)
    res = retrain(store, registry, "widget", opts, candidate_dir=wrong)
    assert res.status == "rejected" and not res.decision.promote
    assert res.candidate.fpr > res.active.fpr and "held-back FPR rose" in res.decision.summary
    v2 = registry.get("widget", res.version)
    assert v2.status == "rejected" and v2.reason.startswith("gate: ") and v2.parent_version == good.version
    assert registry.active("widget").version == good.version
    assert v2.metrics["active"]["n_anomalous"] == 8 and v2.metrics["compared_with"] == good.version
    assert v2.metrics["active"]["n_normal"] == v2.data_snapshot["n_gate"] + 4  # + the folder's test/good
    # --force overrides the gate, recorded as such
    forced = retrain(store, registry, "widget", options(model=model, holdout=0.5, force=True), candidate_dir=wrong)
    assert forced.status == "active" and registry.get("widget", forced.version).metrics["forced"] is True


def test_lost_lock_registers_but_does_not_promote(store, registry):
    add_frames(store, "widget", 16)
    res = retrain(store, registry, "widget", options(), lock_lost=lambda: True)
    assert res.status == "candidate" and registry.active("widget") is None


def test_corrupt_active_version_does_not_block_its_replacement(store, registry):
    add_frames(store, "widget", 16)
    first = retrain(store, registry, "widget", options())
    (registry.active("widget").path / "weights.pt").write_bytes(b"corrupted")
    res = retrain(store, registry, "widget", options())
    assert res.status == "active" and res.active is None and res.parent_version == first.version
    assert any("could not be scored" in n and "ChecksumMismatch" in n for n in res.decision.notes)
    assert registry.get("widget", res.version).metrics["active_error"].startswith("ChecksumMismatch")


def test_flagged_frames_exclude_false_alarms(store):
    from storage.records import ResultRow

    def row(fid, verdict):
        return ResultRow(product="widget", line="L1", camera="c", frame_id=fid, captured_at=1.0 + fid,
                         inferred_at=2.0, score=0.9, threshold=0.5, verdict=verdict, model_version="v0001",
                         engine="torch", infer_ms=1.0, batch_size=1, width=64, height=64,
                         frame_bytes=png(np.full((64, 64, 3), fid, np.uint8)), frame_encoding="png")

    ids = store.save_results([row(1, "defect"), row(2, "defect"), row(3, "ok")])
    store.mark_false_alarm(ids[0])
    frames = store.flagged_frames("widget")
    assert len(frames) == 1 and decode_sample(frames[0])[0, 0, 0] == 2


HOSTILE_PRODUCTS = ["../escape", "..", "/abs/path", "a/b", "nul\x00byte", "\uff50rod", "caf\u00e9", "x" * 129, ".hidden",
                    "-rf", "ok name"]


@pytest.mark.parametrize("product", HOSTILE_PRODUCTS)
def test_a_hostile_product_name_never_becomes_a_path(store, registry, tmp_path, product):
    """A product name from a message is refused before retrain, the registry or the store build a path."""
    models = registry.models_dir
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(InvalidName):
        retrain(store, registry, product, options())
    with pytest.raises(InvalidName):
        store.add_training_sample(product, b"\x89PNG fake")
    with pytest.raises(RegistryError):
        registry.register(product, tmp_path, threshold=0.5, backbone="x")
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not (models / ".retrain").exists() or not any((models / ".retrain").iterdir())


def test_an_active_version_from_a_newer_build_is_not_silently_copied_by_the_next_retrain(store, registry, caplog):
    """A later retrain keeps the active version's architecture; a field this build does not know cannot be kept,
    so it says so and trains the preset's instead of dropping the field without a word."""
    from training.retrain import _model_config

    add_frames(store, "widget", 16)
    retrain(store, registry, "widget", options())
    active = registry.active("widget")
    cfg = json.loads((active.path / "config.json").read_text())
    assert _model_config(active, options(model=None)) == InpConfig.from_dict(cfg["model"])  # kept as it is
    cfg["model"]["decoder_heads_v3"] = 8
    (active.path / "config.json").write_text(json.dumps(cfg))
    with caplog.at_level("WARNING"):
        got = _model_config(active, options(model=None))
    assert got == InpConfig()  # the fast preset's (default) architecture
    warned = [r for r in caplog.records if "preset's architecture" in r.getMessage()]
    assert warned and "decoder_heads_v3" in warned[0].kv["error"]  # type: ignore[attr-defined]
