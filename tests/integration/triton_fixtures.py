"""A real pytriton server for the integration tests, started once per session and stopped cleanly.

It serves the small real-data model (see ``tests/inference/onnx_fixtures.py``) as product
``ball.screw`` from a mutable in-memory "registry", so tests can promote a new version and watch
the hot swap. Ports are free ones picked at start; everything binds to 127.0.0.1.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.inference.onnx_fixtures import RealModel, real_model  # noqa: F401 - fixture used below

PRODUCT = "ball.screw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TritonUnderTest:
    server: object                     # deploy.triton_server.TritonModelServer
    model: RealModel
    active: dict = field(default_factory=dict)   # product -> ActiveModel; edit + server.poll_once() to promote
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0

    @property
    def grpc_url(self) -> str:
        return f"triton-grpc://127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"triton-http://127.0.0.1:{self.http_port}"


@pytest.fixture(scope="session")
def triton_server(real_model: RealModel, tmp_path_factory: pytest.TempPathFactory) -> TritonUnderTest:  # noqa: F811
    import shutil

    from deploy.triton_server import ActiveModel, ServerConfig, TritonModelServer, wait_ready

    model_dir = tmp_path_factory.mktemp("triton-models") / "v0001"
    shutil.copytree(real_model.model_dir, model_dir)
    active = {PRODUCT: ActiveModel(PRODUCT, "v0001", Path(model_dir))}
    tut = TritonUnderTest(None, real_model, active, free_port(), free_port(), free_port())
    cfg = ServerConfig(http_port=tut.http_port, grpc_port=tut.grpc_port, metrics_port=tut.metrics_port,
                       max_batch=8, queue_delay_us=2000, threads=2, poll_s=3600)  # tests poll explicitly
    server = TritonModelServer(lambda: dict(active), cfg)
    server.start()
    tut.server = server
    try:
        if not wait_ready(f"http://127.0.0.1:{tut.http_port}", 60):
            pytest.fail("the pytriton server did not become ready within 60 s")
        yield tut
    finally:
        server.stop()
