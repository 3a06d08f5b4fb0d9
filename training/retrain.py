"""Retrain one product on its accumulated normal data, gate the result, register (and maybe promote) it.

The data is the store's ``training_samples`` of the product (clearly-normal live frames, operator
false alarms and imported seed images; deduplicated and capped by the store). One run:

1. **Snapshot** the samples: their sha256 list, counts by source and the newest sample time (the
   scheduler counts "new samples" from there). The snapshot is recorded with the version.
2. **Split** deterministically by a seeded hash of each sha256 into *train* and a *held-back*
   slice (``holdout``); the held-back slice is halved again into a *calibration* half (sets the
   threshold) and a *gate* half (compares versions). Keeping the two halves apart matters: a
   threshold calibrated on the very images it is then judged on passes the FPR check by
   construction.
3. **Train** with :func:`training.train.train` (cached features, progress bar); the threshold is
   ``quantile(threshold_quantile)`` of the calibration-half normal scores x ``threshold_margin``.
4. **Score** the gate half (and labelled anomalies, if any) with the candidate *and* the active
   version, each at its own threshold, and ask :func:`training.gate.decide`.
5. **Register** the version (data snapshot, metrics, threshold, backbone, parent = the active
   version) and promote it, or reject it with the gate's reasons.

Anomalies, when available, come from ``anomalies_dir`` (an MVTec category or test folder: every
image outside ``good`` folders; its ``test/good`` images join the gate's normals) and, only when asked (``flagged_as_anomalies``), from frames the
live system flagged ``defect`` that no operator marked as false alarms. Those are *pseudo*-labels
chosen by the active model's own scores, so they favour the active version in the comparison;
they make the gate stricter, never laxer.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inference.model.inp_former import InpConfig
from inference.model_dir import model_config
from lineinspect import model_meta
from lineinspect.errors import ConfigError
from lineinspect.logs import kv
from lineinspect.names import check_name, child_path
from storage.registry import ModelRegistry, VersionInfo
from storage.store import ResultStore, TrainingSampleRow
from training.data import IMAGE_EXTS, read_image
from training.gate import Evaluation, GateDecision, GatePolicy, decide, evaluate_scores
from training.presets import DEFAULT_PRESET, resolve

log = logging.getLogger("lineinspect.training.retrain")

_VERSION = re.compile(r"^v(\d{4,})$")
_RAW_ENCODINGS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}


class RetrainError(ConfigError):
    """A retrain that cannot run as asked (too few samples, bad folders); the message says why."""


class NotEnoughSamples(RetrainError):
    """The product has not accumulated enough normal samples yet (the scheduler records a skip)."""


class RetrainPaused(RetrainError):
    """A drift alarm is open for the product: its recent frames may be shifted, so no retraining on them
    until an operator re-baselines (the scheduler records a skip)."""


# --- data --------------------------------------------------------------------------------------

def decode_sample(data: bytes) -> np.ndarray:
    """Encoded frame bytes -> RGB uint8 (H, W, 3), with the same conversions as :func:`read_image`."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if img is None:
        raise ValueError("cannot decode a stored training sample (corrupt bytes)")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class Split:
    train: list[int]
    calibration: list[int]
    gate: list[int]


def _unit(seed: int, salt: str, sha: str) -> float:
    """A seeded, uniform-looking number in [0, 1) from a sample's sha256."""
    return int(hashlib.sha256(f"{seed}:{salt}:{sha}".encode()).hexdigest()[:15], 16) / float(16 ** 15)


def split_samples(shas: Sequence[str], holdout: float, seed: int = 0) -> Split:
    """Deterministic train / calibration / gate indices from a seeded hash of each sha256.

    A sample is held back when its hash falls below ``holdout``, so its side does not depend on
    the other samples: as data accumulates, a held-back image stays held back and never leaks
    into a later version's training set. Small sets where a part would come out empty fall back
    to the ``round(holdout * n)`` lowest hashes (at least one calibration and one gate image).
    """
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), not {holdout}")
    n = len(shas)
    if n < 4:
        raise ValueError(f"need at least 4 samples to split, have {n}")
    u = [_unit(seed, "holdout", s) for s in shas]
    held = [i for i in range(n) if u[i] < holdout]
    calib = [i for i in held if _unit(seed, "half", shas[i]) < 0.5]
    gate = [i for i in held if _unit(seed, "half", shas[i]) >= 0.5]
    if not calib or not gate or len(held) > n - 2:
        order = sorted(range(n), key=u.__getitem__)
        k = min(max(2, int(round(holdout * n))), n - 2)
        held = order[:k]
        calib, gate = sorted(held[0::2]), sorted(held[1::2])
    kept = set(held)
    return Split(train=[i for i in range(n) if i not in kept], calibration=calib, gate=gate)


@dataclass(frozen=True)
class Snapshot:
    """What a version was trained on; stored as the version's ``data_snapshot``."""

    product: str
    shas: list[str]
    sources: list[str]
    newest_sample_at: float
    taken_at: float

    @property
    def by_source(self) -> dict[str, int]:
        return dict(sorted(Counter(self.sources).items()))

    def to_dict(self, split: Split | None = None, holdout: float | None = None, seed: int | None = None) -> dict:
        d: dict[str, Any] = {"product": self.product, "n": len(self.shas), "by_source": self.by_source,
                             "newest_sample_at": self.newest_sample_at, "taken_at": self.taken_at,
                             "sha256": list(self.shas)}
        if split is not None:
            d.update({"holdout": holdout, "split_seed": seed, "n_train": len(split.train),
                      "n_calibration": len(split.calibration), "n_gate": len(split.gate),
                      "gate_sha256": [self.shas[i] for i in split.gate]})
        return d


def take_snapshot(rows: Sequence[TrainingSampleRow], product: str) -> Snapshot:
    """Sort by sha256 so the snapshot (and the split) do not depend on the store's row order."""
    ordered = sorted(rows, key=lambda r: r.sha256)
    return Snapshot(product=product, shas=[r.sha256 for r in ordered], sources=[r.source for r in ordered],
                    newest_sample_at=max((float(r.created_at) for r in ordered), default=0.0), taken_at=time.time())


def import_seed(store: ResultStore, product: str, folder: str | Path, limit: int | None = None) -> tuple[int, int]:
    """Keep a folder of normal images as ``seed`` samples; returns ``(added, already_there)``.

    ``folder`` may be an MVTec category (its ``train/good`` is used), a ``train/good`` folder or
    any folder of images (searched recursively). PNG/JPEG bytes are kept as they are; other
    formats are re-encoded as PNG.
    """
    root = Path(folder)
    if not root.is_dir():
        raise RetrainError(f"seed folder {root} does not exist")
    if (root / "train" / "good").is_dir():
        root = root / "train" / "good"
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if limit is not None:
        files = files[: int(limit)]
    if not files:
        raise RetrainError(f"no images ({', '.join(IMAGE_EXTS)}) under {root}")
    added = 0
    for p in files:
        rgb = read_image(p)  # validates the file decodes before it becomes training data
        enc = _RAW_ENCODINGS.get(p.suffix.lower())
        if enc is not None:
            data = p.read_bytes()
        else:
            enc, data = "png", _png(rgb)
        added += bool(store.add_training_sample(product, data, source="seed", encoding=enc))
    log.info("seed imported", extra=kv(product=product, folder=str(root), added=added, files=len(files)))
    return added, len(files) - added


def _png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def anomaly_files(folder: str | Path) -> list[Path]:
    """Anomalous images of an MVTec category / test folder: every image not inside a ``good`` folder."""
    root = Path(folder)
    if not root.is_dir():
        raise RetrainError(f"anomalies folder {root} does not exist")
    if (root / "test").is_dir():
        root = root / "test"
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                   and "good" not in p.relative_to(root).parts[:-1] and "ground_truth" not in p.parts)
    if not files:
        raise RetrainError(f"no anomalous images under {root} (images inside 'good' folders are normal)")
    return files


def labelled_normal_files(folder: str | Path) -> list[Path]:
    """Normal test images next to the anomalies (``test/good``): extra held-out normals for the gate."""
    root = Path(folder)
    good = root / "test" / "good" if (root / "test").is_dir() else root / "good"
    if not good.is_dir():
        return []
    return sorted(p for p in good.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def new_samples_since(store: ResultStore, product: str, info: VersionInfo | None) -> int:
    """Samples that arrived after ``info``'s data snapshot (all samples when there is no version)."""
    if info is None:
        return store.count_training_samples(product)
    newest = info.data_snapshot.get("newest_sample_at")
    since = info.created_at if newest is None else float(newest)
    return store.count_training_samples(product, since=np.nextafter(since, np.inf))


# --- scoring -----------------------------------------------------------------------------------

def score_images(model_dir: str | Path, product: str, *image_sets: Sequence[np.ndarray], kind: str = "torch",
                 threads: int = 0, batch_size: int = 16) -> tuple[list[np.ndarray], float]:
    """Image scores of each set of images from one model directory (loaded once), and its own threshold."""
    from inference.engines.local import load_local_engine

    engine = load_local_engine(model_dir, kind=kind, threads=threads)
    try:
        threshold = model_meta.describe(model_dir).threshold
        out_sets: list[np.ndarray] = []
        for images in image_sets:
            scores = [np.zeros(0)]
            for i in range(0, len(images), batch_size):
                out = engine.infer(product, list(images[i:i + batch_size]))
                scores.append(np.asarray(out.scores, dtype=np.float64).reshape(-1))
                threshold = float(out.threshold)
            out_sets.append(np.concatenate(scores))
        return out_sets, threshold
    finally:
        engine.close()


# --- the run -----------------------------------------------------------------------------------

@dataclass
class RetrainOptions:
    iters: int | None = None              # None: TrainConfig's default
    holdout: float = 0.2
    seed: int = 0
    force: bool = False                   # promote even when the gate refuses (recorded)
    min_samples: int = 20
    max_samples: int | None = None        # newest N samples only (None: all the store keeps)
    threshold_quantile: float = 0.99
    threshold_margin: float = 1.1
    policy: GatePolicy = field(default_factory=GatePolicy)
    model: InpConfig | None = None        # None: the active version's architecture, else ``preset``'s
    preset: str = DEFAULT_PRESET          # training.presets name: a product's first model (Settings.model_preset)
    train_overrides: dict = field(default_factory=dict)   # extra TrainConfig fields (batch_size, ...)
    engine_kind: str = "torch"            # engine used to score the gate slice
    threads: int = 0
    cache_dir: str | None = None
    anomalies_dir: str | None = None
    flagged_as_anomalies: bool = False
    progress: bool = True


@dataclass
class RetrainResult:
    product: str
    version: str
    status: str                           # active | candidate | rejected
    decision: GateDecision
    candidate: Evaluation
    active: Evaluation | None
    parent_version: str | None
    snapshot: dict
    seconds: float

    @property
    def promoted(self) -> bool:
        return self.status == "active"

    def describe(self) -> str:
        parent = self.parent_version or "none"
        return f"{self.product} {self.version}: {self.status} (parent {parent}) - {self.decision.summary}"


def next_version(registry: ModelRegistry, product: str) -> str:
    numbers = [int(m.group(1)) for v in registry.list(product) if (m := _VERSION.match(v.version))]
    return f"v{max(numbers, default=0) + 1:04d}"


def _model_config(active: VersionInfo | None, options: RetrainOptions) -> InpConfig:
    if options.model is not None:
        return options.model
    if active is not None:
        try:
            return model_config(model_meta.read_config(active.path), active.path)
        except (model_meta.ModelDirError, KeyError) as exc:
            log.warning("active version's config unreadable; training with the preset's architecture",
                        extra=kv(version=active.version, error=str(exc), preset=options.preset))
    return InpConfig(**resolve(options.preset, {}))


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _stamp_version(model_dir: Path, product: str, version: str) -> None:
    """Write the registry version into the model config (engines report it on every result row);
    the owner re-records the checksums so the rewritten config still verifies."""
    model_meta.stamp(model_dir, product, version)


def retrain(store: ResultStore, registry: ModelRegistry, product: str, options: RetrainOptions | None = None, *,
            candidate_dir: str | Path | None = None, lock_lost: Callable[[], bool] | None = None,
            samples: list[TrainingSampleRow] | None = None) -> RetrainResult:
    """Train (or take ``candidate_dir``), gate against the active version, register and maybe promote.

    ``candidate_dir`` gates an already trained model directory (e.g. from ``lineinspect train``)
    on the product's held-back data instead of training one. ``lock_lost`` is polled before
    promoting: a job whose lease was stolen registers its version but does not promote it.
    ``samples`` replaces the product's kept samples as the training set (a re-baseline, see
    :mod:`training.rebaseline`); without it an open drift alarm refuses the run (:class:`RetrainPaused`).
    """
    from training.train import TrainConfig, train

    check_name("product", product)  # a name from a message must never become a path outside the models dir
    opts = options or RetrainOptions()
    t0 = time.perf_counter()
    if samples is None:
        from storage.drift import DriftStore

        alarms = DriftStore.of(store).open_alarms(product)
        if alarms:
            a = alarms[-1]
            raise RetrainPaused(f"{product}: drift alarm #{a['id']} open on camera {a['camera']} since frame "
                                f"{a['onset_frame_id']} ({', '.join(a['kinds'])}); retraining pauses until a re-baseline "
                                f"(dashboard Drift page, or lineinspect models rebaseline --product {product} --since T)")
        rows = store.training_samples(product, limit=opts.max_samples)
    else:
        rows = list(samples)[: opts.max_samples] if opts.max_samples else list(samples)
    if len(rows) < max(4, opts.min_samples):
        need = max(4, opts.min_samples)
        raise NotEnoughSamples(f"{product} has {len(rows)} training samples; at least {need} are needed (let "
                               f"the line run, or import seeds: lineinspect retrain --product {product} "
                               f"--seed-from DIR)")
    snap = take_snapshot(rows, product)
    by_sha = {r.sha256: r.data for r in rows}
    del rows
    split = split_samples(snap.shas, opts.holdout, opts.seed)
    images = [decode_sample(by_sha[s]) for s in snap.shas]
    del by_sha

    anomalies: list[np.ndarray] = []
    extra_normals: list[np.ndarray] = []
    anomaly_source: list[str] = []
    if opts.anomalies_dir:
        anomalies += [read_image(p) for p in anomaly_files(opts.anomalies_dir)]
        extra_normals = [read_image(p) for p in labelled_normal_files(opts.anomalies_dir)]
        anomaly_source.append(f"{len(anomalies)} labelled anomalies and {len(extra_normals)} labelled normals "
                              f"(test/good) from {opts.anomalies_dir}")
    if opts.flagged_as_anomalies:
        flagged = [decode_sample(d) for d in store.flagged_frames(product)]
        anomalies += flagged
        anomaly_source.append(f"{len(flagged)} pseudo-anomalies (live frames flagged defect, not false alarms)")

    active = registry.active(product)
    version = next_version(registry, product)
    work = child_path(registry.models_dir / ".retrain", f"{product}-{version}-{uuid.uuid4().hex[:8]}",
                      kind="work folder", max_len=255)
    work.parent.mkdir(parents=True, exist_ok=True)
    try:
        train_info: dict[str, Any]
        if candidate_dir is None:
            cfg = TrainConfig(model=_model_config(active, opts), threshold_quantile=opts.threshold_quantile,
                              threshold_margin=opts.threshold_margin, threads=opts.threads, cache_dir=opts.cache_dir,
                              categories=[product], **opts.train_overrides)
            train([images[i] for i in split.train], cfg, work, iters=opts.iters, seed=opts.seed, resume=False,
                  calibration_images=[images[i] for i in split.calibration], progress=opts.progress,
                  extra_config={"version": version, "product": product})
            train_info = {"trained": True, "iters": cfg.iters}
        else:
            shutil.copytree(Path(candidate_dir), work)
            (work / "checkpoint.pt").unlink(missing_ok=True)
            _stamp_version(work, product, version)
            train_info = {"trained": False, "candidate_dir": str(candidate_dir)}
        gate_normals = [images[i] for i in split.gate] + extra_normals
        (cand_n, cand_a), cand_thr = score_images(work, product, gate_normals, anomalies, kind=opts.engine_kind,
                                                  threads=opts.threads)
        cand_eval = evaluate_scores(cand_n, cand_a, cand_thr)
        act_eval: Evaluation | None = None
        active_error: str | None = None
        if active is not None:
            try:  # a corrupt or unloadable active version must not block its replacement
                registry.verify(active)
                (act_n, act_a), act_thr = score_images(active.path, product, gate_normals, anomalies,
                                                       kind=opts.engine_kind, threads=opts.threads)
                act_eval = evaluate_scores(act_n, act_a, act_thr)
            except Exception as exc:  # noqa: BLE001 - recorded with the version, judged on absolute checks
                active_error = f"{type(exc).__name__}: {exc}"
                log.warning("active version could not be scored", extra=kv(product=product, version=active.version,
                                                                           error=active_error))
        decision = decide(cand_eval, act_eval, opts.policy)
        if active is not None and active_error is not None:
            decision = GateDecision(decision.promote, decision.reasons,
                                    [n for n in decision.notes if not n.startswith("first version")]
                                    + [f"active {active.version} could not be scored ({active_error}); "
                                       "absolute checks only"])
        cfg_json = model_meta.read_config(work)
        backbone = str(cfg_json.get("model", {}).get("backbone") or "unknown")
        snapshot = {**snap.to_dict(split, opts.holdout, opts.seed), "n_gate_labelled_normals": len(extra_normals)}
        metrics = _json_safe({
            "candidate": cand_eval.to_dict(), "active": act_eval.to_dict() if act_eval else None,
            "compared_with": active.version if active is not None and act_eval else None, "active_error": active_error,
            "gate": decision.to_dict(),
            "forced": bool(opts.force and not decision.promote), "anomaly_source": anomaly_source or None,
            "calibration": model_meta.read_calibration(work),
            "train": {**train_info, "train_seconds": cfg_json.get("train_seconds"),
                      "final_loss": cfg_json.get("final_loss")},
        })
        registry.register(product, work, version, metrics=metrics, threshold=cand_thr, backbone=backbone,
                          data_snapshot=snapshot, parent_version=active.version if active else None, move=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if decision.promote or opts.force:
        if lock_lost is not None and lock_lost():
            status = "candidate"
            log.warning("job lock lost before promotion; version left as candidate",
                        extra=kv(product=product, version=version))
        else:
            registry.promote(product, version)
            status = "active"
    else:
        registry.reject(product, version, "gate: " + decision.summary)
        status = "rejected"
    result = RetrainResult(product, version, status, decision, cand_eval, act_eval,
                           active.version if active else None, {k: v for k, v in snapshot.items()
                                                                  if not k.endswith("sha256")},
                           time.perf_counter() - t0)
    log.info("retrain finished", extra=kv(product=product, version=version, status=status,
                                          gate=decision.summary, seconds=round(result.seconds, 1)))
    return result
