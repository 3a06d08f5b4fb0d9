"""Incremental defect-family clustering: leader clustering on cosine distance with running centroids.

In lineinspect/ (not inference/) because storage/ runs it inside its write transaction and storage
must not depend on the inference package.

Pure (numpy only, no I/O): the store loads a product's families, this module assigns new region
embeddings, and the store writes the result back. No number of families is given up front:

* **Assign.** A unit embedding joins the family whose centroid is nearest in cosine distance
  ``d = 1 - cos`` when ``d < threshold``; the family's centroid becomes the running mean of its
  members (kept as a sum direction, renormalised). Otherwise it founds a new family.
* **Threshold from the data** (:func:`fit_threshold`): ``threshold = factor x median`` of the
  nearest-neighbour cosine distances of the product's first ``warmup`` embeddings (default factor
  2.0). A young family's centroid is a member, so a newcomer's distance to it is a member-to-member
  distance, and in 64-128 dimensions those concentrate near the nearest-neighbour distance; a
  threshold *at* the median NN distance (factor 1) turns half of a family's second members into new
  families (the separable-blob unit test shows it), twice it admits them and still sits far below
  the distance between different defect types. Clipped to ``[0.02, 0.6]`` so a degenerate warm-up
  (duplicates, or all regions unrelated) cannot make every region its own family or one family of
  everything.
* **Merge.** Running centroids move; after an update, any two families whose centroids are closer
  than ``merge_ratio x threshold`` (default 0.5) are merged into the older one (lower id), which
  keeps its name, or takes the younger one's name when it has none. Merges are reported so the
  store can relabel the members.

Names belong to a family id, so a new member of a named family carries that name.
Order matters (it is online): the benchmark reports the spread over shuffled orders.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

THRESHOLD_MIN = 0.02
THRESHOLD_MAX = 0.6


@dataclass
class Family:
    """One family of a product: ``total`` is the (unnormalised) sum of its members' unit vectors."""

    id: int
    total: np.ndarray
    count: int
    name: str | None = None
    merged_into: int | None = None

    @property
    def centroid(self) -> np.ndarray:
        return unit(self.total)


@dataclass
class Assignment:
    family_id: int
    distance: float            # cosine distance to the family's centroid before the update (0 for a new family)
    new_family: bool


@dataclass
class FamilyClusterer:
    """Online leader clustering of one product's region embeddings (see the module docstring)."""

    threshold: float
    families: list[Family] = field(default_factory=list)
    merge_ratio: float = 0.5
    merges: list[tuple[int, int]] = field(default_factory=list)   # (absorbed id, kept id), in order

    def __post_init__(self) -> None:
        if not (0.0 < self.threshold < 2.0) or not np.isfinite(self.threshold):
            raise ValueError(f"threshold must be a cosine distance in (0, 2), got {self.threshold!r}")
        if not (0.0 <= self.merge_ratio < 1.0):
            raise ValueError(f"merge_ratio must be in [0, 1), got {self.merge_ratio!r}")

    @property
    def live(self) -> list[Family]:
        return [f for f in self.families if f.merged_into is None]

    def next_id(self) -> int:
        return max((f.id for f in self.families), default=0) + 1

    def assign(self, x: np.ndarray) -> Assignment:
        """Put one embedding in a family (creating one if none is close enough); may merge families."""
        v = unit(np.asarray(x, dtype=np.float64).ravel())
        live = self.live
        if live:
            cents = np.stack([f.centroid for f in live])
            d = 1.0 - cents @ v
            j = int(np.argmin(d))
            if d[j] < self.threshold:
                fam = live[j]
                fam.total = fam.total + v
                fam.count += 1
                self._merge_around(fam)
                return Assignment(self.resolve(fam.id), float(d[j]), False)
        fam = Family(self.next_id(), v.copy(), 1)
        self.families.append(fam)
        return Assignment(fam.id, 0.0, True)

    def resolve(self, family_id: int) -> int:
        """The live family an id ended up in after merges."""
        by_id = {f.id: f for f in self.families}
        seen = set()
        while (f := by_id[family_id]).merged_into is not None and family_id not in seen:
            seen.add(family_id)
            family_id = f.merged_into
        return family_id

    def name_of(self, family_id: int) -> str | None:
        return {f.id: f for f in self.families}[self.resolve(family_id)].name

    def _merge_around(self, fam: Family) -> None:
        limit = self.merge_ratio * self.threshold
        changed = True
        while changed:
            changed = False
            for other in self.live:
                if other.id == fam.id:
                    continue
                if 1.0 - float(fam.centroid @ other.centroid) < limit:
                    keep, gone = (fam, other) if fam.id < other.id else (other, fam)
                    keep.total = keep.total + gone.total
                    keep.count += gone.count
                    if keep.name is None:
                        keep.name = gone.name
                    gone.merged_into = keep.id
                    self.merges.append((gone.id, keep.id))
                    fam = keep
                    changed = True
                    break


def unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n == 0.0:
        raise ValueError("embedding is zero or not finite")
    return v / n


def nearest_neighbour_distances(x: np.ndarray) -> np.ndarray:
    """Each row's cosine distance to its nearest other row."""
    u = np.stack([unit(r) for r in np.asarray(x, dtype=np.float64)])
    d = 1.0 - u @ u.T
    np.fill_diagonal(d, np.inf)
    return d.min(axis=1)


def fit_threshold(x: np.ndarray, factor: float = 2.0) -> float:
    """``factor x median nearest-neighbour cosine distance`` of ``x`` (>= 2 rows), clipped to
    [THRESHOLD_MIN, THRESHOLD_MAX] (why: module docstring)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 embeddings to set a threshold, got shape {x.shape}")
    if factor <= 0:
        raise ValueError(f"factor must be > 0, got {factor!r}")
    t = factor * float(np.median(nearest_neighbour_distances(x)))
    return float(np.clip(t, THRESHOLD_MIN, THRESHOLD_MAX))


def cluster(x: np.ndarray, threshold: float | None = None, factor: float = 2.0, merge_ratio: float = 0.5,
            warmup: int = 20) -> np.ndarray:
    """Batch helper (benchmark, tests): labels of every row after one online pass in row order,
    with merges applied; when not given, the threshold comes from the first ``warmup`` rows, as in
    production (:mod:`storage.families`)."""
    x = np.asarray(x, dtype=np.float64)
    thr = threshold if threshold is not None else fit_threshold(x[:max(2, warmup)], factor)
    c = FamilyClusterer(thr, merge_ratio=merge_ratio)
    raw = [c.assign(r).family_id for r in x]
    return np.array([c.resolve(i) for i in raw])
