"""Optional int8 weights for the exported graph (ONNX Runtime dynamic quantisation).

Only MatMul/Gemm (the INP-Former head's linear layers) are quantised by default: ONNX Runtime's
dynamic ConvInteger path is slower than its fp32 depthwise convs on CPU, and the frozen encoder's
activations are what the anomaly map compares, so quantising them costs accuracy for no speed.
Off by default; ``benchmarks/bench_engines.py`` reports its speed and image-AUROC change.
"""

from __future__ import annotations

import os
from pathlib import Path

from lineinspect import model_meta
from lineinspect.files import file_sha256

DEFAULT_OPS = ("MatMul", "Gemm")


def int8_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.stem + ".int8.onnx")


def quantize_dynamic_int8(onnx_path: str | Path, out_path: str | Path | None = None,
                          op_types: tuple[str, ...] = DEFAULT_OPS) -> Path:
    """Write an int8 (weights; activations quantised on the fly) copy of ``onnx_path``; reused while fresh."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = Path(onnx_path)
    if not src.is_file():
        raise FileNotFoundError(f"no ONNX model at {src}; run `lineinspect export` first")
    out = Path(out_path) if out_path else int8_path(src)
    side = out.with_name(out.name + ".json")
    want = {"source_sha256": file_sha256(src), "op_types": sorted(op_types)}
    if out.is_file() and model_meta.read_sidecar(side) == {**want, "sha256": file_sha256(out)}:
        return out
    tmp = out.with_name(out.name + ".tmp.onnx")
    try:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types),
                         per_channel=False, reduce_range=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    model_meta.write_json(side, {**want, "sha256": file_sha256(out)})
    if (out.parent / model_meta.CHECKSUMS).is_file():  # inside a model dir: part of the model
        model_meta.record_checksums(out.parent, [out.name, side.name])
    return out
