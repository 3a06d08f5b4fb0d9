"""The standalone-Triton model repository written by ``lineinspect export --triton-repo``."""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from deploy.cli import register
from deploy.triton_repo import render_config, write_triton_repo
from deploy.triton_server import preferred_batch_sizes
from lineinspect.errors import ConfigError
from lineinspect.settings import Settings
from tests.inference.onnx_fixtures import RealModel, real_model  # noqa: F401 - fixture


def parse_pbtxt(text: str) -> dict:
    """A tiny protobuf-text parser (enough for config.pbtxt): messages, lists, scalars, repeated keys."""
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', re.sub(r"#[^\n]*", "", text))
    pos = 0

    def value() -> object:
        nonlocal pos
        t = tokens[pos]
        pos += 1
        if t == "{":
            return message("}")
        if t == "[":
            items = []
            while tokens[pos] != "]":
                if tokens[pos] == ",":
                    pos += 1
                    continue
                items.append(value())
            pos += 1
            return items
        if t.startswith('"'):
            return t[1:-1]
        try:
            return int(t)
        except ValueError:
            return t

    def message(end: str | None) -> dict:
        nonlocal pos
        out: dict = {}
        while pos < len(tokens) and tokens[pos] != end:
            if tokens[pos] == ",":
                pos += 1
                continue
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            v = value()
            out.setdefault(key, []).append(v)
        pos += 1
        return {k: v[0] if len(v) == 1 else v for k, v in out.items()}

    return message(None)


def test_preferred_batch_sizes() -> None:
    assert preferred_batch_sizes(16) == [2, 4, 8, 16]
    assert preferred_batch_sizes(12) == [2, 4, 8, 12]
    assert preferred_batch_sizes(1) == [1]


def test_render_config_parses_and_validates() -> None:
    cfg = parse_pbtxt(render_config("inp_x", "x", "v0003", 0.25, (256, 320), 8, 1500, 2, "KIND_CPU"))
    assert cfg["name"] == "inp_x" and cfg["platform"] == "onnxruntime_onnx" and cfg["max_batch_size"] == 8
    assert cfg["input"][0]["dims"] == [3, 256, 320] and cfg["input"][0]["data_type"] == "TYPE_FP32"
    outs = {o["name"]: o for o in cfg["output"]}
    assert outs["anomaly_map"]["dims"] == [256, 320]
    assert outs["score"]["dims"] == [1] and outs["score"]["reshape"]["shape"] == []
    assert cfg["dynamic_batching"] == {"preferred_batch_size": [2, 4, 8], "max_queue_delay_microseconds": 1500}
    assert cfg["instance_group"][0] == {"count": 2, "kind": "KIND_CPU"}
    params = {p["key"]: p["value"]["string_value"] for p in cfg["parameters"]}
    assert params == {"lineinspect_version": "v0003", "threshold": "0.25"}
    with pytest.raises(ConfigError):
        render_config("inp_x", "x", "v1", 0.1, (8, 8), 0, 0)
    with pytest.raises(ConfigError):
        render_config("inp_x", "x", "v1", 0.1, (8, 8), 4, 0, kind="KIND_TPU")


def test_export_command_writes_a_loadable_triton_repo(real_model: RealModel, tmp_path: Path) -> None:  # noqa: F811
    import onnxruntime as ort

    model = tmp_path / "m"
    shutil.copytree(real_model.model_dir, model, ignore=shutil.ignore_patterns("model*.onnx*"))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    repo = tmp_path / "repo"
    args = parser.parse_args(["export", "--model", str(model), "--triton-repo", str(repo), "--product", "ball.screw",
                              "--version", "3", "--max-batch", "8", "--queue-delay-us", "500"])
    assert args.func(args, Settings()) == 0
    folder = repo / "inp_ball_screw"
    assert sorted(p.name for p in folder.iterdir()) == ["3", "config.pbtxt"]
    assert [p.name for p in (folder / "3").iterdir()] == ["model.onnx"]
    assert (model / "model.onnx").is_file()  # the model dir's own export is the source and is kept
    cfg = parse_pbtxt((folder / "config.pbtxt").read_text())
    assert cfg["name"] == folder.name and cfg["max_batch_size"] == 8
    assert cfg["input"][0]["dims"] == [3, 128, 128]
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 500
    sess = ort.InferenceSession(str(folder / "3" / "model.onnx"), providers=["CPUExecutionProvider"])
    amap, score = sess.run(None, {"images": np.zeros((8, 3, 128, 128), np.float32)})
    assert amap.shape == (8, 128, 128) and score.shape == (8,)
    with pytest.raises(ConfigError):
        write_triton_repo(model, repo, "x", version=0)
