"""The model directory's owner: every file verified, old formats load, stamping keeps it verifiable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.engines.torch_engine import TorchEngine
from inference.model.inp_former import InpConfig, InpFormer
from inference.model_dir import load_model_dir, save_model_dir
from lineinspect import model_meta
from lineinspect.model_meta import ModelDirError


def tiny_model() -> InpFormer:
    torch.manual_seed(0)
    cfg = InpConfig(backbone="random_tiny", input_hw=(64, 64), token_stride=8, width=32, head_dim=16,
                    decoder_blocks=2, n_inps=3)
    return InpFormer(cfg).eval()


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    return save_model_dir(tmp_path / "m", tiny_model(), {"version": "v0001"}, {"threshold": 0.25})


def test_checksums_cover_every_file(model_dir: Path) -> None:
    sums = model_meta.read_checksums(model_dir)
    assert set(sums) == {"weights.pt", "config.json", "calibration.json"}
    (model_dir / "model.onnx").write_bytes(b"graph")
    (model_dir / "model.onnx.json").write_text("{}")
    model_meta.record_checksums(model_dir, ["model.onnx", "model.onnx.json"])
    assert set(model_meta.read_checksums(model_dir)) >= {"model.onnx", "model.onnx.json", "weights.pt"}
    assert model_meta.verify(model_dir) == sums["weights.pt"]


@pytest.mark.parametrize("victim", ["weights.pt", "config.json", "calibration.json", "model.onnx", "model.onnx.json"])
def test_tampering_any_one_file_is_detected(model_dir: Path, victim: str) -> None:
    (model_dir / "model.onnx").write_bytes(b"graph")
    (model_dir / "model.onnx.json").write_text('{"onnx_sha256": "x"}')
    model_meta.record_checksums(model_dir, ["model.onnx", "model.onnx.json"])
    target = model_dir / victim
    target.write_bytes(target.read_bytes() + b" ")
    with pytest.raises(ModelDirError, match=victim.replace(".", r"\.") + " fails its checksum"):
        model_meta.verify(model_dir)
    if victim in ("weights.pt", "config.json", "calibration.json"):
        with pytest.raises(ModelDirError):
            load_model_dir(model_dir)


def test_a_deleted_recorded_file_and_a_checksum_pointing_outside_are_refused(model_dir: Path) -> None:
    sums = model_meta.read_checksums(model_dir)
    model_meta.write_json(model_dir / "checksums.json", {**sums, "../escape": "0" * 64})
    with pytest.raises(ModelDirError, match="outside"):
        model_meta.verify(model_dir)
    model_meta.write_json(model_dir / "checksums.json", sums)
    (model_dir / "calibration.json").unlink()
    with pytest.raises(ModelDirError, match="calibration.json"):
        model_meta.verify(model_dir)


def test_stamp_rewrites_the_config_and_it_still_verifies(model_dir: Path) -> None:
    model_meta.stamp(model_dir, "bolt", "v0042")
    model_meta.verify(model_dir)
    d = model_meta.describe(model_dir)
    assert (d.version, d.product, d.threshold, d.input_hw) == ("v0042", "bolt", 0.25, (64, 64))
    assert load_model_dir(model_dir).version == "v0042"


def _as_format1(model_dir: Path) -> None:
    """Rewrite a directory the way format 1 wrote it: no new model keys, weights-only checksums."""
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["format_version"] = 1
    for k in ("map_stride", "map_metric", "feature_norm"):
        cfg["model"].pop(k)
    cfg["model"]["standardize"] = False
    (model_dir / "config.json").write_text(json.dumps(cfg))
    sums = model_meta.read_checksums(model_dir)
    (model_dir / "checksums.json").write_text(json.dumps({"weights.pt": sums["weights.pt"]}))


def test_a_format1_dir_with_weights_only_checksums_loads_and_scores_as_before(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_model()
    old_cfg = InpConfig(**{**model.cfg.to_dict(), "feature_norm": "none", "map_metric": "cos", "map_stride": 1})
    torch.manual_seed(0)
    old_model = InpFormer(old_cfg).eval()
    d = save_model_dir(tmp_path / "old", old_model, {"version": "v0001"}, {"threshold": 0.25})
    images = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(3)]
    eng = TorchEngine(d)
    before = eng.infer("p", images).scores
    eng.close()
    _as_format1(d)
    with caplog.at_level("WARNING"):
        loaded = load_model_dir(d)
    assert "weights.pt only" in caplog.text
    assert loaded.config["format_version"] == model_meta.FORMAT_VERSION and loaded.config["migrated_from"] == 1
    assert (loaded.module.cfg.feature_norm, loaded.module.cfg.map_metric, loaded.module.cfg.map_stride) == \
        ("none", "cos", 1)
    eng = TorchEngine(d)
    np.testing.assert_allclose(eng.infer("p", images).scores, before, rtol=1e-5, atol=1e-6)
    eng.close()
    (d / "weights.pt").write_bytes((d / "weights.pt").read_bytes() + b"x")
    with pytest.raises(ModelDirError, match="weights.pt fails its checksum"):
        load_model_dir(d)


def test_unknown_formats_are_refused(model_dir: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    with pytest.raises(ModelDirError, match="format 99"):
        model_meta.migrate({**cfg, "format_version": 99}, model_dir)


def test_a_model_field_this_build_does_not_know_is_refused_not_ignored(model_dir: Path) -> None:
    """A newer writer's field (a same-format config with one more key) would change the scores if dropped."""
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["model"]["decoder_heads_v3"] = 8
    (model_dir / "config.json").write_text(json.dumps(cfg))
    model_meta.record_checksums(model_dir, ["config.json"])  # a consistent directory: only the field is new
    with pytest.raises(ModelDirError, match=r"model fields this build does not know \(decoder_heads_v3\)"):
        load_model_dir(model_dir)


def test_the_legacy_model_keys_are_exactly_what_no_current_field_covers() -> None:
    from dataclasses import fields

    assert not model_meta.LEGACY_MODEL_KEYS & {f.name for f in fields(InpConfig)}
