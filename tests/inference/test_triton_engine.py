"""TritonEngine without a server: URL parsing, model naming, unreachable server -> EngineUnavailable."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from inference.engines.base import EngineUnavailable
from inference.engines.triton_engine import TritonEngine, parse_engine_url, triton_model_name
from lineinspect.errors import ConfigError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_parse_engine_url() -> None:
    assert parse_engine_url("triton-grpc://127.0.0.1:8001") == ("grpc", "127.0.0.1:8001")
    assert parse_engine_url("triton-http://localhost:8000/") == ("http", "localhost:8000")
    for bad in ("grpc://h:1", "triton-grpc://h", "triton-http://:80", "local://onnx"):
        with pytest.raises(ConfigError):
            parse_engine_url(bad)


def test_model_names_are_sanitised() -> None:
    assert triton_model_name("ball_screw") == "inp_ball_screw"
    assert triton_model_name("tire.v2/left cam") == "inp_tire_v2_left_cam"
    assert triton_model_name("a-b") == "inp_a-b"
    with pytest.raises(ValueError):
        triton_model_name("")


@pytest.mark.parametrize("scheme", ["triton-grpc", "triton-http"])
def test_unreachable_server_is_engine_unavailable(scheme: str) -> None:
    eng = TritonEngine(f"{scheme}://127.0.0.1:{_free_port()}", timeout_s=3)
    with pytest.raises(EngineUnavailable, match="unreachable"):
        eng.infer("p", [np.zeros((8, 8, 3), np.uint8)])
    assert not eng.is_ready()
    eng.close()
