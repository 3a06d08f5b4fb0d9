"""Model files are verified before they serve: checksums from the registry and the model dir, no pickle code.

* a weights file changed after registration is refused by the router (``registry.verify``) with a
  message naming the file and both hashes; the engine is never built and the product stays unrouted;
* a weights file whose ``checksums.json`` was forged along with it still cannot run code:
  ``torch.load(weights_only=True)`` refuses pickled objects;
* an intact version routes normally (so the refusals above are not the router failing anyway).
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.engines.base import EngineOutput
from inference.model.backbones import file_sha256
from inference.model_dir import ModelDirError, load_model_dir, save_model_dir
from inference.router import ModelHeld, ModelRouter
from lineinspect.settings import Settings
from storage.registry import ChecksumMismatch, ModelRegistry
from storage.store import ResultStore


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model: integrity checks do not care what it scores."""
    from inference.model.inp_former import InpConfig, InpFormer

    torch.manual_seed(0)
    model = InpFormer(InpConfig(input_hw=(64, 64), width=32, head_dim=32, decoder_blocks=2, n_inps=2))
    return save_model_dir(tmp_path_factory.mktemp("model") / "m", model, {}, {"threshold": 0.5})


def copy_dir(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


class _Payload:
    """Unpickling this would create ``marker``: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_changed_weights_fail_the_model_dir_checksum(model_dir: Path, tmp_path: Path) -> None:
    d = copy_dir(model_dir, tmp_path / "m")
    with open(d / "weights.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelDirError, match="weights.pt fails its checksum"):
        load_model_dir(d)


def test_pickled_code_never_runs_even_with_a_forged_checksum(model_dir: Path, tmp_path: Path) -> None:
    d = copy_dir(model_dir, tmp_path / "m")
    marker = tmp_path / "pwned"
    state = torch.load(d / "weights.pt", weights_only=True)
    state["evil"] = _Payload(marker)
    torch.save(state, d / "weights.pt")
    (d / "checksums.json").write_text(json.dumps({"weights.pt": file_sha256(d / "weights.pt")}))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_model_dir(d)
    assert not marker.exists()


class _CountingFactory:
    def __init__(self) -> None:
        self.built: list[str] = []

    def __call__(self, info) -> object:
        self.built.append(info.version)

        class _Engine:
            name = "fake"

            def infer(self, product: str, images: list[np.ndarray]) -> EngineOutput:
                n = len(images)
                return EngineOutput(np.zeros(n, np.float32), np.zeros((n, 8, 8), np.float32), "?", 0.5)

            def close(self) -> None:
                pass

        return _Engine()


@pytest.fixture()
def registry(tmp_path: Path) -> ModelRegistry:
    store = ResultStore.open(f"sqlite:///{(tmp_path / 'reg.sqlite').as_posix()}")
    yield ModelRegistry(store, tmp_path / "models")
    store.close()


def test_router_refuses_a_tampered_version_and_serves_an_intact_one(
        registry: ModelRegistry, model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(home=tmp_path)
    for product in ("good", "tampered"):
        registry.promote(product, registry.register(product, model_dir))
    weights = registry.active("tampered").weights_path
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")  # same size, one byte changed
    factory = _CountingFactory()
    caplog.set_level(logging.ERROR, logger="inference.router")
    router = ModelRouter(settings, registry, engine_factory=factory, poll_s=0, start=False)
    try:
        assert router.products() == {"good": "v0001"}
        assert factory.built == ["v0001"]  # the tampered version never reached an engine
        messages = " ".join(str(getattr(r, "kv", "")) + r.getMessage() for r in caplog.records)
        assert "tampered" in messages and "file replaced or corrupted" in messages
        with pytest.raises(ModelHeld, match="tampered"):  # held (frames wait), never scored zero-shot
            router.infer("tampered", [np.zeros((32, 32, 3), np.uint8)])
        assert set(router.held()) == {"tampered"}
        assert router.infer("good", [np.zeros((32, 32, 3), np.uint8)]).model_version == "v0001"
    finally:
        router.close()
    with pytest.raises(ChecksumMismatch):
        registry.verify(registry.active("tampered"))


def test_a_tampered_candidate_is_never_promoted(registry: ModelRegistry, model_dir: Path) -> None:
    version = registry.register("widget", model_dir)
    info = registry.get("widget", version)
    info.weights_path.write_bytes(b"not the registered weights")
    with pytest.raises(ChecksumMismatch, match="sha256"):
        registry.promote("widget", version)
    assert registry.active("widget") is None
