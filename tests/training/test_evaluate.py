"""``evaluate`` / ``run_eval`` with fake engines on a tiny simulated MVTec folder."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.engines.base import EngineOutput
from ingest.simulator import LineSimulator
from lineinspect.errors import ConfigError
from lineinspect.settings import Settings
from training import evaluate as E
from training.data import load_split


class OracleEngine:
    """Knows each test image's mask (by checksum) and returns it at 'model resolution' plus noise."""

    name = "oracle"

    def __init__(self, split, noise: float, hw: tuple[int, int] = (32, 48), seed: int = 0) -> None:
        self.masks = {}
        for it in split:
            img, mask = it.load()
            self.masks[hashlib.sha1(img.tobytes()).hexdigest()] = mask
        self.noise, self.hw = noise, hw
        self.rng = np.random.default_rng(seed)
        self.calls: list[tuple[str, int]] = []
        self.closed = False

    def infer(self, product: str, images: list[np.ndarray]) -> EngineOutput:
        self.calls.append((product, len(images)))
        maps = []
        for img in images:
            m = self.masks[hashlib.sha1(img.tobytes()).hexdigest()].astype(np.float32)
            small = cv2.resize(m, (self.hw[1], self.hw[0]), interpolation=cv2.INTER_AREA)
            maps.append(small + self.rng.normal(0, self.noise, small.shape).astype(np.float32))
        maps_a = np.stack(maps)
        return EngineOutput(maps_a.reshape(len(images), -1).max(axis=1), maps_a, "v-test", 0.5, 1.0)

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "sim" / "widget"
    return LineSimulator("widget", size=(72, 104), seed=5).write_mvtec(root, n_train=2, n_test_good=6, n_test_defect=8)


def test_evaluate_oracle_is_near_perfect(sim_root: Path) -> None:
    split = load_split(sim_root, None, "test")
    engine = OracleEngine(split, noise=0.02)
    r = E.evaluate(engine, "widget", split, batch_size=4, progress=False)
    assert set(E.METRIC_KEYS) | {"n_images", "n_anomalous", "category"} == set(r)
    assert r["n_images"] == 14 and r["n_anomalous"] == 8 and r["category"] == "widget"
    assert engine.calls == [("widget", 4)] * 3 + [("widget", 2)]
    assert r["image_auroc"] == 1.0 and r["image_f1_max"] == 1.0
    assert r["pixel_auroc"] > 0.95 and r["aupro"] > 0.8
    assert r["images_per_second"] > 0


def test_evaluate_noise_engine_is_chance_level(sim_root: Path) -> None:
    split = load_split(sim_root, None, "test")
    engine = OracleEngine(split, noise=0.02)
    engine.masks = {k: np.zeros_like(v) for k, v in engine.masks.items()}  # knows nothing
    r = E.evaluate(engine, "widget", split, batch_size=8, progress=False)
    assert 0.3 < r["pixel_auroc"] < 0.7
    assert r["aupro"] < 0.35
    assert 0.0 <= r["image_ap"] <= 1.0


def test_evaluate_rejects_a_short_engine_answer(sim_root: Path) -> None:
    split = load_split(sim_root, None, "test")

    class Short(OracleEngine):
        def infer(self, product, images):
            out = super().infer(product, images)
            return EngineOutput(out.scores[:-1], out.maps[:-1], "v", 0.5)

    with pytest.raises(RuntimeError, match="for 8 images"):
        E.evaluate(Short(split, 0.0), "widget", split, batch_size=8, progress=False)


def test_run_eval_prints_table_and_writes_json(sim_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import inference.engines.local as local

    split = load_split(sim_root, None, "test")
    engine = OracleEngine(split, noise=0.05)
    seen = {}

    def fake_load(model_dir, kind="auto", threads=0):
        seen.update(model_dir=model_dir, kind=kind, threads=threads)
        return engine

    monkeypatch.setattr(local, "load_local_engine", fake_load)
    model = tmp_path / "model"
    model.mkdir()
    args = argparse.Namespace(model=model, data=sim_root.parent, category="widget", json=tmp_path / "out" / "m.json",
                              zero_shot=False, engine="torch")
    assert E.run_eval(args, Settings(threads=1)) == 0
    assert seen == {"model_dir": model, "kind": "torch", "threads": 1}
    assert engine.closed
    out = capsys.readouterr().out
    assert "I-AUROC" in out and "widget" in out
    data = json.loads((tmp_path / "out" / "m.json").read_text())
    assert data["image_auroc"] == 1.0 and data["n_images"] == 14 and len(data["results"]) == 1


def test_run_eval_errors(sim_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = dict(data=sim_root.parent, category="widget", json=None, engine=None)
    monkeypatch.setitem(sys.modules, "inference.engines.zero_shot", None)  # import fails like a missing module
    with pytest.raises(ConfigError, match="zero-shot engine not available"):
        E.run_eval(argparse.Namespace(model=None, zero_shot=True, **base), Settings())
    with pytest.raises(ConfigError, match="does not exist"):
        E.run_eval(argparse.Namespace(model=tmp_path / "nope", zero_shot=False, **base), Settings())
    with pytest.raises(ConfigError, match="not found"):
        E.run_eval(argparse.Namespace(model=tmp_path, zero_shot=False, **{**base, "category": "bolt"}), Settings())


def test_format_table_handles_nan() -> None:
    row = {k: float("nan") for k in E.METRIC_KEYS} | {"category": "c", "n_images": 3, "images_per_second": 12.0}
    table = E.format_table([row])
    assert "n/a" in table and "12.0" in table


def test_run_eval_zero_shot_builds_the_engine_from_settings(sim_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    split = load_split(sim_root, None, "test")
    made = {}

    def factory(**kw):
        made.update(kw)
        return OracleEngine(split, noise=0.05)

    monkeypatch.setitem(sys.modules, "inference.engines.zero_shot", types.SimpleNamespace(ZeroShotEngine=factory))
    args = argparse.Namespace(model=None, data=sim_root, category=None, json=None, zero_shot=True, engine=None)
    assert E.run_eval(args, Settings(threads=2, threshold_quantile=0.95)) == 0
    assert made == {"method": "grnr", "model_dir": None, "threshold_quantile": 0.95, "threads": 2}
