"""Pick the in-process engine for one model directory.

``auto`` takes the first available engine of :data:`AUTO_ORDER` (see there for why); ``torch``,
``onnx`` and ``openvino`` force one (OpenVINO runs the same exported ONNX file); ``onnx-int8`` runs the dynamically quantised copy of the ONNX export (see
benchmarks/RESULTS.md for its speed and accuracy change; the threshold stays the fp32 calibration).
Multi-product routing (one engine per active model) is the pipeline's job.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from inference.engines.base import Engine
from lineinspect.errors import ConfigError

KINDS = ("auto", "torch", "onnx", "onnx-int8", "openvino")

# What ``auto`` picks, first available wins. ONNX Runtime stays first: measured side by side on this
# project's 2-core machine with the default model and 2 threads each (benchmarks/results/
# openvino_vs_ort.json, interleaved, median of 3), OpenVINO ran at 0.21x (batch 1) and 0.55x
# (batch 8) of ONNX Runtime while the cores were shared (load average ~18), and an earlier
# attempt measured 0.97x (batch 1) / 1.11x (batch 8) on a quieter box: not faster where it counts
# (a consumer shares its cores), so it is opt-in (``local://openvino``), not the default.
AUTO_ORDER = ("onnx", "torch")

_RUNTIME = {"onnx": ("inference.engines.onnx_engine", "onnxruntime"),
            "openvino": ("inference.engines.openvino_engine", "openvino"),
            "torch": ("inference.engines.torch_engine", "torch")}


def _available(kind: str) -> bool:
    try:
        for mod in _RUNTIME[kind]:
            importlib.import_module(mod)
    except ModuleNotFoundError:
        return False
    return True


def _onnx_available() -> bool:
    return _available("onnx")


def load_local_engine(model_dir: str | Path, kind: str = "auto", threads: int = 0, device: str = "cpu") -> Engine:
    """The in-process engine ``kind`` names; ``device`` places a PyTorch engine (the others run on the CPU)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown local engine {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "auto" and device != "cpu":
        kind = "torch"  # the only local engine here that runs on a GPU (and decodes JPEG there)
    if kind == "auto":
        kind = next((k for k in AUTO_ORDER if _available(k)), "torch")
    if kind == "openvino":
        try:
            ov = importlib.import_module("inference.engines.openvino_engine")
            importlib.import_module("openvino")
        except ModuleNotFoundError as exc:
            raise ConfigError(f"OpenVINO is not available in this build ({exc}); use --engine onnx") from None
        return ov.OpenVinoEngine(model_dir, threads=threads)
    if kind in ("onnx", "onnx-int8"):
        try:
            mod = importlib.import_module("inference.engines.onnx_engine")
        except ModuleNotFoundError as exc:
            raise ConfigError(f"the ONNX engine is not available in this build ({exc}); use --engine torch") from None
        return mod.OnnxEngine(model_dir, threads=threads, int8=kind == "onnx-int8")
    from inference.engines.torch_engine import TorchEngine

    return TorchEngine(model_dir, threads=threads, device=device)
