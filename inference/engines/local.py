"""Pick the in-process engine for one model directory.

``auto`` prefers ONNX Runtime when an ONNX engine exists in this build, else PyTorch; ``torch`` and
``onnx`` force one; ``onnx-int8`` runs the dynamically quantised copy of the ONNX export (see
benchmarks/RESULTS.md for its speed and accuracy change; the threshold stays the fp32 calibration).
Multi-product routing (one engine per active model) is the pipeline's job.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from inference.engines.base import Engine
from lineinspect.errors import ConfigError

KINDS = ("auto", "torch", "onnx", "onnx-int8")


def _onnx_available() -> bool:
    try:
        importlib.import_module("inference.engines.onnx_engine")
        importlib.import_module("onnxruntime")
    except ModuleNotFoundError:
        return False
    return True


def load_local_engine(model_dir: str | Path, kind: str = "auto", threads: int = 0) -> Engine:
    if kind not in KINDS:
        raise ConfigError(f"unknown local engine {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "auto":
        kind = "onnx" if _onnx_available() else "torch"
    if kind in ("onnx", "onnx-int8"):
        try:
            mod = importlib.import_module("inference.engines.onnx_engine")
        except ModuleNotFoundError as exc:
            raise ConfigError(f"the ONNX engine is not available in this build ({exc}); use --engine torch") from None
        return mod.OnnxEngine(model_dir, threads=threads, int8=kind == "onnx-int8")
    from inference.engines.torch_engine import TorchEngine

    return TorchEngine(model_dir, threads=threads)
