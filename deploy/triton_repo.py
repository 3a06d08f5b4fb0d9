"""Write a standalone-Triton model repository entry for one model dir (GPU production path).

Layout: ``<repo>/<name>/config.pbtxt`` and ``<repo>/<name>/<version>/model.onnx``, the same ONNX
graph the local engine runs (exported once per weights). The config uses Triton's ONNX Runtime
backend with dynamic batching; the batch axis is implied by ``max_batch_size`` so the dims list
only (3, H, W) and (H, W). The registry version and threshold ride along as config parameters
(a standalone server has no Python to return them per request; :class:`TritonEngine` reads them
from the model config when the model has no ``model_version`` output).

Load it with::

    tritonserver --model-repository REPO --model-control-mode explicit --load-model NAME
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path

from deploy.triton_server import preferred_batch_sizes
from inference.engines.triton_engine import triton_model_name
from inference.onnx_export import export_onnx, read_model_meta
from lineinspect.errors import ConfigError
from lineinspect.names import child_path

KINDS = ("KIND_GPU", "KIND_CPU", "KIND_AUTO")


def render_config(name: str, product: str, model_version: str, threshold: float, input_hw: tuple[int, int],
                  max_batch: int, queue_delay_us: int, instances: int = 1, kind: str = "KIND_GPU",
                  repo_hint: str = "REPO") -> str:
    if max_batch < 1:
        raise ConfigError("max batch must be >= 1")
    if kind not in KINDS:
        raise ConfigError(f"instance kind must be one of {', '.join(KINDS)}, not {kind!r}")
    template = resources.files("deploy").joinpath("triton/config.pbtxt.in").read_text()
    return template.format(name=name, product=product, model_version=model_version, threshold=repr(float(threshold)),
                           height=int(input_hw[0]), width=int(input_hw[1]), max_batch=int(max_batch),
                           preferred=", ".join(str(b) for b in preferred_batch_sizes(max_batch)),
                           queue_delay_us=int(queue_delay_us), instances=int(instances), kind=kind,
                           repo_hint=repo_hint)


def write_triton_repo(model_dir: str | Path, repo: str | Path, product: str | None = None, version: int = 1,
                      max_batch: int = 16, queue_delay_us: int = 2000, instances: int = 1,
                      kind: str = "KIND_GPU") -> Path:
    """Export (or reuse) the model's ONNX graph into ``repo`` and return the model's folder."""
    if version < 1:
        raise ConfigError("Triton model versions are integers >= 1")
    meta = read_model_meta(model_dir)
    product = product or str((meta.config.get("categories") or [meta.path.name])[0]).replace("/", "_")
    name = triton_model_name(product)
    Path(repo).mkdir(parents=True, exist_ok=True)
    folder = child_path(repo, name, kind="Triton model name", max_len=255)
    vdir = folder / str(int(version))
    vdir.mkdir(parents=True, exist_ok=True)
    src = export_onnx(meta.path)
    tmp = vdir / "model.onnx.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, vdir / "model.onnx")
    cfg = render_config(name, product, meta.version, meta.threshold, meta.input_hw, max_batch, queue_delay_us,
                        instances, kind, repo_hint=str(Path(repo)))
    (folder / "config.pbtxt").write_text(cfg)
    return folder
