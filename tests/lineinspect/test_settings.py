"""Settings: precedence (flags > environment > defaults), validation as one readable ConfigError,
derived paths, and overrides that are re-validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from lineinspect.errors import ConfigError
from lineinspect.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No LINEINSPECT_* of the developer's shell leaks into these tests."""
    import os

    for k in [k for k in os.environ if k.startswith("LINEINSPECT_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("LINEINSPECT_HOME", str(tmp_path))


def test_defaults_are_the_embedded_deployment(tmp_path: Path) -> None:
    s = load_settings()
    assert (s.bus_url, s.cache_url, s.engine_url) == ("memory://", "memory://", "local://auto")
    assert s.home == tmp_path
    assert s.resolved_db_url == f"sqlite:///{(tmp_path / 'lineinspect.sqlite').as_posix()}"
    assert s.resolved_models_dir == tmp_path / "models"


def test_flags_beat_environment_beat_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINEINSPECT_BATCH_MAX_RECORDS", "32")
    monkeypatch.setenv("LINEINSPECT_CACHE_URL", "redis://127.0.0.1:6379/0")
    s = load_settings(batch_max_records=4, cache_url=None)  # None = the flag was not given
    assert s.batch_max_records == 4 and s.cache_url == "redis://127.0.0.1:6379/0"
    assert s.batch_max_wait_ms == Settings.model_fields["batch_max_wait_ms"].default


def test_env_file_named_by_lineinspect_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = tmp_path / "site.env"
    env.write_text("LINEINSPECT_TOPIC_PARTITIONS=12\n")
    monkeypatch.setenv("LINEINSPECT_ENV_FILE", str(env))
    # load_settings reads the variable when it is called
    assert load_settings().topic_partitions == 12


@pytest.mark.parametrize(("content", "message"), [(None, "does not exist"), (b"\xff\xfe\x00bad", "UTF-8")])
def test_a_missing_or_binary_env_file_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        content: bytes | None, message: str) -> None:
    env = tmp_path / "site.env"
    if content is not None:
        env.write_bytes(content)
    monkeypatch.setenv("LINEINSPECT_ENV_FILE", str(env))
    with pytest.raises(ConfigError, match=message):
        load_settings()


@pytest.mark.parametrize(("name", "value", "where"), [
    ("LINEINSPECT_BUS_URL", "http://broker:9092", "bus_url"),
    ("LINEINSPECT_CACHE_URL", "memcached://x", "cache_url"),
    ("LINEINSPECT_ENGINE_URL", "cuda://0", "engine_url"),
    ("LINEINSPECT_BATCH_MAX_RECORDS", "0", "batch_max_records"),
    ("LINEINSPECT_FUSION_METHOD", "median", "fusion_method"),
])
def test_a_bad_environment_value_is_one_config_error_naming_it(monkeypatch: pytest.MonkeyPatch, name: str,
                                                                value: str, where: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert "LINEINSPECT_* environment" in str(e.value) and where in str(e.value)


def test_a_bad_flag_is_a_config_error_saying_command_line() -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(topic_partitions=-1)
    assert "command-line options" in str(e.value) and "topic_partitions" in str(e.value)


def test_overrides_are_revalidated_and_unknown_names_refused() -> None:
    s = Settings()
    assert s.with_overrides() is s and s.with_overrides(db_url=None) is s
    t = s.with_overrides(engine_url="triton-grpc://127.0.0.1:8001")
    assert t.engine_url == "triton-grpc://127.0.0.1:8001" and s.engine_url == "local://auto"
    with pytest.raises(ConfigError, match="unknown setting"):
        s.with_overrides(no_such_thing=1)
    with pytest.raises(ConfigError, match="command-line options") as e:  # a CLI flag's value: one readable error
        s.with_overrides(bus_url="tcp://x")
    assert "bus_url" in str(e.value) and "Traceback" not in str(e.value)


def test_kafka_bootstrap_parses_and_refuses_a_memory_bus() -> None:
    assert Settings(bus_url="kafka://a:1,b:2/").kafka_bootstrap == ["a:1", "b:2"]
    with pytest.raises(ConfigError):
        _ = Settings().kafka_bootstrap
