"""Train one INP-Former model (one product, or several products unified) into a model directory.

Only the light head is trained, on cached frozen-encoder features (:mod:`training.features`), so
a product trains in minutes on a CPU. Runs are seeded and deterministic, checkpoint every
``checkpoint_every`` iterations to ``<out_dir>/checkpoint.pt`` (RNG states included, so a resumed
run ends bit-identical to an uninterrupted one), and finish by calibrating the image threshold on
held-out *normal* training images: threshold = quantile(q) of their scores x margin.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from inference.model.inp_former import InpConfig, InpFormer
from inference.model_dir import save_model_dir
from lineinspect.logs import kv
from training.features import ImageSource, cached_features, source_key
from training.losses import inp_former_loss
from training.optim import StableAdamW, warmup_cosine
from training.patchcore import greedy_coreset, memory_rows
from training.residual import ResidualTrainConfig, fit_residual_stats, train_residual_head

log = logging.getLogger("lineinspect.training")


@dataclass
class TrainConfig:
    model: InpConfig = field(default_factory=InpConfig)
    iters: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    final_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    coherence_weight: float = 0.2
    soft_coherence: bool = False
    mining_power: float = 3.0
    train_tokens: int = 256            # token positions decoded per step (0 = all); see InpHead.forward
    holdout: float = 0.15              # share of train normals kept back for calibration
    few_shot: int = 0                  # k > 0: train on k images plus augmented copies
    aug_copies: int = 10
    # Where the extrinsic memory's final bank comes from: "all" = the fit AND the held-out normals
    # (after the held-out ones have served, against a fit-only bank, to standardise the maps and set
    # the threshold), "fit" = the fit normals only (models trained before this field). A bank from
    # 68 of the 80 normals loses 0.015 P-AUROC / 0.018 AUPRO against one from all 80 (bench_memory_diag).
    memory_bank: Literal["all", "fit"] = "all"
    # the residual head's training (only with model.residual_head > 0): after the main model, on
    # pseudo-anomalies made from the fit normals (training.residual)
    residual: ResidualTrainConfig = field(default_factory=ResidualTrainConfig)
    threshold_quantile: float = 0.99
    threshold_margin: float = 1.1
    checkpoint_every: int = 50
    threads: int = 0
    device: str = "cpu"                # torch device for the encoder pass and the head ("cuda" where there is one)
    cache_dir: str | None = None
    categories: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d


MEMORY_BANKS: tuple[str, ...] = get_args(get_type_hints(TrainConfig)["memory_bank"])  # the field's Literal


def split_holdout(sources: Sequence[ImageSource], fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic (fit, held-out) split by a seeded hash of each image's identity."""
    import hashlib

    n = len(sources)
    k = int(round(fraction * n))
    if fraction > 0 and n >= 4:
        k = max(k, 1)
    k = min(k, max(0, n - 1))
    order = sorted(range(n), key=lambda i: hashlib.sha1(f"{seed}:{source_key(sources[i])}".encode()).hexdigest())
    held = set(order[:k])
    return [s for i, s in enumerate(sources) if i not in held], [s for i, s in enumerate(sources) if i in held]


def calibrate(scores: np.ndarray, quantile: float, margin: float) -> dict[str, Any]:
    """Normal-score statistics and the threshold = quantile(q) x margin of held-out normal scores."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no held-out normal scores to calibrate on")
    qs = {f"p{int(round(q * 100))}": float(np.quantile(s, q)) for q in (0.5, 0.9, 0.95, 0.99)}
    return {"n": int(s.size), "mean": float(s.mean()), "std": float(s.std()), "min": float(s.min()),
            "max": float(s.max()), "quantiles": qs, "threshold_quantile": quantile, "threshold_margin": margin,
            "threshold": float(np.quantile(s, quantile) * margin),
            "rule": f"quantile {quantile} of held-out normal scores x {margin}"}


def _fingerprint(cfg: TrainConfig, seed: int, n_fit: int, feats: list[torch.Tensor]) -> str:
    import hashlib
    import json

    d = cfg.to_dict()
    for k in ("threads", "cache_dir", "checkpoint_every", "device"):
        d.pop(k)
    h = hashlib.sha256(json.dumps([d, seed, n_fit], sort_keys=True).encode())
    h.update(np.asarray([float(f.sum()) for f in feats]).tobytes())
    return h.hexdigest()


@torch.no_grad()
def fit_memory(model: InpFormer, fit_mem: torch.Tensor, cal_feats: list[torch.Tensor], cal_mem: torch.Tensor,
               seed: int) -> None:
    """Fill the extrinsic memory: greedy coreset of the training patches, then the (mean, std) of the
    reconstruction and memory maps over the calibration normals, which put the two maps on one scale."""
    model.head.memory.fit_projection(memory_rows(fit_mem))  # no-op unless memory_dims > 0
    refill_memory(model, fit_mem, seed)
    fit_memory_stats(model, cal_feats, cal_mem)


@torch.no_grad()
def refill_memory(model: InpFormer, mem: torch.Tensor, seed: int) -> None:
    """Replace the memory bank by a greedy coreset of the patches of ``mem`` (N, C_m, h, w), keeping the
    standardisation statistics (they were measured on normals the new bank may now contain)."""
    raw_rows = memory_rows(mem)
    k = model.cfg.memory_size
    if raw_rows.shape[0] < k:
        raise ValueError(f"memory_size {k} exceeds the {raw_rows.shape[0]} training patches")
    for bank in model.head.memory.banks():
        # the coreset spreads over the space the bank's distance is measured in
        rows = F.normalize(raw_rows, dim=1) if bank.metric == "cos" else raw_rows
        bank.fit(rows[greedy_coreset(rows, k, seed)])  # on the training device (CUDA: seconds)


@torch.no_grad()
def fit_memory_stats(model: InpFormer, cal_feats: list[torch.Tensor], cal_mem: torch.Tensor) -> None:
    """(mean, std) of the reconstruction and memory maps over the calibration normals: one scale for both
    (a paired memory first standardises each of its two banks' distances on the same normals)."""
    model.head.memory.fit_part_stats(cal_mem)
    recs, mems = [], []
    for i in range(0, cal_mem.shape[0], 16):
        r, m = model.raw_maps([f[i:i + 16] for f in cal_feats], cal_mem[i:i + 16])
        recs.append(r)
        mems.append(m)
    model.head.memory.fit_stats(torch.cat(recs), torch.cat(mems))


def train(
    images: Sequence[ImageSource],
    config: TrainConfig | None = None,
    out_dir: str | Path = "model",
    iters: int | None = None,
    seed: int = 0,
    resume: bool = True,
    calibration_images: Sequence[ImageSource] | None = None,
    progress: bool = True,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Train on normal images (paths or RGB uint8 arrays) and write a model directory to ``out_dir``."""
    cfg = config or TrainConfig()
    if iters is not None:
        cfg.iters = int(iters)
    if cfg.iters < 1:
        raise ValueError("iters must be >= 1")
    if cfg.memory_bank not in MEMORY_BANKS:
        raise ValueError(f"memory_bank must be one of {MEMORY_BANKS}, got {cfg.memory_bank!r}")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
    except Exception:  # noqa: BLE001 - best effort on exotic builds
        pass
    sources = list(images)
    if not sources:
        raise ValueError("no training images")
    if calibration_images is None:
        fit, held = split_holdout(sources, cfg.holdout, seed)
    else:
        fit, held = sources, list(calibration_images)
    aug = 0
    if cfg.few_shot > 0:
        rng = np.random.default_rng(seed)
        pick = sorted(rng.choice(len(fit), size=min(cfg.few_shot, len(fit)), replace=False).tolist())
        fit, aug = [fit[i] for i in pick], cfg.aug_copies

    device = torch.device(cfg.device)
    model = InpFormer(cfg.model).to(device)
    feats = cached_features(model, fit, cfg.cache_dir, aug_copies=aug, seed=seed)
    fp_feats = feats
    feats = [f.to(device) for f in feats]
    n = feats[0].shape[0]
    head = model.head
    head.fit_stats(feats)
    opt = StableAdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, eps=1e-10)
    gen = torch.Generator().manual_seed(seed)
    fp = _fingerprint(cfg, seed, n, fp_feats)
    ckpt = out / "checkpoint.pt"
    start = 0
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state.get("fingerprint") == fp:
            head.load_state_dict(state["head"])
            opt.load_state_dict(state["opt"])
            torch.set_rng_state(state["rng"])
            gen.set_state(state["gen"])
            start = int(state["iter"])
            log.info("resuming", extra=kv(checkpoint=str(ckpt), iteration=start))
        else:
            log.warning("ignoring checkpoint from a different run", extra=kv(checkpoint=str(ckpt)))
    warmup = min(cfg.warmup, cfg.iters // 3)
    head.train()
    bar = tqdm(range(start, cfg.iters), total=cfg.iters, initial=start, disable=not progress,
               desc="train", unit="it", leave=False)
    loss_v = float("nan")
    for it in bar:
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(it, cfg.iters, cfg.lr, cfg.final_lr, warmup)
        idx = torch.randint(n, (min(cfg.batch_size, n),), generator=gen)
        enc = [f[idx] for f in feats]
        n_tok = enc[0].shape[-2] * enc[0].shape[-1]
        tok = None
        if 0 < cfg.train_tokens < n_tok:
            tok = torch.randperm(n_tok, generator=gen)[: cfg.train_tokens]
        o = head(enc, tok)
        loss = inp_former_loss(o.targets, o.dec, o.tokens, o.inps, cfg.coherence_weight, cfg.mining_power, cfg.soft_coherence)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
        opt.step()
        loss_v = float(loss.detach())
        bar.set_postfix(loss=f"{loss_v:.4f}")
        done = it + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.iters:
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"fingerprint": fp, "iter": done, "head": head.state_dict(), "opt": opt.state_dict(),
                        "rng": torch.get_rng_state(), "gen": gen.get_state()}, tmp)
            tmp.replace(ckpt)
    bar.close()
    train_s = time.perf_counter() - t0
    model.eval()
    if held:
        cal_feats = [f.to(device) for f in cached_features(model, held, cfg.cache_dir, seed=seed)]
        cal_src = "held-out train normals"
    else:  # few-shot with nothing left over: the augmented copies are the only normals we have
        cal_feats, cal_src = feats, "augmented training copies (no held-out normals)"
    cal_mem = None
    if cfg.model.memory_size:
        fit_mem = cached_features(model, fit, cfg.cache_dir, aug_copies=aug, seed=seed, memory=True)[0]
        cal_mem = (cached_features(model, held, cfg.cache_dir, seed=seed, memory=True)[0] if held else fit_mem).to(device)
        fit_memory(model, fit_mem.to(device), cal_feats, cal_mem, seed)
    residual_summary: dict[str, Any] = {}
    if cfg.model.residual_head:
        # the head is trained on the finished main model; its mask and the base map are then put on one
        # scale by the held-out normals (against the fit-only bank, like the memory's own statistics)
        residual_summary = train_residual_head(model, fit, seed, cfg.residual, progress)
        fit_residual_stats(model, cal_feats, cal_mem)
    with torch.no_grad():
        scores = torch.cat([model.score_features([f[i:i + 16] for f in cal_feats],
                                                 mem=None if cal_mem is None else cal_mem[i:i + 16])[1]
                            for i in range(0, cal_feats[0].shape[0], 16)]).cpu().numpy()
    if cal_mem is not None and held and cfg.memory_bank == "all":
        # the held-out normals have done their job against the fit-only bank (unbiased map statistics
        # and threshold scores); now they join the bank, which is what the kNN yardstick uses
        refill_memory(model, torch.cat([fit_mem, cal_mem.cpu()]).to(device), seed)
    calibration = calibrate(scores, cfg.threshold_quantile, cfg.threshold_margin)
    calibration["source"] = cal_src
    meta = {"categories": cfg.categories, "seed": seed, "train": cfg.to_dict(), "train_images": len(fit),
            "train_feature_rows": n, "calibration_images": len(held), "train_seconds": round(train_s, 2),
            "final_loss": loss_v, **residual_summary, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra_config or {})}
    save_model_dir(out, model.cpu(), meta, calibration)
    ckpt.unlink(missing_ok=True)
    log.info("trained", extra=kv(out=str(out), iters=cfg.iters, seconds=round(train_s, 1), threshold=calibration["threshold"]))
    return out
