"""int8 dynamic quantisation of the exported graph: written, reused while fresh, close to fp32."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx

from inference.engines.onnx_engine import make_session
from inference.onnx_export import export_onnx
from inference.preprocess import batch_to_input
from inference.quantize import int8_path, quantize_dynamic_int8
from tests.inference.onnx_fixtures import RealModel, real_model  # noqa: F401 - fixture


def test_int8_model_quantises_the_head_and_stays_close(real_model: RealModel, tmp_path: Path) -> None:  # noqa: F811
    dst = tmp_path / "m"
    shutil.copytree(real_model.model_dir, dst, ignore=shutil.ignore_patterns("model*.onnx*"))
    fp32 = export_onnx(dst)
    q = quantize_dynamic_int8(fp32)
    assert q == int8_path(fp32) and q.is_file()
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops
    stamp = q.stat().st_mtime_ns
    assert quantize_dynamic_int8(fp32).stat().st_mtime_ns == stamp  # fresh: reused
    x = batch_to_input(real_model.normal[:2] + real_model.anomalous[:2], (128, 128))
    a = make_session(fp32, 1).run(None, {"images": x})
    b = make_session(q, 1).run(None, {"images": x})
    rel = np.abs(a[1] - b[1]).max() / np.abs(a[1]).max()
    assert rel < 0.2, f"int8 scores drift {rel:.3f} of the score scale"
