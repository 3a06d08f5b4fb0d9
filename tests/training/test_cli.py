"""`lineinspect train` refuses to calibrate a threshold on fewer than 2 held-out normals and warns below ~20."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lineinspect.cli import main
from lineinspect.errors import ConfigError
from training.cli import WARN_CALIBRATION_IMAGES, check_calibration_count


def _dataset(root: Path, n: int) -> Path:
    good = root / "parts" / "train" / "good"
    good.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(good / f"{i:03d}.png"), np.full((64, 64, 3), 40 + i, np.uint8))
    return root


@pytest.mark.parametrize("n", [1, 2, 5])
def test_train_on_too_few_images_is_refused_with_a_clear_error(tmp_path: Path, n: int,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("LINEINSPECT_HOME", str(tmp_path / "home"))
    root = _dataset(tmp_path / "data", n)
    out = tmp_path / "model"
    rc = main(["train", "--data", str(root), "--category", "parts", "--out", str(out), "--iters", "1",
               "--backbone", "random_tiny", "--size", "64"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "held out to calibrate the threshold" in err and "at least 2" in err
    assert not (out / "weights.pt").exists()


def test_the_calibration_minimum_and_warning() -> None:
    with pytest.raises(ConfigError, match="at least 2"):
        check_calibration_count(1, 6)
    check_calibration_count(2, 14)
    check_calibration_count(WARN_CALIBRATION_IMAGES, 140)


def test_few_calibration_images_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="training.cli"):
        check_calibration_count(3, 20)
    assert "few held-out normal images" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="training.cli"):
        check_calibration_count(WARN_CALIBRATION_IMAGES, 140)
    assert caplog.text == ""


def test_train_with_an_extrinsic_memory_writes_it_into_the_model(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from inference.model_dir import load_model_dir

    monkeypatch.setenv("LINEINSPECT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LINEINSPECT_MODEL_PRESET", "fast")  # the flags below on the pure recipe's other fields
    root = _dataset(tmp_path / "data", 20)
    out = tmp_path / "model"
    rc = main(["train", "--data", str(root), "--category", "parts", "--out", str(out), "--iters", "2",
               "--backbone", "random_tiny", "--size", "64", "--memory-size", "16"])
    assert rc == 0
    module = load_model_dir(out).module
    assert module.cfg.memory_size == 16
    bank = module.head.memory.bank
    assert bank.shape[0] == 16 and float(bank.abs().sum()) > 0  # filled from the training patches
    assert module.cfg.memory_k == 3 and module.cfg.memory_dims == 0 and module.cfg.memory_weight == 1.0
    assert main(["train", "--data", str(root), "--category", "parts", "--out", str(tmp_path / "m2"), "--iters", "2",
                 "--backbone", "random_tiny", "--size", "64", "--memory-size", "-1"]) == 2
    rc = main(["train", "--data", str(root), "--category", "parts", "--out", str(tmp_path / "m3"), "--iters", "2",
               "--backbone", "random_tiny", "--size", "64", "--memory-size", "16", "--memory-dims", "8",
               "--memory-weight", "2"])
    m3 = load_model_dir(tmp_path / "m3").module
    assert rc == 0 and m3.cfg.memory_dims == 8 and m3.cfg.memory_weight == 2.0 and m3.head.memory.bank.shape == (16, 8)
    rc = main(["train", "--data", str(root), "--category", "parts", "--out", str(tmp_path / "m4"), "--iters", "2",
               "--backbone", "random_tiny", "--size", "64", "--memory-size", "16", "--memory-metric", "cos",
               "--memory-k", "1"])
    m4 = load_model_dir(tmp_path / "m4").module
    assert rc == 0 and m4.cfg.memory_metric == "cos" and m4.cfg.memory_k == 1
    # a cosine bank holds (centred) unit vectors: the rows plus the centre have length 1
    assert torch.allclose((m4.head.memory.bank + m4.head.memory.center).norm(dim=1), torch.ones(16), atol=1e-4)
    assert main(["train", "--data", str(root), "--category", "parts", "--out", str(tmp_path / "m5"), "--iters", "2",
                 "--backbone", "random_tiny", "--size", "64", "--memory-size", "16", "--memory-k", "17"]) == 2
    # the accurate preset: the paired memory, weight 2 (its 1024 entries overridden: the toy set has fewer patches)
    rc = main(["train", "--data", str(root), "--category", "parts", "--out", str(tmp_path / "m6"), "--iters", "2",
               "--backbone", "random_tiny", "--size", "64", "--preset", "accurate", "--memory-size", "16"])
    m6 = load_model_dir(tmp_path / "m6").module
    assert rc == 0 and (m6.cfg.memory_size, m6.cfg.memory_metric, m6.cfg.memory_k, m6.cfg.memory_weight) == (
        16, "cos+l2", 3, 2.0)
    # the paired memory: one coreset per bank in its own space (unit rows for the cosine bank), and each bank's
    # distance standardised on the held-out normals
    rc = main(["train", "--data", str(root), "--category", "parts", "--out", str(tmp_path / "m7"), "--iters", "2",
               "--backbone", "random_tiny", "--size", "64", "--memory-size", "16", "--memory-metric", "cos+l2"])
    m7 = load_model_dir(tmp_path / "m7").module
    assert rc == 0 and m7.cfg.memory_metric == "cos+l2"
    pair = m7.head.memory
    assert torch.allclose((pair.cos.bank + pair.cos.center).norm(dim=1), torch.ones(16), atol=1e-4)
    assert not torch.allclose((pair.l2.bank + pair.l2.center).norm(dim=1), torch.ones(16), atol=1e-2)
    assert (pair.part_stats[:, 1] != 1.0).all() and pair.mem_stats.tolist() == [0.0, 1.0]


def test_train_without_a_preset_uses_the_model_preset_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from inference.model_dir import load_model_dir

    monkeypatch.setenv("LINEINSPECT_HOME", str(tmp_path / "home"))
    root = _dataset(tmp_path / "data", 20)
    # the setting picks the recipe when --preset is not given: 'accurate' (its 1024 entries overridden: the toy set
    # has fewer patches)
    monkeypatch.setenv("LINEINSPECT_MODEL_PRESET", "accurate")
    assert main(["train", "--data", str(root), "--category", "parts", "--out", str(tmp_path / "d"), "--iters", "2",
                 "--backbone", "random_tiny", "--size", "64", "--memory-size", "16"]) == 0
    cfg = load_model_dir(tmp_path / "d").module.cfg
    assert (cfg.decoder_blocks, cfg.memory_size, cfg.memory_metric, cfg.memory_k, cfg.memory_weight) == (
        4, 16, "cos+l2", 3, 2.0)
    monkeypatch.setenv("LINEINSPECT_MODEL_PRESET", "fast")
    assert main(["train", "--data", str(root), "--category", "parts", "--out", str(tmp_path / "f"), "--iters", "2",
                 "--backbone", "random_tiny", "--size", "64", "--decoder-blocks", "2", "--width", "64"]) == 0
    cfg = load_model_dir(tmp_path / "f").module.cfg
    assert (cfg.decoder_blocks, cfg.memory_size, cfg.width) == (2, 0, 64)
    # a width the attention heads cannot split: a clear error, exit 2, nothing written
    assert main(["train", "--data", str(root), "--category", "parts", "--out", str(tmp_path / "w"), "--iters", "2",
                 "--backbone", "random_tiny", "--size", "64", "--width", "48"]) == 2
    assert not (tmp_path / "w").exists()
    monkeypatch.setenv("LINEINSPECT_MODEL_PRESET", "best")
    assert main(["train", "--data", str(root), "--category", "parts", "--out", str(tmp_path / "x"), "--iters", "2",
                 "--backbone", "random_tiny", "--size", "64"]) == 2  # a broken setting: a clear error, exit 2


def test_train_with_a_residual_head_writes_it_into_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from inference.model_dir import load_model_dir

    monkeypatch.setenv("LINEINSPECT_HOME", str(tmp_path / "home"))
    root = _dataset(tmp_path / "data", 20)
    out = tmp_path / "model"
    rc = main(["train", "--data", str(root), "--category", "parts", "--out", str(out), "--iters", "2",
               "--backbone", "random_tiny", "--size", "64", "--residual-head", "4", "--residual-weight", "0.5",
               "--memory-size", "16"])
    assert rc == 0
    lm = load_model_dir(out)
    assert lm.module.cfg.residual_head == 4 and lm.module.cfg.residual_weight == 0.5
    assert float(lm.module.head.residual.res_stats[1]) > 0 and lm.config["residual_images"] > 0
    assert main(["train", "--data", str(root), "--category", "parts", "--out", str(tmp_path / "bad"), "--iters", "2",
                 "--backbone", "random_tiny", "--size", "64", "--residual-head", "-2"]) == 2
    plain = tmp_path / "plain"
    assert main(["train", "--data", str(root), "--category", "parts", "--out", str(plain), "--iters", "2",
                 "--backbone", "random_tiny", "--size", "64"]) == 0
    assert load_model_dir(plain).module.cfg.residual_head == 0  # off by default


def test_one_unified_model_for_two_products_and_a_few_shot_model(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.setenv("LINEINSPECT_HOME", str(tmp_path / "home"))
    root = tmp_path / "data"
    _dataset(root, 20)
    (root / "parts").rename(root / "bolts")
    _dataset(root, 20)
    out = tmp_path / "unified"
    assert main(["train", "--data", str(root), "--category", "parts", "--category", "bolts", "--out", str(out),
                 "--iters", "2", "--backbone", "random_tiny", "--size", "64"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["categories"] == ["parts", "bolts"]
    assert cfg["train_images"] + cfg["calibration_images"] == 40  # both products' normals, held-outs from both
    assert cfg["calibration_images"] == 6
    few = tmp_path / "few"
    assert main(["train", "--data", str(root), "--category", "parts", "--out", str(few), "--iters", "2",
                 "--backbone", "random_tiny", "--size", "64", "--few-shot", "2"]) == 0
    meta = json.loads((few / "config.json").read_text())
    assert meta["train_images"] == 2 and meta["train_feature_rows"] == 2 * (1 + meta["train"]["aug_copies"])


@pytest.mark.parametrize(("extra", "message"), [
    (["--iters", "0"], "--iters must be >= 1"),
    (["--few-shot", "-1"], "--few-shot must be >= 1"),
    (["--few-shot", "17"], "--few-shot 17 is not a few shots: there are 17 training images"),
    (["--out", "FILE"], "exists and is not a directory"),
])
def test_bad_train_arguments_are_one_line_and_exit_2_with_nothing_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, extra: list[str],
        message: str) -> None:
    monkeypatch.setenv("LINEINSPECT_HOME", str(tmp_path / "home"))
    root = _dataset(tmp_path / "data", 20)  # 17 fit + 3 held out
    afile = tmp_path / "afile"
    afile.write_text("")
    out = tmp_path / "model"
    args = ["train", "--data", str(root), "--category", "parts", "--out", str(out), "--iters", "1",
            "--backbone", "random_tiny", "--size", "64"]
    rc = main(args + [str(afile) if a == "FILE" else a for a in extra])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # (a warning about the small hold-out may come first)
    assert rc == 2 and last.startswith("lineinspect: error:") and message in last
    assert not out.exists() and afile.read_text() == ""


def test_eval_refuses_a_directory_as_its_json_output_before_evaluating(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("LINEINSPECT_HOME", str(tmp_path / "home"))
    root = _dataset(tmp_path / "data", 4)
    (root / "parts" / "test" / "good").mkdir(parents=True)
    cv2.imwrite(str(root / "parts" / "test" / "good" / "a.png"), np.full((64, 64, 3), 50, np.uint8))
    model = tmp_path / "not_a_model"
    model.write_text("")
    assert main(["eval", "--data", str(root), "--category", "parts", "--model", str(model)]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["eval", "--data", str(root), "--category", "parts", "--model", str(tmp_path),
                 "--json", str(tmp_path)]) == 2
    assert f"--json {tmp_path} is a directory" in capsys.readouterr().err
