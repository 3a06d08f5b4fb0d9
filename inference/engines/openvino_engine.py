"""OpenVINO Runtime engine: the same exported ONNX graph as :mod:`inference.engines.onnx_engine`,
compiled by OpenVINO for the CPU.

OpenVINO reads the ONNX file as it is (no conversion step, no second artefact to keep fresh), so
the model directory, the export and the pre/post-processing are exactly the ONNX engine's; only
the runtime differs. It is what anomalib deploys with, and on small CPUs it can be faster than
ONNX Runtime for this graph (measured side by side in ``benchmarks/bench_engines.py``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from inference.engines.onnx_engine import ExportedModel, OnnxEngine, available_cores, ensure_onnx
from inference.onnx_export import INPUT_NAME, OUTPUT_NAMES, read_model_meta
from lineinspect.logs import kv

log = logging.getLogger("lineinspect.inference.openvino")


def compile_onnx(onnx_path: str | Path, threads: int = 0) -> Any:
    """An OpenVINO CPU compiled model for the ONNX file, ``threads`` inference threads (0 = every
    core), latency hint: one request at a time per consumer, like the ONNX Runtime session.

    Precision is pinned to f32: on CPUs with bf16 units (AVX512-BF16 / AMX) the CPU plugin
    otherwise runs in bf16 by default, which here moved map values in the third digit and
    scores by ~0.02 - not the model that was calibrated."""
    import openvino as ov

    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": threads if threads > 0 else available_cores(),
           "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
           "INFERENCE_PRECISION_HINT": "f32"}
    return core.compile_model(core.read_model(str(onnx_path)), "CPU", cfg)


class OpenVinoModel(ExportedModel):
    """One compiled model plus the metadata rows need; the same ``run`` contract as ``OnnxModel``."""

    def __init__(self, model_dir: str | Path, threads: int = 0, onnx_path: str | Path | None = None) -> None:
        self.meta = read_model_meta(model_dir)
        t0 = time.perf_counter()
        self.onnx_path = ensure_onnx(self.meta, onnx_path)
        self.session: Any = compile_onnx(self.onnx_path, threads)
        self._request = self.session.create_infer_request()
        self._outputs = [self.session.output(n) for n in OUTPUT_NAMES]
        log.info("OpenVINO model ready", extra=kv(model_dir=str(self.meta.path), version=self.meta.version,
                                                  path=str(self.onnx_path), ms=round((time.perf_counter() - t0) * 1e3)))

    def _execute(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.session is None:
            raise RuntimeError("the OpenVINO engine is closed")
        res = self._request.infer({INPUT_NAME: x})
        return np.array(res[self._outputs[0]]), np.array(res[self._outputs[1]])  # copies: the request reuses its buffers


class OpenVinoEngine(OnnxEngine):
    """Scores frames with OpenVINO; batching, pre-processing and outputs are the ONNX engine's."""

    name = "openvino"

    def __init__(self, model_dir: str | Path, threads: int = 0, batch_size: int = 16,
                 onnx_path: str | Path | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model = OpenVinoModel(model_dir, threads, onnx_path)  # type: ignore[assignment]
        self.name = "openvino"
        self.batch_size = batch_size
