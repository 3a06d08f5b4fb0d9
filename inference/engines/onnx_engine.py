"""ONNX Runtime engine for one model directory: the default local engine on CPU.

Runs the exported whole-model graph (see :mod:`inference.onnx_export`), exporting it on first use
when ``model.onnx`` is missing or stale. Pre-processing and batching are the shared
:func:`score_in_batches`, so results match the PyTorch engine and the Triton server (which runs this same session code).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from inference.engines.base import EngineOutput
from inference.onnx_export import (
    INPUT_NAME,
    ONNX_FILE,
    OUTPUT_NAMES,
    ModelMeta,
    export_onnx,
    onnx_is_fresh,
    read_model_meta,
)
from inference.preprocess import score_in_batches
from lineinspect.logs import kv

log = logging.getLogger("lineinspect.inference.onnx")


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def session_options(threads: int = 0) -> Any:
    """CPU options: all graph optimisations, ``threads`` intra-op (0 = every core), one inter-op
    thread and sequential execution (the graph is a chain; parallel branches only add contention).

    Intra-op threads do not spin-wait between ops: a consumer shares its cores with its own storage
    thread, the decoder and often the services, and spinning threads steal exactly those cycles
    (benchmarks/RESULTS.md, "Figures behind code defaults")."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads if threads > 0 else available_cores()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def make_session(onnx_path: str | Path, threads: int = 0, providers: list[str] | None = None) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), sess_options=session_options(threads),
                                providers=providers or ["CPUExecutionProvider"])


def _fallback_path(meta: ModelMeta) -> Path:
    """Where to export when the model dir is read-only: a per-user cache keyed by the weights hash."""
    root = Path(os.environ.get("LINEINSPECT_CACHE", Path.home() / ".cache" / "lineinspect")) / "onnx"
    return root / f"{meta.weights_sha256[:24]}.onnx"


def ensure_onnx(meta: ModelMeta, onnx_path: str | Path | None = None) -> Path:
    """A fresh ONNX export for ``meta``: the given file, ``model.onnx`` in the model dir, or a cache copy."""
    if onnx_path is not None:
        return export_onnx(meta.path, onnx_path)
    target = meta.path / ONNX_FILE
    if onnx_is_fresh(meta, target):
        return target
    if os.access(meta.path, os.W_OK):
        return export_onnx(meta.path, target)
    return export_onnx(meta.path, _fallback_path(meta))


class ExportedModel:
    """What every runtime of the exported graph shares: the model dir's metadata (version,
    threshold, input size) and the ``run`` contract; a subclass only executes the graph."""

    meta: ModelMeta

    @property
    def version(self) -> str:
        return self.meta.version

    @property
    def threshold(self) -> float:
        return self.meta.threshold

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.meta.input_hw

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed float32 (N, 3, H, W) -> (maps (N, H, W), scores (N,))."""
        want = (3, *self.input_hw)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"expected input (N, {want[0]}, {want[1]}, {want[2]}), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            return np.zeros((0, *self.input_hw), np.float32), np.zeros((0,), np.float32)
        return self._execute(np.ascontiguousarray(x, dtype=np.float32))

    def _execute(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class OnnxModel(ExportedModel):
    """One loaded ONNX session plus the metadata every result row needs (version, threshold)."""

    def __init__(self, model_dir: str | Path, threads: int = 0, onnx_path: str | Path | None = None,
                 providers: list[str] | None = None, int8: bool = False) -> None:
        self.meta = read_model_meta(model_dir)
        t0 = time.perf_counter()
        self.onnx_path = ensure_onnx(self.meta, onnx_path)
        if int8:  # written next to the fp32 export (model dir or the per-user cache), reused while fresh
            from inference.quantize import quantize_dynamic_int8

            self.onnx_path = quantize_dynamic_int8(self.onnx_path)
        self.session = make_session(self.onnx_path, threads, providers)
        log.info("ONNX session ready", extra=kv(model_dir=str(self.meta.path), version=self.meta.version,
                                                path=str(self.onnx_path), ms=round((time.perf_counter() - t0) * 1e3)))

    def _execute(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        amap, score = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        return amap, score


class OnnxEngine:
    """Scores frames with ONNX Runtime; ``product`` is informational (one model per engine)."""

    name = "onnx"

    def __init__(self, model_dir: str | Path, threads: int = 0, batch_size: int = 16,
                 onnx_path: str | Path | None = None, providers: list[str] | None = None, int8: bool = False) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model = OnnxModel(model_dir, threads, onnx_path, providers, int8=int8)
        self.name = "onnx-int8" if int8 else "onnx"
        self.batch_size = batch_size

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.model.input_hw

    @property
    def version(self) -> str:
        return self.model.version

    def decode_hw(self, product: str) -> tuple[int, int] | None:
        """Frames are resized to the model input: decode no more than that (see engines.base.decode_hw)."""
        return self.input_hw

    def infer(self, product: str, images: list[np.ndarray]) -> EngineOutput:
        t0 = time.perf_counter()
        maps, scores = score_in_batches(images, self.input_hw, self.batch_size, self.model.run)
        return EngineOutput(scores, maps, self.model.version, self.model.threshold, (time.perf_counter() - t0) * 1000.0)

    def close(self) -> None:
        self.model.session = None
