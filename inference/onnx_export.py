"""Export a model directory's whole INP-Former to one ONNX graph, once per model version.

The graph holds everything between the shared pre-processing (resize, [0, 1] scaling; see
:mod:`inference.preprocess`) and the engine output: colour normalisation, the frozen encoder, the
INP extractor, the decoder, the anomaly map (Gaussian blur included) and the top-fraction score.
The batch axis is dynamic; the spatial size is the model's static ``input_hw``.

The file lands next to the weights as ``model.onnx`` with a sidecar ``model.onnx.json`` that
records its sha256 and the sha256 of the ``weights.pt`` it came from. An engine re-exports when
the file is missing, corrupt, or was exported from other weights, so a retrained model dir can
never serve a stale graph, and an unchanged one is exported only once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lineinspect import model_meta
from lineinspect.errors import ConfigError
from lineinspect.files import file_sha256
from lineinspect.logs import kv

log = logging.getLogger("lineinspect.inference.onnx")

ONNX_FILE = "model.onnx"
SIDECAR_SUFFIX = ".json"
INPUT_NAME = "images"
OUTPUT_NAMES = ("anomaly_map", "score")
DEFAULT_OPSET = 17
EXPORT_FORMAT = 1   # bump when the graph's inputs/outputs change, so old exports are redone


@dataclass(frozen=True)
class ModelMeta:
    """What an engine needs from a model dir without building the PyTorch module."""

    path: Path
    version: str
    threshold: float
    input_hw: tuple[int, int]
    weights_sha256: str
    config: dict[str, Any]




def read_model_meta(model_dir: str | Path) -> ModelMeta:
    """Read and verify a model dir's metadata (same checks and version rule as ``load_model_dir``)."""
    path = Path(model_dir)
    config, calibration, actual = model_meta.read_verified(path, exports=False)  # a bad export is rebuilt
    hw = config.get("input_hw") or (config.get("model") or {}).get("input_hw")
    if not hw or len(hw) != 2:
        raise model_meta.ModelDirError(f"{path}: the model config has no input_hw")
    return ModelMeta(path, str(config.get("version") or actual[:12]), float(calibration["threshold"]),
                     (int(hw[0]), int(hw[1])), actual, config)


def sidecar_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + SIDECAR_SUFFIX)


def onnx_is_fresh(meta: ModelMeta, onnx_path: Path) -> bool:
    """True when ``onnx_path`` is intact and was exported from exactly this model dir's weights."""
    side = sidecar_path(onnx_path)
    if not onnx_path.is_file() or not side.is_file():
        return False
    info = model_meta.read_sidecar(side)
    if info is None:
        return False
    return (info.get("export_format") == EXPORT_FORMAT
            and info.get("weights_sha256") == meta.weights_sha256
            and list(info.get("input_hw", [])) == list(meta.input_hw)
            and info.get("onnx_sha256") == file_sha256(onnx_path))


def export_module(module: Any, out_path: Path, input_hw: tuple[int, int], output_names: tuple[str, ...],
                  opset: int = DEFAULT_OPSET) -> Path:
    """Trace ``module`` (float NCHW [0, 1] -> outputs with a leading batch axis) to ONNX, atomically.

    Uses the TorchScript exporter: the model is static apart from the batch axis, which the trace
    keeps symbolic (traced at batch 2 so no size-1 broadcast gets baked in).
    """
    import onnx
    import torch

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.rand(2, 3, int(input_hw[0]), int(input_hw[1]), generator=torch.Generator().manual_seed(0))
    axes = {INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in output_names}}
    fd, tmp_name = tempfile.mkstemp(prefix=out_path.name + ".", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about static shapes are expected here
            torch.onnx.export(module.eval(), (x,), str(tmp), input_names=[INPUT_NAME], output_names=list(output_names),
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def export_onnx(model_dir: str | Path, out_path: str | Path | None = None, opset: int = DEFAULT_OPSET,
                force: bool = False) -> Path:
    """Export the whole model of ``model_dir`` to ONNX (default ``<model_dir>/model.onnx``) and return the path.

    Reuses an existing export when its sidecar says it came from the same weights and its hash
    still matches, unless ``force``.
    """
    if opset < 17:
        raise ConfigError(f"opset {opset} is too old: the graph needs opset >= 17")
    meta = read_model_meta(model_dir)
    target = Path(out_path) if out_path else meta.path / ONNX_FILE
    if not force and onnx_is_fresh(meta, target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two engines starting together export once, not twice
        if not force and onnx_is_fresh(meta, target):
            return target
        return _export_locked(meta, target, opset)


def _export_locked(meta: ModelMeta, target: Path, opset: int) -> Path:
    import torch

    from inference.model_dir import load_model_dir

    loaded = load_model_dir(meta.path)
    t0 = time.perf_counter()
    export_module(loaded.module, target, meta.input_hw, OUTPUT_NAMES, opset)
    info = {"export_format": EXPORT_FORMAT, "onnx_sha256": file_sha256(target), "weights_sha256": meta.weights_sha256,
            "version": meta.version, "input_hw": list(meta.input_hw), "opset": opset, "input": INPUT_NAME,
            "outputs": list(OUTPUT_NAMES), "exporter": "torch.onnx (TorchScript)", "torch": torch.__version__}
    side = sidecar_path(target)
    model_meta.write_json(side, info)
    if target.parent.resolve() == meta.path.resolve():  # an export inside the model dir is part of the model
        model_meta.record_checksums(meta.path, [target.name, side.name])
    log.info("exported ONNX", extra=kv(model_dir=str(meta.path), path=str(target), version=meta.version,
                                       seconds=round(time.perf_counter() - t0, 2)))
    return target
