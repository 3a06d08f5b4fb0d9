"""A redelivered (camera, frame id) with a DIFFERENT image is kept out (first row wins) but logged and counted."""

from __future__ import annotations

import logging

import pytest

from storage.store import ResultStore
from tests.storage.conftest import make_row


def test_same_key_other_image_is_counted_and_the_first_row_wins(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with ResultStore.open(db_url) as store:
        first = make_row(7, captured_at=1000.0)
        store.save_results([first])
        store.save_results([make_row(7, captured_at=1000.0)])  # a true redelivery: silent
        assert store.redelivery_conflicts == 0
        with caplog.at_level(logging.WARNING, logger="storage.store"):
            store.save_results([make_row(7, captured_at=2000.0)])      # another capture with the same id
            store.save_results([make_row(7, captured_at=1000.0, width=640)])  # another size
            store.save_results([make_row(8, captured_at=1.0), make_row(8, captured_at=2.0)])  # twice in one batch
        assert store.redelivery_conflicts == 3
        assert caplog.text.count("frame id reused for a different image") == 3
        got = store.get_result("cam1", 7)
        assert got is not None and got["captured_at"] == 1000.0 and got["width"] == first.width
        assert store.count_results() == 2

