"""The seed is deterministic and refuses to mix with existing history."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import create_engine

from storage.seed import SeedConfig, seed_history


def test_seed_is_deterministic_and_consistent(tmp_path) -> None:
    cfg = SeedConfig(results=600, images=5)
    a = seed_history(create_engine(f"sqlite:///{tmp_path / 'a.sqlite'}"), cfg)
    b = seed_history(create_engine(f"sqlite:///{tmp_path / 'b.sqlite'}"), cfg)
    assert np.array_equal(a.score, b.score) and np.array_equal(a.captured_at, b.captured_at)
    assert np.array_equal(a.flagged, a.score > a.threshold)
    assert not (a.false_alarm & ~a.flagged).any()
    assert 0 < a.defect.sum() < a.score.size and len(a.image_result_ids) == 5
    assert a.captured_at.max() < cfg.end and a.captured_at.min() >= cfg.end - cfg.hours * 3600


def test_seed_refuses_a_non_empty_database(tmp_path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.sqlite'}")
    seed_history(engine, SeedConfig(results=50, images=0))
    with pytest.raises(ValueError, match="empty database"):
        seed_history(engine, SeedConfig(results=50, images=0))
    with pytest.raises(ValueError):
        SeedConfig(results=0)


def test_seed_command_line_migrates_and_seeds(tmp_path, capsys) -> None:
    from sqlalchemy import inspect

    from storage.seed import main

    url = f"sqlite:///{(tmp_path / 'cli.sqlite').as_posix()}"
    assert main(["--db", url, "--results", "200", "--hours", "1"]) == 0
    assert "seeded" in capsys.readouterr().out
    assert "alembic_version" in inspect(create_engine(url)).get_table_names()
