"""`lineinspect export` / `serve-triton`: bad Triton options are one line and exit 2, before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from lineinspect import cli


@pytest.mark.parametrize(("extra", "message"), [
    (["--max-batch", "0"], "triton_max_batch"),          # was silently replaced by the default
    (["--queue-delay-us", "-1"], "triton_queue_delay_us"),
    (["--instances", "0"], "--instances and --version must be >= 1"),  # was written into config.pbtxt
    (["--version", "0"], "--instances and --version must be >= 1"),
])
def test_bad_triton_export_options_write_nothing(extra: list[str], message: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LINEINSPECT_HOME", str(tmp_path / "home"))
    model, repo = tmp_path / "model", tmp_path / "repo"
    model.mkdir()
    rc = cli.main(["export", "--model", str(model), "--triton-repo", str(repo), "--product", "p"] + extra)
    assert rc == 2 and message in capsys.readouterr().err
    assert not repo.exists() and not (model / "model.onnx").exists()


def test_serve_triton_names_a_missing_models_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LINEINSPECT_HOME", str(tmp_path / "home"))
    assert cli.main(["serve-triton", "--models", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_triton_batching_settings_are_validated_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LINEINSPECT_TRITON_MAX_BATCH", "0")
    assert cli.main(["config"]) == 2
    assert "triton_max_batch" in capsys.readouterr().err
