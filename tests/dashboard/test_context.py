"""Sidebar time windows, Triton health URL derivation and the readiness probe."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dashboard import context, data
from lineinspect.settings import Settings


class _Triton(BaseHTTPRequestHandler):
    ready = True

    def do_GET(self) -> None:
        ok = self.path == "/v2/health/ready" and type(self).ready
        self.send_response(200 if ok else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def triton_stub() -> Iterator[tuple[str, type[_Triton]]]:
    handler = type("Stub", (_Triton,), {"ready": True})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        yield f"127.0.0.1:{srv.server_address[1]}", handler
    finally:
        srv.shutdown()
        srv.server_close()


def test_time_window_presets() -> None:
    assert context.time_window("All time", "now", 1000.0, None) == (None, None)
    assert context.time_window("Last hour", "now", 10_001.0, None) == (10_010.0 - 3600, 10_010.0)
    assert context.time_window("Last 24 hours", "newest result", 0.0, 5000.0) == (5001.0 - 86400, 5001.0)
    assert context.time_window("Last hour", "newest result", 0.0, None) == (None, None)
    with pytest.raises(ValueError):
        context.time_window("Last year", "now", 0.0, None)
    with pytest.raises(ValueError):
        context.time_window("Last hour", "then", 0.0, None)


def test_triton_health_url(tmp_path) -> None:
    def s(url: str) -> Settings:
        return Settings(home=tmp_path, engine_url=url, triton_http_port=8123)

    assert context.triton_health_url(s("local://auto")) is None
    assert context.triton_health_url(s("triton-http://tri:9000")) == "http://tri:9000/v2/health/ready"
    assert context.triton_health_url(s("triton-grpc://tri:8001")) == "http://tri:8123/v2/health/ready"


def test_triton_ready_probe(triton_stub) -> None:
    addr, handler = triton_stub
    assert data.triton_ready.__wrapped__(f"http://{addr}/v2/health/ready") == (True, "HTTP 200")
    handler.ready = False
    assert data.triton_ready.__wrapped__(f"http://{addr}/v2/health/ready") == (False, "HTTP 503")
    ok, detail = data.triton_ready.__wrapped__("http://127.0.0.1:9/v2/health/ready", timeout_s=0.5)
    assert not ok and detail.startswith("unreachable")


def test_health_page_reports_triton(seeded_db, make_app, monkeypatch, triton_stub) -> None:
    addr, _ = triton_stub
    url, _ = seeded_db
    monkeypatch.setenv("LINEINSPECT_ENGINE_URL", f"triton-http://{addr}")
    at = make_app(url)
    monkeypatch.setenv("LINEINSPECT_ENGINE_URL", f"triton-http://{addr}")  # make_app resets it
    at.run()
    at.switch_page("views/health.py").run()
    assert not at.exception
    assert any(f"Triton ready at http://{addr}/v2/health/ready" in s.value for s in at.success)
