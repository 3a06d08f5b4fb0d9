"""The promotion gate: may a freshly trained version replace the active one?

Pure functions over scores, so the decision is testable without models. Both versions are scored
on the *same* held-back slice (normal images neither of them trained on, plus labelled anomalies
when there are any); each is judged at its *own* threshold, because that is how it would serve.

* Absolute sanity, for every candidate: all scores finite, threshold finite and > 0, false-positive
  rate on the held-back normals at most ``max_fpr``.
* Against the active version (when there is one): the FPR must not rise by more than
  ``fpr_tolerance``; with anomalies, image AUROC must not drop by more than ``auroc_tolerance``
  and the recall at the own threshold must not drop by more than ``recall_tolerance``.

A first version (no active one) is promoted on the absolute checks alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from training import metrics


@dataclass(frozen=True)
class GatePolicy:
    max_fpr: float = 0.10            # absolute bound on held-back normal FPR
    fpr_tolerance: float = 0.02      # allowed FPR rise vs the active version
    auroc_tolerance: float = 0.01    # allowed image-AUROC drop vs the active version
    recall_tolerance: float = 0.05   # allowed drop of anomaly recall at the own threshold

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not (0.0 <= v <= 1.0):
                raise ValueError(f"GatePolicy.{k} must be in [0, 1], not {v}")


@dataclass(frozen=True)
class Evaluation:
    """One version's numbers on the held-back slice (plain floats; ``None`` = not measurable)."""

    threshold: float
    n_normal: int
    n_anomalous: int
    fpr: float | None                 # share of held-back normals scored >= threshold
    recall: float | None              # share of anomalies scored >= threshold
    auroc: float | None               # image AUROC normals vs anomalies
    finite: bool                      # every score finite
    normal_p50: float | None = None
    normal_max: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_scores(normal_scores: Sequence[float] | np.ndarray, anomaly_scores: Sequence[float] | np.ndarray,
                    threshold: float) -> Evaluation:
    """Summarise one version's scores at its threshold (the verdict rule is ``score >= threshold``)."""
    n = np.asarray(normal_scores, dtype=np.float64).reshape(-1)
    a = np.asarray(anomaly_scores, dtype=np.float64).reshape(-1)
    finite = bool(np.isfinite(n).all() and np.isfinite(a).all())
    fpr = float((n >= threshold).mean()) if n.size and finite else None
    recall = float((a >= threshold).mean()) if a.size and finite else None
    auroc = None
    if n.size and a.size and finite:
        labels = np.concatenate([np.zeros(n.size, np.int64), np.ones(a.size, np.int64)])
        auroc = float(metrics.image_auroc(labels, np.concatenate([n, a])))
    return Evaluation(threshold=float(threshold), n_normal=int(n.size), n_anomalous=int(a.size), fpr=fpr,
                      recall=recall, auroc=auroc, finite=finite,
                      normal_p50=float(np.median(n)) if n.size and finite else None,
                      normal_max=float(n.max()) if n.size and finite else None)


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str] = field(default_factory=list)   # why not (empty when promoted)
    notes: list[str] = field(default_factory=list)     # what was checked, for the record

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "passed: " + "; ".join(self.notes)

    def to_dict(self) -> dict:
        return {"promote": self.promote, "reasons": list(self.reasons), "notes": list(self.notes)}


def decide(candidate: Evaluation, active: Evaluation | None, policy: GatePolicy = GatePolicy()) -> GateDecision:
    """Promote ``candidate`` only if it is sane and (when ``active`` exists) not worse on the same slice."""
    reasons: list[str] = []
    notes: list[str] = []
    if not candidate.finite:
        reasons.append("candidate produced non-finite scores")
    if not (math.isfinite(candidate.threshold) and candidate.threshold > 0):
        reasons.append(f"candidate threshold {candidate.threshold!r} is not a finite positive number")
    if candidate.n_normal == 0:
        reasons.append("no held-back normal images to check the candidate on")
    if candidate.fpr is not None:
        if candidate.fpr > policy.max_fpr:
            reasons.append(f"held-back FPR {candidate.fpr:.3f} > bound {policy.max_fpr:.3f}")
        else:
            notes.append(f"held-back FPR {candidate.fpr:.3f} <= {policy.max_fpr:.3f}")
    if active is None:
        if not reasons:
            notes.append("first version of the product: absolute checks only")
        return GateDecision(not reasons, reasons, notes)
    if not candidate.finite:
        return GateDecision(False, reasons, notes)

    if active.n_normal != candidate.n_normal or active.n_anomalous != candidate.n_anomalous:
        reasons.append(f"versions were scored on different slices ({candidate.n_normal}+{candidate.n_anomalous} "
                       f"vs {active.n_normal}+{active.n_anomalous} images)")
    if not active.finite:
        notes.append("active version produced non-finite scores: no comparison, absolute checks only")
        return GateDecision(not reasons, reasons, notes)
    _compare("held-back FPR rose", "FPR", active.fpr, candidate.fpr, policy.fpr_tolerance, 3, rising_is_worse=True,
             reasons=reasons, notes=notes)
    _compare("image AUROC fell", "AUROC", active.auroc, candidate.auroc, policy.auroc_tolerance, 4,
             rising_is_worse=False, reasons=reasons, notes=notes)
    _compare("anomaly recall at threshold fell", "recall", active.recall, candidate.recall, policy.recall_tolerance, 3,
             rising_is_worse=False, reasons=reasons, notes=notes)
    if candidate.n_anomalous == 0:
        notes.append("no labelled anomalies: compared on normal FPR only")
    return GateDecision(not reasons, reasons, notes)


def _compare(worse: str, name: str, before: float | None, after: float | None, tolerance: float, digits: int, *,
             rising_is_worse: bool, reasons: list[str], notes: list[str]) -> None:
    """One metric of the candidate against the active version: a reason when it got worse by more than
    ``tolerance``, else a note of the change. Skipped when either side lacks the metric."""
    if before is None or after is None:
        return
    change = (after - before) if rising_is_worse else (before - after)
    if change > tolerance:
        sign = "+" if rising_is_worse else "-"
        reasons.append(f"{worse} {before:.{digits}f} -> {after:.{digits}f} (tolerance {sign}{tolerance:.{digits}f})")
    else:
        notes.append(f"{name} {before:.{digits}f} -> {after:.{digits}f}")
