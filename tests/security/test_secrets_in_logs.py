"""A real consumer run with passwords in the database and Redis URLs and a SASL password in the
environment: DEBUG logs (start-up, batches, an outage, a fatal connection error) never contain them."""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis
from sqlalchemy.engine import make_url

from tests.reliability.conftest import REPO, Camera, Rig, fault_services, rig, tiny_model  # noqa: F401 - fixtures

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

DB_PW = "db-S3cr3t-7f1"
REDIS_PW = "redis-S3cr3t-9a2"
SASL_PW = "sasl-S3cr3t-4c8"


def _reset_redis(url: str) -> None:
    for pw in (REDIS_PW, None):
        try:
            client = redis.Redis.from_url(url, password=pw)
            client.config_set("maxmemory", 0)
            client.config_set("requirepass", "")
            return
        except redis.RedisError:
            continue


def test_consumer_logs_never_contain_secrets(rig: Rig) -> None:  # noqa: F811
    r = redis.Redis.from_url(rig.settings.cache_url)
    r.config_set("requirepass", REDIS_PW)
    try:
        db = make_url(rig.settings.resolved_db_url).set(password=DB_PW)  # trust auth: any password is accepted
        cache = rig.settings.cache_url.replace("redis://", f"redis://:{REDIS_PW}@")
        rig.settings = rig.settings.with_overrides(db_url=db.render_as_string(hide_password=False), cache_url=cache)
        rig.start_consumer(extra_env={"LINEINSPECT_LOG_LEVEL": "DEBUG", "LINEINSPECT_KAFKA_SASL_PASSWORD": SASL_PW,
                                      "LINEINSPECT_KAFKA_SASL_USERNAME": "li"})
        r2 = redis.Redis.from_url(cache)
        # A cache outage from the start (so it cannot race a fast consumer): its error path logs the cache
        # URL's host; results are still stored and committed.
        r2.config_set("maxmemory", 1)
        cam = Camera(rig.settings, rig.product, 48, fps=48.0)
        cam.start()
        rig.wait_for(lambda: "cache update failed" in rig.log_text(), 60, "a cache failure to be logged")
        r2.config_set("maxmemory", 0)
        assert cam.done.wait(60)
        rig.wait_for(lambda: rig.stored_count() >= 48, 120, "all frames stored")
        assert rig.stop_consumers() == [0]
    finally:
        _reset_redis(rig.services.urls["redis"])
    log = rig.log_text()
    # DEBUG per-batch lines and the error path were both logged (the per-batch line's wording is not the point)
    assert ("batch done" in log or "batch stored" in log) and "cache update failed" in log
    for secret in (DB_PW, REDIS_PW, SASL_PW):
        assert secret not in log, f"{secret} leaked into the consumer log"


def _cli_unreachable(tmp_path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "lineinspect.cli", "--log-level", "DEBUG", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LINEINSPECT_HOME": str(tmp_path),
                               "LINEINSPECT_KAFKA_SASL_PASSWORD": SASL_PW, **(env or {})})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    return out


def test_fatal_connection_errors_do_not_print_the_password(tmp_path) -> None:
    db = f"postgresql+psycopg://li:{DB_PW}@127.0.0.1:1/li?password={DB_PW}"
    # The database unreachable: its error line names it, with both password forms masked.
    out = _cli_unreachable(tmp_path, "db-upgrade", env={"LINEINSPECT_DB_URL": db})
    assert "postgresql is not reachable" in out and "li:***@127.0.0.1:1" in out and "password=***" in out
    assert DB_PW not in out and SASL_PW not in out
    # consume with every service unreachable: the bus is opened first and named; no password appears.
    out = _cli_unreachable(tmp_path, "consume", "--db", db, "--bus", "kafka://127.0.0.1:1", "--max-frames", "1")
    assert "kafka" in out and "not reachable" in out and "deploy/services.sh start kafka" in out
    assert DB_PW not in out and SASL_PW not in out
