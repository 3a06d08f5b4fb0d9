"""ONNX export of a whole model dir: written once, reused, redone when stale, loadable by ONNX Runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from inference.onnx_export import (
    INPUT_NAME,
    ONNX_FILE,
    OUTPUT_NAMES,
    export_onnx,
    onnx_is_fresh,
    read_model_meta,
    sidecar_path,
)
from lineinspect.errors import ConfigError
from tests.inference.onnx_fixtures import RealModel, real_model  # noqa: F401 - fixture


@pytest.fixture()
def model_copy(real_model: RealModel, tmp_path: Path) -> Path:  # noqa: F811
    dst = tmp_path / "m"
    shutil.copytree(real_model.model_dir, dst, ignore=shutil.ignore_patterns("model.onnx*"))
    return dst


def test_export_writes_graph_with_dynamic_batch_and_sidecar(model_copy: Path) -> None:
    path = export_onnx(model_copy)
    assert path == model_copy / ONNX_FILE
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == [INPUT_NAME]
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    in_dims = graph.input[0].type.tensor_type.shape.dim
    assert in_dims[0].dim_param == "batch" and [d.dim_value for d in in_dims[1:]] == [3, 128, 128]
    assert graph.output[1].type.tensor_type.shape.dim[0].dim_param == "batch"
    op_types = {n.op_type for n in graph.node}
    assert {"Conv", "TopK", "Pad"} <= op_types  # encoder, score and the reflect-padded blur are all inside
    side = json.loads(sidecar_path(path).read_text())
    assert side["weights_sha256"] == read_model_meta(model_copy).weights_sha256
    assert side["opset"] >= 17


def test_export_is_reused_then_redone_when_stale(model_copy: Path) -> None:
    path = export_onnx(model_copy)
    stamp = path.stat().st_mtime_ns
    assert export_onnx(model_copy).stat().st_mtime_ns == stamp  # unchanged weights: no second export
    meta = read_model_meta(model_copy)
    assert onnx_is_fresh(meta, path)
    with open(path, "ab") as fh:  # a corrupted / swapped file is not trusted
        fh.write(b"\0")
    assert not onnx_is_fresh(meta, path)
    export_onnx(model_copy)
    assert onnx_is_fresh(meta, path)
    side = sidecar_path(path)
    info = json.loads(side.read_text())
    info["weights_sha256"] = "0" * 64  # exported from other weights (e.g. a retrained dir)
    side.write_text(json.dumps(info))
    assert not onnx_is_fresh(meta, path)
    export_onnx(model_copy)
    assert onnx_is_fresh(meta, path)


def test_export_refuses_old_opset_and_non_model_dirs(model_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(model_copy, opset=13)
    with pytest.raises(ConfigError, match="missing"):
        export_onnx(tmp_path / "empty")


def test_export_refuses_tampered_weights(model_copy: Path) -> None:
    with open(model_copy / "weights.pt", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(ConfigError, match="checksum"):
        export_onnx(model_copy)


def test_export_to_explicit_path_runs_in_onnxruntime(model_copy: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    out = export_onnx(model_copy, tmp_path / "elsewhere" / "x.onnx")
    assert out.is_file() and not (model_copy / ONNX_FILE).exists()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        amap, score = sess.run(None, {INPUT_NAME: np.random.default_rng(n).random((n, 3, 128, 128), np.float32)})
        assert amap.shape == (n, 128, 128) and score.shape == (n,)
        assert np.all(np.isfinite(amap)) and np.all(score >= 0)
