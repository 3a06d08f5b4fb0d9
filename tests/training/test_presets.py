"""``lineinspect train --preset``: a named recipe, with explicit flags laid over it."""

from __future__ import annotations

from dataclasses import fields

import pytest

from inference.model.inp_former import InpConfig
from training.presets import MODEL_FIELDS, PRESETS, resolve


def test_the_clis_metric_choices_are_the_models() -> None:
    from inference.model.inp_former import MEMORY_METRICS
    from training.cli import MEMORY_METRIC_CHOICES

    assert MEMORY_METRIC_CHOICES == MEMORY_METRICS


def test_the_fallback_values_are_the_model_configs_own_defaults() -> None:
    defaults = {f.name: f.default for f in fields(InpConfig)}
    assert {k: defaults[k] for k in MODEL_FIELDS} == MODEL_FIELDS


def test_every_preset_builds_a_valid_config_and_sets_only_model_fields() -> None:
    for name, values in PRESETS.items():
        assert set(values) <= set(MODEL_FIELDS), name
        InpConfig(**resolve(name, {}))  # validates


def test_the_settings_preset_choices_are_the_presets() -> None:
    from typing import get_args

    from lineinspect.settings import Settings
    from training.presets import DEFAULT_PRESET

    assert get_args(Settings.model_fields["model_preset"].annotation) == tuple(PRESETS)
    assert Settings.model_fields["model_preset"].default == DEFAULT_PRESET == "fast"


def test_fast_is_the_pure_model_and_accurate_the_measured_memory_setting() -> None:
    assert resolve("fast", {})["memory_size"] == 0 and resolve("fast", {})["decoder_blocks"] == 4
    acc = resolve("accurate", {})
    assert (acc["memory_size"], acc["memory_metric"], acc["memory_k"], acc["memory_weight"]) == (1024, "cos+l2", 3, 2.0)
    assert acc["memory_dims"] == 0 and acc["decoder_blocks"] == 4


def test_explicit_flags_override_the_preset_and_absent_ones_do_not() -> None:
    got = resolve("accurate", {"memory_size": 512, "memory_weight": None, "memory_metric": None})
    assert got["memory_size"] == 512 and got["memory_weight"] == 2.0 and got["memory_metric"] == "cos+l2"
    assert resolve("fast", {"memory_size": 64, "memory_k": 1}) == MODEL_FIELDS | {"memory_size": 64, "memory_k": 1}


def test_unknown_presets_and_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown preset 'best'"):
        resolve("best", {})
    with pytest.raises(ValueError, match="not a preset field"):
        resolve("fast", {"head_dim": 16})
