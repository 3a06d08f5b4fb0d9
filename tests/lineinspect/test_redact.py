"""Every credential form is masked in every output: config, db-upgrade, CLI error lines, logs, reprs."""

from __future__ import annotations

import logging

import pytest

from lineinspect.cli import main
from lineinspect.logs import setup_logging
from lineinspect.redact import redact
from lineinspect.settings import Settings
from storage.store import ResultStore

SECRET = "Sup3r-s3cret"
# (URL suffix carrying the secret, how it is spelled): every form libpq, redis-py and Kafka clients accept
FORMS = {
    "userinfo": lambda base: base.replace("postgres@", f"postgres:{SECRET}@"),
    "query password": lambda base: f"{base}?password={SECRET}",
    "second parameter": lambda base: f"{base}?sslmode=disable&password={SECRET}",
    "sslpassword": lambda base: f"{base}?sslmode=disable&sslpassword={SECRET}",
    "sasl password": lambda base: f"{base}?sasl_plain_password={SECRET}",
    "token": lambda base: f"{base}?token={SECRET}",
    "access_token": lambda base: f"{base}?access_token={SECRET}&x=1",
    "api key": lambda base: f"{base}?api_key={SECRET}",
}
LIBPQ_FORMS = ("userinfo", "query password", "second parameter", "sslpassword")


@pytest.mark.parametrize("form", sorted(FORMS))
def test_redact_masks_each_form_and_keeps_the_rest(form: str) -> None:
    url = FORMS[form]("postgresql+psycopg://postgres@db.example:5432/li")
    out = redact(url)
    assert SECRET not in out and "***" in out and "db.example:5432" in out


@pytest.mark.parametrize("text", [f"password={SECRET}", f"password: {SECRET}", f'"dashboard_password": "{SECRET}"',
                                  f"host=h password='{SECRET}' dbname=x", f"kafka://h?sasl_plain_password={SECRET}",
                                  f"redis://:{SECRET}@h:6379/0", f"Authorization token={SECRET}"])
def test_redact_masks_messages_and_dsns(text: str) -> None:
    assert SECRET not in redact(text)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_config_prints_no_secret(form: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                 tmp_path) -> None:
    monkeypatch.setenv("LINEINSPECT_HOME", str(tmp_path))
    monkeypatch.setenv("LINEINSPECT_DB_URL", FORMS[form]("postgresql+psycopg://postgres@h:5432/li"))
    monkeypatch.setenv("LINEINSPECT_CACHE_URL", f"redis://h:6379/0?password={SECRET}")
    monkeypatch.setenv("LINEINSPECT_BUS_URL", f"kafka://h:9092?sasl_plain_password={SECRET}")
    for argv in (["config"], ["config", "--json"]):
        assert main(argv) == 0
        out = capsys.readouterr()
        assert SECRET not in out.out + out.err and "***" in out.out


@pytest.mark.parametrize("form", sorted(FORMS))
def test_the_connection_error_line_prints_no_secret(form: str, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture, tmp_path) -> None:
    monkeypatch.setenv("LINEINSPECT_HOME", str(tmp_path))
    monkeypatch.setenv("LINEINSPECT_DB_URL", FORMS[form]("postgresql+psycopg://postgres@127.0.0.1:1/li"))
    assert main(["db-upgrade"]) != 0
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    if form in LIBPQ_FORMS:  # options libpq accepts reach the connection attempt and fail there
        assert "not reachable" in out.err


@pytest.mark.integration
@pytest.mark.parametrize("form", ["userinfo", "query password", "second parameter"])
def test_db_upgrade_prints_no_secret(form: str, pg_url: str, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture, tmp_path) -> None:
    monkeypatch.setenv("LINEINSPECT_HOME", str(tmp_path))
    monkeypatch.setenv("LINEINSPECT_DB_URL", FORMS[form](pg_url))  # the test server trusts: any password works
    assert main(["db-upgrade"]) == 0
    out = capsys.readouterr()
    assert "is at revision" in out.out and SECRET not in out.out + out.err


@pytest.mark.parametrize("form", sorted(FORMS))
def test_logs_and_reprs_carry_no_secret(form: str, capsys: pytest.CaptureFixture, tmp_path) -> None:
    url = FORMS[form]("postgresql+psycopg://postgres@h:5432/li")
    setup_logging("INFO")
    logging.getLogger("lineinspect.test").warning("connecting to %s", url, extra={"kv": {"url": url}})
    err = capsys.readouterr().err
    assert SECRET not in err and "connecting" in err
    s = Settings(home=tmp_path, db_url=url)
    assert SECRET not in repr(s) and SECRET not in str(s.safe_dict())
    assert SECRET not in _store_repr(url)


def _store_repr(url: str) -> str:
    store = ResultStore.__new__(ResultStore)
    store.url = url
    return repr(store)
