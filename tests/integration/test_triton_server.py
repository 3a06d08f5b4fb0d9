"""The real pytriton server: local vs Triton parity on real frames, endpoints, hot swap under load."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.engines.base import UnknownProduct
from inference.engines.onnx_engine import OnnxEngine
from inference.engines.triton_engine import TritonEngine
from tests.integration.triton_fixtures import PRODUCT, TritonUnderTest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("which", ["grpc", "http"])
def test_triton_matches_local_onnx_on_real_frames(triton_server: TritonUnderTest, which: str) -> None:
    tut = triton_server
    frames = tut.model.normal + tut.model.anomalous
    local = OnnxEngine(tut.active[PRODUCT].model_dir, threads=2).infer(PRODUCT, frames)
    eng = TritonEngine(tut.grpc_url if which == "grpc" else tut.http_url)
    try:
        remote = eng.infer(PRODUCT, frames + frames[:3])  # 11 frames > max batch 8: two requests
    finally:
        eng.close()
    assert remote.maps.shape == (11, 128, 128) and remote.scores.shape == (11,)
    map_diff = float(np.abs(remote.maps[:8] - local.maps).max())
    score_diff = float(np.abs(remote.scores[:8] - local.scores).max())
    print(f"\nTriton ({which}) vs local ONNX Runtime on {len(frames)} real frames: max|map diff| {map_diff:.3g}, "
          f"max|score diff| {score_diff:.3g}")
    assert map_diff <= 1e-5 * float(np.abs(local.maps).max())
    assert score_diff <= 1e-5 * float(np.abs(local.scores).max())
    np.testing.assert_allclose(remote.scores[8:], remote.scores[:3], rtol=1e-6)
    assert remote.model_version == tut.server.slots[PRODUCT].version
    assert remote.threshold == pytest.approx(local.threshold)


def test_unknown_product_and_endpoints(triton_server: TritonUnderTest) -> None:
    tut = triton_server
    eng = TritonEngine(tut.grpc_url)
    with pytest.raises(UnknownProduct):
        eng.infer("not-served", [np.zeros((16, 16, 3), np.uint8)])
    assert eng.is_ready()
    eng.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{tut.http_port}/v2/health/live", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{tut.http_port}/v2/models/inp_ball_screw/ready", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{tut.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'nv_inference_request_success{model="inp_ball_screw"' in text


def _new_version(src: Path, dst: Path) -> Path:
    """A second, different model version (perturbed head weights) saved as a proper model dir."""
    import json

    from inference.model_dir import load_model_dir, save_model_dir

    loaded = load_model_dir(src)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # noise, not a scale: the cosine-distance map is scale-invariant
        for p in loaded.module.head.out.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * p.abs().mean())
    cfg = {k: v for k, v in loaded.config.items() if k not in ("model", "backbone", "input_hw", "preprocessing",
                                                                "format_version", "architecture")}
    save_model_dir(dst, loaded.module, cfg, {**loaded.calibration, "threshold": 0.123})
    assert json.loads((dst / "calibration.json").read_text())["threshold"] == 0.123
    return dst


def test_hot_swap_under_load_drops_nothing(triton_server: TritonUnderTest, tmp_path: Path) -> None:
    from deploy.triton_server import ActiveModel

    tut = triton_server
    old = tut.active[PRODUCT]
    new_dir = _new_version(old.model_dir, tmp_path / "v0002")
    frame = tut.model.anomalous[0]
    seen: list[tuple[str, float, float]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def client(url: str) -> None:
        eng = TritonEngine(url)
        try:
            while not stop.is_set():
                out = eng.infer(PRODUCT, [frame])
                seen.append((out.model_version, float(out.scores[0]), out.threshold))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            eng.close()

    threads = [threading.Thread(target=client, args=(u,)) for u in (tut.grpc_url, tut.http_url, tut.grpc_url)]
    for t in threads:
        t.start()
    try:
        while len(seen) < 10 and not errors:
            stop.wait(0.05)
        tut.active[PRODUCT] = ActiveModel(PRODUCT, "v0002", new_dir)
        assert tut.server.poll_once() == [PRODUCT]
        n_at_swap = len(seen)
        while len(seen) < n_at_swap + 10 and not errors:
            stop.wait(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        tut.active[PRODUCT] = old
        tut.server.poll_once()
    assert not errors, errors
    versions = [v for v, _, _ in seen]
    assert set(versions) == {"v0001", "v0002"}
    by_version = {v: {round(s, 5) for vv, s, _ in seen if vv == v} for v in ("v0001", "v0002")}
    assert all(len(s) == 1 for s in by_version.values()), by_version  # each version scores one way
    assert by_version["v0001"] != by_version["v0002"]
    local_new = OnnxEngine(new_dir, threads=2).infer(PRODUCT, [frame])
    assert float(local_new.scores[0]) == pytest.approx(next(iter(by_version["v0002"])), rel=1e-5)
    assert all(t == pytest.approx(0.123) for v, _, t in seen if v == "v0002")  # the new version's threshold
    assert tut.server.slots[PRODUCT].version == "v0001"  # swapped back for the other tests
