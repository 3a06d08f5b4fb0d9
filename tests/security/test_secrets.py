"""Secrets come only from the environment or ``*_FILE`` files, reach the clients, and never reach a log line."""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from lineinspect.logs import kv, setup_logging
from lineinspect.secrets import env_secret, fill_secret_files, known_secrets, url_password
from lineinspect.settings import ConfigError, Settings, load_settings, redact_url
from storage.db import resolve_url

PW = "s3cr3t-Pa55"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("LINEINSPECT_") and ("PASSWORD" in name or "SASL" in name or name.endswith("_URL")):
            monkeypatch.delenv(name)


def secret_file(tmp_path: Path, value: str) -> str:
    p = tmp_path / f"secret-{len(list(tmp_path.iterdir()))}"
    p.write_text(value + "\n", encoding="utf-8")
    p.chmod(0o600)
    return str(p)


# --- where secrets come from -----------------------------------------------------------------------
def test_env_secret_prefers_the_variable_then_the_file(tmp_path: Path) -> None:
    path = secret_file(tmp_path, PW)
    assert env_secret("X_PW", {"X_PW_FILE": path}) == PW
    assert env_secret("X_PW", {"X_PW": "direct", "X_PW_FILE": path}) == "direct"
    assert env_secret("X_PW", {}) is None
    (tmp_path / "empty").write_text("")
    assert env_secret("X_PW", {"X_PW_FILE": str(tmp_path / "empty")}) == ""
    with pytest.raises(ConfigError, match="X_PW_FILE .*nope"):
        env_secret("X_PW", {"X_PW_FILE": str(tmp_path / "nope")})


def test_settings_secret_fields_accept_file_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINEINSPECT_KAFKA_SASL_PASSWORD_FILE", secret_file(tmp_path, PW))
    monkeypatch.setenv("LINEINSPECT_DASHBOARD_PASSWORD_FILE", secret_file(tmp_path, "dash-pw"))
    s = load_settings()
    assert isinstance(s.kafka_sasl_password, SecretStr) and s.kafka_sasl_password.get_secret_value() == PW
    assert s.dashboard_password.get_secret_value() == "dash-pw"
    assert PW not in repr(s) and PW not in str(s.safe_dict())
    assert s.with_overrides(log_level="DEBUG").kafka_sasl_password.get_secret_value() == PW
    monkeypatch.setenv("LINEINSPECT_KAFKA_SASL_PASSWORD", "from-env")  # an explicit value wins over the file
    assert load_settings().kafka_sasl_password.get_secret_value() == "from-env"


def test_unreadable_secret_file_is_a_clear_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINEINSPECT_DASHBOARD_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="LINEINSPECT_DASHBOARD_PASSWORD_FILE"):
        load_settings()


def test_fill_secret_files_only_touches_unset_secret_fields(tmp_path: Path) -> None:
    env = {"LINEINSPECT_A_FILE": secret_file(tmp_path, PW), "LINEINSPECT_B_FILE": secret_file(tmp_path, PW)}
    out = fill_secret_files({"a": None, "b": "given", "c": None}, ["a", "b"], env)
    assert out == {"a": PW, "b": "given", "c": None}
    assert fill_secret_files("not a dict", ["a"], env) == "not a dict"


def test_safe_dict_and_redaction_hide_every_secret() -> None:
    s = Settings(db_url=f"postgresql+psycopg://li:{PW}@db:5432/li", cache_url=f"redis://:{PW}@cache:6379/0",
                 bus_url="kafka://broker:9092", kafka_sasl_password=SecretStr(PW), dashboard_password=SecretStr(PW))
    assert PW not in str(s.safe_dict()) and PW not in repr(s)
    assert redact_url(f"postgresql+psycopg://li:{PW}@db/li") == "postgresql+psycopg://li:***@db/li"
    assert known_secrets(s, {}) == [PW]
    assert url_password("redis://:p%40ss@h:1/0") == "p@ss" and url_password("memory://") is None


def test_log_lines_never_carry_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    setup_logging("DEBUG")
    monkeypatch.setattr(sys, "stderr", buf)  # the handler writes to the sys.stderr of the moment
    log = logging.getLogger("lineinspect.test")
    url = f"postgresql+psycopg://li:{PW}@db:5432/li"
    log.info("connecting to %s", url)
    log.warning("retrying", extra=kv(url=f"redis://:{PW}@cache:6379/0", cause=f"sasl_plain_password={PW}"))
    try:
        raise RuntimeError(f"could not connect to {url} password={PW}")
    except RuntimeError:
        log.exception("failed")
    text = buf.getvalue()
    assert "connecting to" in text and "retrying" in text and "RuntimeError" in text
    assert PW not in text


# --- secrets and TLS reach the clients ---------------------------------------------------------------
def test_postgres_password_from_file_and_tls_options_reach_the_driver(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINEINSPECT_DB_PASSWORD_FILE", secret_file(tmp_path, PW))
    url = resolve_url("postgresql+psycopg://li@db:5432/li?sslmode=verify-full&sslrootcert=/etc/ca.pem")
    assert url.password == PW
    assert dict(url.query) == {"sslmode": "verify-full", "sslrootcert": "/etc/ca.pem"}
    assert PW not in repr(url)  # SQLAlchemy masks it too
    assert resolve_url("postgresql+psycopg://li:inline@db/li").password == "inline"  # the URL's own wins


@pytest.fixture()
def no_ping(monkeypatch: pytest.MonkeyPatch) -> None:
    """RedisCache pings at construction; these tests check the client's kwargs, not a server."""
    monkeypatch.setattr(redis.Redis, "ping", lambda self, **kw: True)


def test_redis_password_from_file_and_tls_reach_the_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           no_ping: None) -> None:
    from storage.redis_cache import RedisCache

    monkeypatch.setenv("LINEINSPECT_REDIS_PASSWORD_FILE", secret_file(tmp_path, PW))
    plain = RedisCache("redis://cache:6379/0")
    kw = plain._r.connection_pool.connection_kwargs
    assert kw["password"] == PW and plain._r.connection_pool.connection_class is redis.Connection
    tls = RedisCache("rediss://cache:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem")
    assert tls._r.connection_pool.connection_class is redis.SSLConnection
    tkw = tls._r.connection_pool.connection_kwargs
    assert tkw["password"] == PW and tkw["ssl_ca_certs"] == "/etc/ca.pem"
    inline = RedisCache("redis://:inline@cache:6379/0")
    assert inline._r.connection_pool.connection_kwargs["password"] == "inline"
    assert PW not in repr(plain) and "inline" not in repr(inline)


def test_kafka_sasl_ssl_settings_reach_every_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kafka

    from ingest.bus.kafka import KafkaBatchConsumer, KafkaPublisher, security_config

    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("LINEINSPECT_KAFKA_SASL_PASSWORD_FILE", secret_file(tmp_path, PW))
    s = load_settings(bus_url="kafka://broker:9093", kafka_security_protocol="SASL_SSL",
                      kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="li", kafka_ssl_cafile=ca)
    want = {"security_protocol": "SASL_SSL", "ssl_cafile": str(ca), "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "li", "sasl_plain_password": PW}
    assert security_config(s) == want
    seen: list[dict] = []

    class Capture:
        def __init__(self, *args: object, **kw: object) -> None:
            seen.append(kw)

        def subscribe(self, *a: object, **kw: object) -> None:
            pass

        def partitions_for_topic(self, topic: str) -> set[int]:
            return {0}

    monkeypatch.setattr(kafka, "KafkaProducer", Capture)
    monkeypatch.setattr(kafka, "KafkaConsumer", Capture)
    KafkaPublisher(s, create_topics=False)
    KafkaBatchConsumer(s, create_topics=False)
    assert len(seen) == 3  # publisher, consumer, dead-letter producer
    for kw in seen:
        assert {k: kw.get(k) for k in want} == want
    assert security_config(s.with_overrides(kafka_security_protocol="PLAINTEXT")) == {"security_protocol": "PLAINTEXT"}


def test_kafka_sasl_without_credentials_is_a_config_error() -> None:
    from ingest.bus.kafka import security_config

    s = Settings(bus_url="kafka://b:9093", kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN")
    with pytest.raises(ConfigError, match="SASL_USERNAME"):
        security_config(s)


def test_log_handler_follows_the_current_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler bound to a stream that was later closed (a test capture, a daemon's detached
    terminal) loses records; ours resolves sys.stderr when it writes, and keeps other handlers."""
    other = logging.NullHandler()
    logging.getLogger().addHandler(other)
    try:
        first = io.StringIO()
        monkeypatch.setattr(sys, "stderr", first)
        setup_logging("INFO")
        first.close()
        second = io.StringIO()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("lineinspect.test").info("after the swap", extra=kv(n=1))
        assert "after the swap" in second.getvalue()
        assert other in logging.getLogger().handlers
        setup_logging("INFO")
        ours = [h for h in logging.getLogger().handlers if type(h).__name__ == "_StderrHandler"]
        assert len(ours) == 1
    finally:
        logging.getLogger().removeHandler(other)
