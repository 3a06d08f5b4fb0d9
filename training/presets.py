"""Named model recipes for ``lineinspect train --preset`` (and the ``model_preset`` setting): a measured setting in
one word instead of five flags.

Plain data (no torch), so building the CLI parser stays cheap. Flags given explicitly on the command line
override the preset's value for that field. Each entry's numbers are in ``benchmarks/RESULTS.md`` (quality).
"""

from __future__ import annotations

from typing import Any

# the architecture fields a preset may set, with the value ``InpConfig`` uses when neither a preset nor a flag does
MODEL_FIELDS: dict[str, Any] = {"width": 128, "decoder_blocks": 4, "memory_size": 0, "memory_weight": 1.0, "memory_k": 3,
                                "memory_metric": "l2", "memory_dims": 0}

PRESETS: dict[str, dict[str, Any]] = {
    # the pure INP-Former (4 decoder blocks): the default, and the one recipe at the 0.5x speed floor (ONNX Runtime
    # ~0.6x the encoder alone at batch 8, 2 cores); below the strongest kNN bank on all three metrics
    "fast": {},
    # INP-Former + the paired memory: a cosine bank (1-NN) and a Euclidean bank (3-NN) of 1024 normal patches each,
    # memory weight 2 - above the strongest kNN bank on all three metrics over seeds and coreset draws (3 seeds x 5
    # draws: image AUROC +0.023, pixel AUROC +0.003, AUPRO +0.010 on the mean, 12 of the 15 pairs above it on all
    # three; bench_coreset_draws.py), below the 0.5x speed floor
    "accurate": {"memory_size": 1024, "memory_metric": "cos+l2", "memory_k": 3, "memory_weight": 2.0},
}
# what `lineinspect train`, `lineinspect demo` and a product's first retraining use unless told otherwise
# (Settings.model_preset)
DEFAULT_PRESET = "fast"


def resolve(preset: str, explicit: dict[str, Any]) -> dict[str, Any]:
    """The model fields for ``preset`` with the flags the user gave (``explicit``: field -> value, None for a
    flag not given) laid over it; fields neither sets get ``MODEL_FIELDS``' defaults."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    unknown = set(explicit) - set(MODEL_FIELDS)
    if unknown:
        raise ValueError(f"not a preset field: {sorted(unknown)}")
    out = dict(MODEL_FIELDS) | PRESETS[preset]
    return out | {k: v for k, v in explicit.items() if v is not None}
