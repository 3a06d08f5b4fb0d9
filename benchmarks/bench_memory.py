"""Three-seed quality run: INP-Former, INP-Former + extrinsic memory, and the strongest kNN banks,
all on the same EfficientNet-Lite0 features (issue 13).

    python benchmarks/bench_memory.py --category bsdata/ball_screw_drive --seeds 0 1 2   # one process per category
    python benchmarks/bench_memory.py --category ... --threads 1 [--head dec2]   # two processes on 2 cores: 1 thread
                                                              # each (2 each: a model trains in 190-600 s instead of ~18)
    python benchmarks/bench_memory.py --aggregate --from DIR   # a run's files (gpu_quality.sh's $OUT) -> quality.json,
                                                              # RESULTS.md and README's generated table

Per category and seed, ONE model is trained the way ``lineinspect train --memory-size 1024`` does: its
own output is the ``inp_former_mem1024k3`` row (memory: greedy coreset of 1024 patches, a patch's
distance = mean Euclidean distance to its 3 nearest entries, map statistics from a fit-only bank on
the 12 held-out normals, then the bank refilled from all 80 normals). Its reconstruction map alone is
exactly what the pure INP-Former with the same seed produces (the memory is filled after training), so
it is the ``inp_former`` row. Other rows swap in another memory on the same trained head and re-fuse:
``_w2`` = memory weight 2; ``mem512k3`` = 512 entries; ``mem1024k3cos`` = distance of unit vectors
(``mem512k3cos``: the same on 512 entries, the cheaper graph);
``mem1024k3pca64`` = distances on the 64 top principal axes of the training patches (a cheaper graph);
``mem1024k3dual`` = the paired memory (``--memory-metric cos+l2``: a cosine bank, 1-NN, and a Euclidean bank,
3-NN, of 1024 entries each, their standardised distances summed; the price of one 2048-entry bank);
``mem1024k1dual`` = the same with a 1-NN Euclidean bank; ``mem512k3dual`` / ``mem384k3dual`` / ``mem256k3dual`` = smaller pairs; ``mem1024k3dual_s16`` / ``mem512k3dual_s16`` = the
paired memory on the stride-16 grid (a quarter of the queries: the one pairing fast enough for the floor);
``memory*_only`` = the memory map alone (a reference, never a candidate); ``inp_former_mem1024`` /
``_w2`` / ``mem512`` / ``memory1024_only`` = the earlier memory (k = 1, bank from the 68 fit normals
only). Why the changes: ``bench_memory_diag.py`` (one difference at a time against the kNN). The fit /
held-out split is fixed (seed 0) so every image is encoded once; the seed varies the head's
initialisation and batches, the coreset start and projection, and the kNN sample.

kNN yardstick (the issue's configuration): memory features of ALL training images (fit + held-out),
a random 20,000 of their patches, k = 1, map upsampled to the input and blurred (sigma 4); image score
= max (``knn_r20k``) or mean of the top 1 % (``knn_r20k_top1``); the stronger ``knn_*`` rows come from
``bench_knn.py`` with the same seeds.

Decision rule (written before the run, implemented in ``decide``): the bar is the best ``knn_*`` mean of
each metric (mean over the 4 categories, then over the seeds 0 1 2); a candidate wins if its mean
I-AUROC, P-AUROC and AUPRO are each >= the bar. Among winners the cheapest (``COST``: bank rows; the
weight and the metric cost nothing measurable, k = 3 costs no more than k = 1; ties: the larger smallest
margin), unless a dearer winner is better on some metric by more than the larger seed spread of the two
and worse on none by more than that. A winner below 0.5x the encoder-only yardstick's ORT speed
(batch 8, ``--speed``) cannot be chosen. No winner: the default stays the pure INP-Former. Nothing is
chosen per category.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_quality import all_metrics
from benchmarks.common import RESULTS_DIR, WORK, data_root, fmt, machine, masks_at, write_section
from benchmarks.int8_memory import Int8CosMemory
from inference.model.anomaly_map import gaussian_blur, gaussian_kernel1d, topk_mean_score
from inference.model.inp_former import ExtrinsicMemory, InpFormer, PairedMemory, make_memory
from inference.model_dir import load_model_dir
from training import patchcore
from training.data import hold_out, load_split
from training.features import cached_features
from training.train import TrainConfig, train

KEYS = ("image_auroc", "pixel_auroc", "aupro")
# Candidates and their cost (bank rows x distance width: the query-by-bank product is most of the memory's
# price; the weight, k and the metric cost nothing measurable). ``memory*_only`` rows are references, never candidates.
C_MEM = 152  # EfficientNet-Lite0 memory channels (blocks 4 + 10)
COST = {"inp_former": 0, "inp_former_mem512": 512 * C_MEM, "inp_former_mem512k3": 512 * C_MEM,
        "inp_former_mem512k3_w2": 512 * C_MEM, "inp_former_mem1024k3pca64": 1024 * 64,
        "inp_former_mem1024k3pca64_w2": 1024 * 64, "inp_former_mem1024": 1024 * C_MEM,
        "inp_former_mem1024_w2": 1024 * C_MEM, "inp_former_mem1024k3": 1024 * C_MEM,
        "inp_former_mem1024k3_w2": 1024 * C_MEM, "inp_former_mem1024k3cos": 1024 * C_MEM,
        "inp_former_mem1024k3cos_w2": 1024 * C_MEM, "inp_former_mem512k3cos": 512 * C_MEM,
        "inp_former_mem512k3cos_w2": 512 * C_MEM, "inp_former_mem1024k1cos": 1024 * C_MEM,
        "inp_former_mem1024k1cos_w2": 1024 * C_MEM, "inp_former_mem2048k3cos": 2048 * C_MEM,
        "inp_former_mem2048k3cos_w2": 2048 * C_MEM, "inp_former_mem2048k1cos": 2048 * C_MEM,
        "inp_former_mem2048k1cos_w2": 2048 * C_MEM,
        # the paired memory: a cosine and a Euclidean bank of 1024 each, two products the price of one of 2048
        "inp_former_mem1024k3dual": 2048 * C_MEM, "inp_former_mem1024k3dual_w2": 2048 * C_MEM,
        # int8 product: a quarter of the fp32 product's price (what MatMulInteger costs against MatMul here)
        "inp_former_mem2048k1cos8": 2048 * C_MEM // 4, "inp_former_mem2048k1cos8_w2": 2048 * C_MEM // 4,
        # stride-16 grid: a quarter of the queries
        "inp_former_mem1024k3_s16": 1024 * C_MEM // 4, "inp_former_mem1024k3_s16_w2": 1024 * C_MEM // 4,
        "inp_former_mem1024k3cos_s16": 1024 * C_MEM // 4, "inp_former_mem1024k3cos_s16_w2": 1024 * C_MEM // 4,
        # the paired memory with a 1-NN Euclidean bank (ReduceMin instead of TopK: same product)
        "inp_former_mem1024k1dual": 2048 * C_MEM, "inp_former_mem1024k1dual_w2": 2048 * C_MEM,
        # the paired memory on the stride-16 grid (a quarter of the queries)
        "inp_former_mem1024k3dual_s16": 2048 * C_MEM // 4, "inp_former_mem1024k3dual_s16_w2": 2048 * C_MEM // 4,
        "inp_former_mem512k3dual_s16": 1024 * C_MEM // 4, "inp_former_mem512k3dual_s16_w2": 1024 * C_MEM // 4,
        # smaller paired memories on the stride-8 grid
        "inp_former_mem512k3dual": 1024 * C_MEM, "inp_former_mem512k3dual_w2": 1024 * C_MEM,
        "inp_former_mem384k3dual": 768 * C_MEM, "inp_former_mem384k3dual_w2": 768 * C_MEM,
        "inp_former_mem256k3dual": 512 * C_MEM, "inp_former_mem256k3dual_w2": 512 * C_MEM}
# The residual head (bench_residual.py, 32 hidden channels) in the same unit, multiply-adds per memory-grid
# patch: per token of the 16x16 grid 272x32 + 2 x 9x32x32 + 32 = 27,168, over the 4x as many 32x32 patches.
C_RES = (272 * 32 + 2 * 9 * 32 * 32 + 32) // 4
COST |= {"inp_former_res": C_RES, "inp_former_mem1024k3_res": 1024 * C_MEM + C_RES,
         "inp_former_mem1024k3_w2_res": 1024 * C_MEM + C_RES}
# The memories run_category swaps onto each trained head, and speed() times: (entries per bank, k, metric,
# principal axes, grid stride, int8 product, row-name tag); each is the row ``memory_row(size, k, tag)``.
SWAPPED_MEMORIES = (
    (512, 3, "l2", 0, 8, False, ""), (1024, 3, "cos", 0, 8, False, "cos"), (1024, 3, "l2", 64, 8, False, "pca64"),
    (512, 3, "cos", 0, 8, False, "cos"), (1024, 1, "cos", 0, 8, False, "cos"), (2048, 3, "cos", 0, 8, False, "cos"),
    (2048, 1, "cos", 0, 8, False, "cos"), (2048, 1, "cos", 0, 8, True, "cos8"),
    (1024, 3, "l2", 0, 16, False, "_s16"), (1024, 3, "cos", 0, 16, False, "cos_s16"),
    (1024, 3, "cos+l2", 0, 8, False, "dual"), (1024, 1, "cos+l2", 0, 8, False, "dual"),
    (1024, 3, "cos+l2", 0, 16, False, "dual_s16"), (512, 3, "cos+l2", 0, 16, False, "dual_s16"),
    (384, 3, "cos+l2", 0, 8, False, "dual"), (256, 3, "cos+l2", 0, 8, False, "dual"),
    (512, 3, "cos+l2", 0, 8, False, "dual"))


def memory_row(size: int, k: int, tag: str, head: str = "") -> str:
    """The quality row of a swapped memory (weight 1; ``_w2`` appended for weight 2) on the default head or
    on the head variant ``head`` (a key of ``HEADS``)."""
    return f"inp_former{'_' + head if head else ''}_mem{size}k{k}{tag}"


# Lighter heads, each trained as its own model per category and seed (``--head NAME``; model dirs
# ``memory_models/<category>_s<seed>_<NAME>``): the InpConfig fields that differ from the default head, and the
# memories swapped onto it. Why: the paired memory carries most of the accuracy and the 4-block decoder most
# of the head's price (ORT profile: ~2 ms of the batch-8 pass per block), so a shorter decoder may buy the
# speed floor. Rows: ``inp_former_<NAME>`` (its reconstruction alone), then ``inp_former_<NAME>_mem...``.
HEADS: dict[str, dict[str, Any]] = {"dec2": {"decoder_blocks": 2}, "w64": {"width": 64}}
HEAD_MEMORIES = tuple(m for m in SWAPPED_MEMORIES if m[2] == "cos+l2" and m[4] == 8)


# The decoder in the same unit: multiply-adds per token of the 16x16 grid (per block q, k, v, proj: 4 x width^2; MLP:
# 2 x width x (width x MLP ratio 2)) over the 4x as many memory-grid patches; a head variant's rows cost their memory
# plus the difference between its decoder and the default one (4 blocks, width 128).
def decoder_cost(blocks: int = 4, width: int = 128) -> int:
    return blocks * (4 * width * width + 2 * width * 2 * width) // 4


def _head_cost(head: str) -> int:
    h = HEADS[head]
    return decoder_cost(h.get("decoder_blocks", 4), h.get("width", 128)) - decoder_cost()


def head_costs() -> dict[str, int]:
    """COST of every head variant's rows: its reconstruction alone, the product's memory (1024 entries, 3-NN)
    and each of ``HEAD_MEMORIES``, at both weights (the default head's row plus the decoder's difference)."""
    out: dict[str, int] = {}
    for head in HEADS:
        out[f"inp_former_{head}"] = _head_cost(head)
        specs = [(1024, 3, "")] + [(size, k, tag) for size, k, _, _, _, _, tag in HEAD_MEMORIES]
        for size, k, tag in specs:
            for w in ("", "_w2"):
                out[memory_row(size, k, tag, head) + w] = COST[memory_row(size, k, tag) + w] + _head_cost(head)
    return out


COST |= head_costs()
CANDIDATES = tuple(COST)


def row_fields(method: str) -> dict[str, Any]:
    """The InpConfig fields (decoder and memory) of candidate row ``method``: what a model trained to serve that
    row sets (``training.presets`` holds the chosen ones; a test keeps the two equal)."""
    head = next((h for h in HEADS if method == f"inp_former_{h}" or method.startswith(f"inp_former_{h}_")), "")
    out: dict[str, Any] = {"decoder_blocks": 4} | HEADS.get(head, {})
    rest = method[len("inp_former" + (f"_{head}" if head else "")):]
    weight = 2.0 if rest.endswith("_w2") else 1.0
    rest = rest.removesuffix("_w2")
    if not rest:
        return out | {"memory_size": 0}
    specs = [(1024, 3, "l2", 0, 8, False, "")] + list(SWAPPED_MEMORIES)  # the product's own memory, then the swapped
    for size, k, metric, dims, stride, int8, tag in specs:
        if not int8 and rest == memory_row(size, k, tag)[len("inp_former"):]:
            return out | {"memory_size": size, "memory_k": k, "memory_metric": metric, "memory_dims": dims,
                          "memory_stride": stride, "memory_weight": weight}
    raise KeyError(f"no model serves the row {method!r}")


# rows of a benchmark prototype (benchmarks/int8_memory.py): margins shown, never a winner - the product cannot
# train or serve them
PROTOTYPES = ("inp_former_mem2048k1cos8", "inp_former_mem2048k1cos8_w2")
SPEED_FLOOR = 0.5  # ONNX Runtime batch-8 images/s of the whole model / of the encoder alone (issue 13)
PER_CAT = "memory_runs"


def default_config(memory_size: int = 1024) -> TrainConfig:
    base = TrainConfig()
    return replace(base, model=replace(base.model, memory_size=memory_size))


@torch.no_grad()
def raw(module: InpFormer, enc: list[torch.Tensor], mem: torch.Tensor, bs: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    rs, ms = [], []
    for i in range(0, mem.shape[0], bs):
        r, m = module.raw_maps([f[i:i + bs] for f in enc], mem[i:i + bs])
        rs.append(r)
        ms.append(m)
    return torch.cat(rs), torch.cat(ms)


@torch.no_grad()
def finish(module: InpFormer, rawmap: torch.Tensor, bs: int = 64) -> tuple[np.ndarray, np.ndarray]:
    maps, scores = [], []
    for i in range(0, rawmap.shape[0], bs):
        m, s = module.finish(rawmap[i:i + bs])
        maps.append(m.cpu().numpy())
        scores.append(s.cpu().numpy())
    return np.concatenate(maps), np.concatenate(scores)


@torch.no_grad()
def knn_rows(train_mem: torch.Tensor, test_mem: torch.Tensor, hw: tuple[int, int], seed: int, n_bank: int = 20000,
             chunk: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(maps, max scores, top-1 % scores) of the random-20k, k=1 bank."""
    rows = patchcore.memory_rows(train_mem)
    g = torch.Generator().manual_seed(seed)
    bank = rows[torch.randperm(rows.shape[0], generator=g)[:n_bank].to(rows.device)]
    mem = ExtrinsicMemory(bank.shape[0], bank.shape[1]).to(rows.device)
    mem.fit(bank)
    kern = gaussian_kernel1d(4.0).to(rows.device)
    maps, smax, stop = [], [], []
    for i in range(0, test_mem.shape[0], chunk):
        d = mem.distance(test_mem[i:i + chunk]).unsqueeze(1)
        up = torch.nn.functional.interpolate(d, size=hw, mode="bilinear", align_corners=False).squeeze(1)
        a = gaussian_blur(up, kern)
        maps.append(a.cpu().numpy())
        smax.append(a.flatten(1).max(1).values.cpu().numpy())
        stop.append(topk_mean_score(a, 0.01).cpu().numpy())
    return np.concatenate(maps), np.concatenate(smax), np.concatenate(stop)


def category_split(root: Path, cat: str, holdout: float, hw: tuple[int, int]) -> tuple[list, list, Any, np.ndarray,
                                                                                      list[np.ndarray]]:
    """The one split every quality row is scored on: fit / held-out normals (fixed draw 0), the test set,
    its labels and its ground-truth masks at model resolution."""
    fit, held = hold_out(load_split(root, cat, "train").items, holdout, 0)
    test = load_split(root, cat, "test")
    return fit, held, test, np.array([it.label for it in test.items]), masks_at(test.items, hw)


def split_features(probe: InpFormer, fit: list, held: list, test_items: list, cache_dir: str | Path | None,
                   device: str) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """One category split's cached features on ``device``: (test groups, test memory features, held-out groups,
    held-out memory features, fit memory features) - what every row scored on the trained models reads."""
    def groups(items: list) -> list[torch.Tensor]:
        return [f.to(device) for f in cached_features(probe, [it.path for it in items], cache_dir)]

    def memory(items: list) -> torch.Tensor:
        return cached_features(probe, [it.path for it in items], cache_dir, memory=True)[0].to(device)

    return groups(test_items), memory(test_items), groups(held), memory(held), memory(fit)


def fill_memory(module: InpFormer, size: int, k: int, fit_mem: torch.Tensor, held_enc: list[torch.Tensor],
                held_mem: torch.Tensor, seed: int, bank_from_all: bool, metric: str = "l2",
                dims: int = 0, int8: bool = False, picks: dict | None = None) -> ExtrinsicMemory | PairedMemory:
    """Put a fresh memory into ``module`` the way ``training.train`` fills one (``fit_memory`` then
    ``refill_memory``): greedy coreset of the fit patches, standardisation statistics on the held-out
    normals, then (``bank_from_all``) the bank refilled from the fit AND held-out patches.

    ``picks``: a dict kept across calls on the same feature tensors and seed, so memories that differ only
    in k or the product (2048 cosine 3-NN / 1-NN / int8) share one coreset (the greedy pick is deterministic;
    ~5 s per pick at 2048 entries on 2 cores)."""
    def pick(bank_metric: str, *parts: torch.Tensor) -> torch.Tensor:
        key = (size, bank_metric, seed, *(id(p) for p in parts))
        if picks is not None and key in picks:
            return picks[key]
        rows = patchcore.memory_rows(torch.cat(parts) if len(parts) > 1 else parts[0])
        rows = torch.nn.functional.normalize(rows, dim=1) if bank_metric == "cos" else rows
        chosen = rows[patchcore.greedy_coreset(rows, size, seed)]  # on the features' device
        if picks is not None:
            picks[key] = chosen
        return chosen

    def fill(*parts: torch.Tensor) -> None:
        for bank in mem.banks():  # one coreset per bank, in its own space (the pair: cosine and Euclidean)
            bank.fit(pick(bank.metric, *parts))

    if int8 and (metric, k, dims) != ("cos", 1, 0):
        raise ValueError("the int8 prototype is a 1-NN cosine memory on all channels")
    mem = (Int8CosMemory(size, fit_mem.shape[1]) if int8 else
           make_memory(size, fit_mem.shape[1], k, metric, dims)).to(fit_mem.device)
    mem.fit_projection(patchcore.memory_rows(fit_mem))
    fill(fit_mem)
    module.head.memory = mem
    mem.fit_part_stats(held_mem)
    hr, hm = raw(module, held_enc, held_mem)
    mem.fit_stats(hr, hm)
    if bank_from_all:
        fill(fit_mem, held_mem)
    return mem


def run_category(root: Path, cat: str, seeds: list[int], device: str, out_dir: Path, iters: int | None = None,
                 knn: bool = True, cache_dir: Path | None = None, reuse: bool = False, head: str = "") -> dict:
    """Train and score one category for ``seeds``; writes ``out_dir/<category>__s<seeds>.json`` after every
    seed (several processes may each take some seeds of one category: ``aggregate`` joins them).

    ``head``: a key of ``HEADS``: train that lighter head instead (its own model dirs) and score only its rows
    (its reconstruction, the product's memory and ``HEAD_MEMORIES``; no kNN), into
    ``<category>__s<seeds>__<head>.json`` (``join_runs`` merges it with the default head's rows).

    ``reuse``: a seed whose model directory is already there (an earlier run's training) is scored, not
    retrained; its training seconds are taken from that run's file in ``out_dir`` when there (else null).
    Every row comes from the model, so rows added later are scored on the very models the others were."""
    cfg = replace(default_config(), cache_dir=str(cache_dir or WORK / "cache_memory"), categories=[cat], device=device)
    cfg = replace(cfg, iters=iters or cfg.iters)
    if head:
        cfg = replace(cfg, model=replace(cfg.model, **HEADS[head]))
    hw = cfg.model.input_hw
    fit, held, test, labels, masks = category_split(root, cat, cfg.holdout, hw)
    probe = InpFormer(cfg.model).to(device)
    t0 = time.perf_counter()
    test_enc, test_mem, held_enc, held_mem, fit_mem = split_features(probe, fit, held, test.items, cfg.cache_dir, device)
    feats = {8: (fit_mem, held_mem, test_mem)}
    # a head variant swaps in only the paired memories (HEAD_MEMORIES); the default head also every other one
    memories = HEAD_MEMORIES if head else SWAPPED_MEMORIES
    if any(stride == 16 for _, _, _, _, stride, _, _ in memories):
        # the same memory blocks on the stride-16 grid (the `_s16` rows: a quarter of the queries)
        probe16 = InpFormer(replace(cfg.model, memory_stride=16)).to(device)
        feats[16] = tuple(cached_features(probe16, [it.path for it in items], cfg.cache_dir, memory=True)[0].to(device)
                          for items in (fit, held, test.items))
    encode_s = time.perf_counter() - t0
    del probe
    out_file = out_dir / f"{cat.replace('/', '__')}__s{'-'.join(map(str, seeds))}{'__' + head if head else ''}.json"
    earlier = json.loads(out_file.read_text()).get("seeds", {}) if reuse and out_file.exists() else {}
    res: dict = {"category": cat, "n_fit": len(fit), "n_held": len(held), "n_test": len(test.items),
                 "encode_s": round(encode_s, 1), "seeds": {}} | ({"head": head} if head else {})
    for seed in seeds:
        mdir = WORK / "memory_models" / f"{cat.replace('/', '__')}_s{seed}{'_' + head if head else ''}"
        t1 = time.perf_counter()
        reused = reuse and (mdir / "weights.pt").is_file()
        if not reused:
            train([it.path for it in fit], cfg, mdir, iters=cfg.iters, seed=seed, resume=False,
                  calibration_images=[it.path for it in held], progress=False)
        train_s = time.perf_counter() - t1
        module = load_model_dir(mdir, device=device).module
        # the product's own memory (what `lineinspect train --memory-size 1024` writes): k = 3, bank
        # from all 80 normals, statistics from the fit-only bank on the held-out 12
        rec, mdist = raw(module, test_enc, test_mem)
        prod = module.head.memory
        out: dict[str, dict] = {}

        def add(name: str, rawmap: torch.Tensor, module: InpFormer = module, out: dict = out) -> None:
            maps, scores = finish(module, rawmap)
            out[name] = all_metrics(labels, scores, masks, maps)

        pre = f"inp_former_{head}" if head else "inp_former"
        add(pre, rec)
        for w in (1.0, 2.0):
            add(f"{pre}_mem1024k3{'_w2' if w == 2 else ''}", prod.fuse(rec, mdist, w))
        if not head:  # the memory-only maps do not depend on the head: the default head's run has them
            add("memory1024k3_only", mdist)
        # filled the same way: the cheaper bank (512), the cosine distance, the cheaper product (64 principal axes),
        # the larger cosine bank (2048), 1-NN cosine, the stride-16 grid (`_s16`), the int8 product (`cos8`)
        picks: dict = {}  # coresets shared by the memories below that differ only in k or the product
        for size, k, metric, dims, stride, int8, tag in memories:
            f_m, h_m, t_m = feats[stride]
            m = fill_memory(module, size, k, f_m, held_enc, h_m, seed, True, metric, dims, int8, picks)
            _, md = raw(module, test_enc, t_m)
            for w in (1.0, 2.0):
                add(f"{memory_row(size, k, tag, head)}{'_w2' if w == 2 else ''}", m.fuse(rec, md, w))
            if not head:
                add(f"memory{size}k{k}{tag}_only", md)
        if not head:
            # the earlier memory (kept as rows): k = 1, bank from the 68 fit normals only
            for size in (1024, 512):
                m = fill_memory(module, size, 1, fit_mem, held_enc, held_mem, seed, False)
                _, md = raw(module, test_enc, test_mem)
                add(f"inp_former_mem{size}", m.fuse(rec, md, 1.0))
                if size == 1024:
                    add("inp_former_mem1024_w2", m.fuse(rec, md, 2.0))
                    add("memory1024_only", md)
        if knn and not head:
            kmaps, kmax, ktop = knn_rows(torch.cat([fit_mem, held_mem]), test_mem, hw, seed)
            out["knn_r20k"] = all_metrics(labels, kmax, masks, kmaps)
            out["knn_r20k_top1"] = all_metrics(labels, ktop, masks, kmaps)
        done = {"train_s": earlier.get(str(seed), {}).get("train_s") if reused else round(train_s, 1),
                "score_s": round(time.perf_counter() - t1 - train_s, 1), "methods": out}
        res["seeds"][str(seed)] = done | ({"reused_model": True} if reused else {})
        print(f"{cat} seed {seed} {'reused' if reused else 'trained'} {train_s:.0f}s " + " ".join(
            f"{k}={v['image_auroc']:.3f}/{v['pixel_auroc']:.3f}/{v['aupro']:.3f}" for k, v in out.items()), flush=True)
        # written after every seed: a run stopped by a wall-clock limit keeps the seeds it finished
        res["machine"] = machine() + (f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else "")
        out_dir.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(res, indent=1))
    return res


def join_runs(parts: list[dict]) -> list[dict]:
    """One run per category: the seeds of every file of that category (files of one seed each, or older
    files holding several) joined; the first file's other fields are kept. A head variant's file (``head``)
    adds its rows to the same seeds' ``methods`` and its training seconds as ``train_s_heads[head]``."""
    by: dict[str, dict] = {}
    for r in (p for p in parts if not p.get("head")):
        if r["category"] in by:
            by[r["category"]]["seeds"].update(r["seeds"])
        else:
            by[r["category"]] = {**r, "seeds": {s: dict(v) for s, v in r["seeds"].items()}}
    for r in (p for p in parts if p.get("head")):
        base = by.get(r["category"])
        if base is None:
            raise SystemExit(f"head {r['head']!r} rows for {r['category']} without the default head's run")
        base["machine_heads"] = base.get("machine_heads", {}) | {r["head"]: r.get("machine")}
        for s, v in r["seeds"].items():
            if s in base["seeds"]:
                seed = base["seeds"][s]
                seed["methods"] = seed["methods"] | v["methods"]
                seed["train_s_heads"] = seed.get("train_s_heads", {}) | {r["head"]: v["train_s"]}
    return list(by.values())


def aggregate(in_dir: Path, extra: dict) -> dict:
    runs = join_runs([json.loads(p.read_text()) for p in sorted(in_dir.glob("*.json"))])
    if not runs:
        raise SystemExit(f"no per-category results under {in_dir}")
    seeds = sorted(set.intersection(*(set(r["seeds"]) for r in runs)), key=int)
    # the rows every category has for every seed (a head variant run on some categories only is left out)
    methods = [m for m in runs[0]["seeds"][seeds[0]]["methods"]
               if all(m in r["seeds"][s]["methods"] for r in runs for s in seeds)]
    # per seed: mean over categories; then mean and spread (max - min) over seeds
    per_seed = {m: {k: [float(np.mean([r["seeds"][s]["methods"][m][k] for r in runs])) for s in seeds] for k in KEYS}
                for m in methods}
    mean: dict[str, dict[str, Any]] = {m: {k: float(np.mean(per_seed[m][k])) for k in KEYS} | {"spread": {k: float(np.ptp(per_seed[m][k])) for k in KEYS}}
            for m in methods}
    per_cat = {r["category"]: {m: {k: float(np.mean([r["seeds"][s]["methods"][m][k] for s in seeds])) for k in KEYS}
                               for m in methods} for r in runs}
    q = {"seeds": [int(s) for s in seeds], "categories": [r["category"] for r in runs], "mean": mean,
         "per_seed_mean": per_seed, "per_category": per_cat,
         "train_s": {r["category"]: [r["seeds"][s]["train_s"] for s in seeds] for r in runs},
         "train_s_heads": {h: {r["category"]: [r["seeds"][s].get("train_s_heads", {}).get(h) for s in seeds]
                               for r in runs} for h in HEADS},
         "machine_heads": {h: runs[0].get("machine_heads", {}).get(h) for h in HEADS},
         "machine": runs[0]["machine"], **extra}
    return decide(q) if any(m.startswith("knn_") for m in mean) else q


def speed_key(method: str) -> str:
    """The speed row that times ``method``'s graph: the memory weight (``_w2``) changes a constant, not the
    graph, so ``inp_former_mem1024k3_w2_res`` is timed as ``inp_former_mem1024k3_res``."""
    return method.replace("_w2", "")


def decide(q: dict) -> dict:
    """The decision rule, written before the run: the bar is the best ``knn_*`` mean of each metric (any
    kNN row); a candidate wins if its mean I-AUROC, P-AUROC and AUPRO are each >= the bar. Among winners
    the cheapest (``COST``; ties: the larger smallest margin) is chosen, unless a dearer winner is better
    on some metric by more than the larger seed spread of the two on that metric and worse on none by
    more than that. A winner whose measured ORT speed (``quality_speed.json``, batch 8) is below
    ``SPEED_FLOOR`` x the encoder-only yardstick cannot be chosen, nor can one whose speed was never
    measured. No winner: the default stays the pure INP-Former."""
    mean = q["mean"]
    knn = [m for m in mean if m.startswith("knn_")]
    bar = {k: max(mean[m][k] for m in knn) for k in KEYS}
    q["knn_bar"] = bar
    q["knn_bar_method"] = {k: knn[int(np.argmax([mean[m][k] for m in knn]))] for k in KEYS}
    q["margin_vs_bar"] = {m: {k: round(mean[m][k] - bar[k], 4) for k in KEYS} for m in CANDIDATES if m in mean}
    # compared unrounded: a margin of -0.00004 shows as -0.0 in margin_vs_bar but is below the bar
    meets = [m for m in q["margin_vs_bar"] if all(mean[m][k] >= bar[k] for k in KEYS)]
    q["prototypes_meeting_bar"] = [m for m in meets if m in PROTOTYPES]
    winners = [m for m in meets if m not in PROTOTYPES]
    q["winners"] = winners
    ratio = (q.get("speed") or {}).get("ratio_to_yardstick", {})
    speed = {m: ratio.get(speed_key(m)) for m in winners}
    slow = [m for m in winners if speed[m] is not None and speed[m] < SPEED_FLOOR]
    unmeasured = [m for m in winners if speed[m] is None]
    q["winners_below_speed_floor"] = slow
    q["winners_speed_unmeasured"] = unmeasured
    winners = [m for m in winners if m not in slow and m not in unmeasured]
    if not winners:
        why = "no candidate reaches the bar on all three metrics"
        if slow:
            why = f"the winners {slow} run below {SPEED_FLOOR}x the encoder-only yardstick (ORT, batch 8)"
        if unmeasured:
            why += f"; the winners {unmeasured} have no measured speed (bench_memory.py --speed)"
        q["chosen"] = {"method": "inp_former", "why": why}
        return q
    order = sorted(winners, key=lambda m: (COST[m], -min(q["margin_vs_bar"][m].values())))
    best = order[0]
    why = "cheapest winner"
    for m in order[1:]:
        if COST[m] == COST[best]:
            continue
        tol = {k: max(mean[m]["spread"][k], mean[best]["spread"][k]) for k in KEYS}
        diff = {k: mean[m][k] - mean[best][k] for k in KEYS}
        if any(diff[k] > tol[k] for k in KEYS) and all(diff[k] >= -tol[k] for k in KEYS):
            best, why = m, f"dearer winner better than {best} by more than the seed spread"
    q["chosen"] = {"method": best, "why": why}
    return q


def aggregate_from(src: Path) -> dict:
    """quality.json + RESULTS.md (+ README's generated table) from one run's per-category files: the
    memory rows (``memory_runs/``), every ``knn_*`` row (``knn_runs/``; its ``knn_r20k`` rows only as a
    check), few-shot rows (``fewshot_runs/``, when there), residual-head rows (``residual_runs/``, when
    there). Rows of the previous quality.json that this run did not produce (e.g. the unified model) are
    kept with their own seeds, as are the speed and the CPU training times; the bar, margins, winners and the choice are then recomputed (``decide``)."""
    import tarfile
    import tempfile

    from benchmarks import bench_fewshot, bench_knn, bench_residual

    if src.is_file():
        tmp = Path(tempfile.mkdtemp(prefix="quality_runs_"))
        with tarfile.open(src) as tf:
            tf.extractall(tmp, filter="data")
        src = tmp
    found = {d.name: d for d in src.rglob("*_runs") if d.is_dir()}
    if "memory_runs" not in found:
        raise SystemExit(f"no memory_runs/ under {src}")
    qpath = RESULTS_DIR / "quality.json"
    old = json.loads(qpath.read_text()) if qpath.exists() else {}
    extra = {k: old[k] for k in ("speed", "train_wall") if k in old}
    sp = RESULTS_DIR / "quality_speed.json"  # the latest --speed run (CPU; not part of the GPU job)
    if sp.exists():
        extra["speed"] = json.loads(sp.read_text())
    q = aggregate(found["memory_runs"], extra)
    if "knn_runs" in found:
        q = bench_knn.merge(found["knn_runs"], q)
    if "fewshot_runs" in found:
        q = bench_fewshot.merge(found["fewshot_runs"], q)
    if "residual_runs" in found:
        q = bench_residual.merge(found["residual_runs"], q)
    kept = [m for m in old.get("mean", {}) if m not in q["mean"] and all(m in old["per_category"].get(c, {})
                                                                       for c in q["categories"])]
    for m in kept:
        q["mean"][m] = old["mean"][m]
        q["per_seed_mean"][m] = old["per_seed_mean"][m]
        for c in q["categories"]:
            q["per_category"][c][m] = old["per_category"][c][m]
        q.setdefault("seeds_by_method", {})[m] = old.get("seeds_by_method", {}).get(m, old.get("seeds"))
        if m in old.get("train_s_by_method", {}):
            q.setdefault("train_s_by_method", {})[m] = old["train_s_by_method"][m]
    q["kept_from_previous_run"] = kept
    if old.get("seeds_by_method"):  # the previous seed-0-only kNN rows, for the record (now recomputed)
        prev = {m: old["mean"][m] for m in old["seeds_by_method"] if m.startswith("knn_") and m in old["mean"]}
        q["knn_previous_seed0_cpu"] = {m: {k: v[k] for k in KEYS} for m, v in prev.items()}
    q = decide(q)
    qpath.write_text(json.dumps(q, indent=1))
    write_md(q)
    write_readme_table(q)
    return q


def speed(rounds: int = 3, batch: int = 8) -> dict:
    """ORT fp32 images/s at ``batch`` of the encoder alone (bench_engines' yardstick), the pure model and
    the memory models (:func:`time_against_encoder`). Weights do not change the cost, so the banks hold
    random rows."""
    models: dict[str, InpFormer] = {}
    # the pure model, the product's own memory and the earlier one, then every memory run_category swaps in,
    # then each head variant with its own rows
    variants = [("inp_former", 0, 3, "l2", 0, 8, False, ""), ("inp_former_mem1024", 1024, 1, "l2", 0, 8, False, ""),
                ("inp_former_mem1024k3", 1024, 3, "l2", 0, 8, False, "")] + [
        (memory_row(size, k, tag), size, k, metric, dims, stride, int8, "")
        for size, k, metric, dims, stride, int8, tag in SWAPPED_MEMORIES]
    for head in HEADS:
        variants += [(f"inp_former_{head}", 0, 3, "l2", 0, 8, False, head),
                     (f"inp_former_{head}_mem1024k3", 1024, 3, "l2", 0, 8, False, head)] + [
            (memory_row(size, k, tag, head), size, k, metric, dims, stride, int8, head)
            for size, k, metric, dims, stride, int8, tag in HEAD_MEMORIES]
    for name, size, k, metric, dims, stride, int8, head in variants:
        cfg = default_config(size).model
        cfg = replace(cfg, memory_k=k if size else cfg.memory_k, memory_metric=metric, memory_dims=dims,
                      memory_stride=stride, **(HEADS[head] if head else {}))
        m = InpFormer(cfg).eval()
        if int8:
            m.head.memory = Int8CosMemory(size, m.head.memory.channels)
        if size:
            m.head.memory.fit(torch.randn(size, m.head.memory.channels))
        models[name] = m
    return time_against_encoder(models, WORK / "memory_speed", rounds, batch)


YARDSTICK = "encoder only (yardstick)"


def time_against_encoder(models: dict[str, InpFormer], out_dir: Path, rounds: int = 3, batch: int = 8) -> dict:
    """ORT fp32 images/s at ``batch`` of each model (exported whole: map and score) and of the first
    model's encoder alone (bench_engines' yardstick), timed in one process: every model right after the
    yardstick, its ratio against that pair's yardstick, the median ratio over ``rounds`` reported (the
    load of a shared box moves within seconds, so only paired ratios compare)."""
    from benchmarks.bench_engines import THREADS, _rate
    from inference.engines.onnx_engine import make_session
    from inference.model.backbones import FrozenBackbone
    from inference.onnx_export import export_module

    first = next(iter(models.values()))
    hw = first.cfg.input_hw

    class _Enc(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone: FrozenBackbone = first.backbone

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(self.backbone(x))

    paths = {YARDSTICK: export_module(_Enc(), out_dir / "encoder.onnx", hw,
                                      tuple(f"f{i}" for i in range(len(first.backbone.blocks))))}
    for name, m in models.items():
        paths[name] = export_module(m, out_dir / f"{name}.onnx", hw, ("map", "score"))
    sessions = {n: make_session(p, THREADS) for n, p in paths.items()}
    x = np.random.default_rng(0).random((batch, 3, *hw), dtype=np.float32)
    run = {n: (lambda a, s=sess: s.run(None, {"images": a})) for n, sess in sessions.items()}
    rates: dict[str, list[float]] = {n: [] for n in sessions}
    ratios: dict[str, list[float]] = {n: [] for n in models}
    load0 = list(os.getloadavg())
    for _ in range(rounds):
        for n in models:
            y = _rate(run[YARDSTICK], x)
            r = _rate(run[n], x)
            rates[YARDSTICK].append(y)
            rates[n].append(r)
            ratios[n].append(r / y)
    return {"batch": batch, "threads": THREADS, "images_per_s": {n: float(np.median(v)) for n, v in rates.items()},
            "ratio_to_yardstick": {n: float(np.median(v)) for n, v in ratios.items()} | {YARDSTICK: 1.0},
            "ratio_spread": {n: [float(min(v)), float(max(v))] for n, v in ratios.items()},
            "method": "each model timed right after the yardstick; median over rounds of the paired ratios",
            "rounds": rounds, "load_avg_before": load0, "load_avg": list(os.getloadavg()), "machine": machine()}


LABELS = {
    "inp_former": "INP-Former (default, pure)",
    "inp_former_mem1024k3": "INP-Former + extrinsic memory 1024, 3-NN, bank of all 80 normals (weight 1)",
    "inp_former_mem1024k3_w2": "INP-Former + extrinsic memory 1024, 3-NN, all 80, memory weight 2",
    "memory1024k3_only": "memory 1024, 3-NN, all 80, alone (reference, not an INP-Former)",
    "inp_former_mem512k3": "INP-Former + extrinsic memory 512, 3-NN, all 80 (weight 1)",
    "inp_former_mem512k3_w2": "INP-Former + extrinsic memory 512, 3-NN, all 80, memory weight 2",
    "memory512k3_only": "memory 512, 3-NN, all 80, alone (reference)",
    "inp_former_mem1024k3cos": "INP-Former + extrinsic memory 1024, 3-NN, all 80, cosine distance (weight 1)",
    "inp_former_mem1024k3cos_w2": "INP-Former + extrinsic memory 1024, 3-NN, all 80, cosine, memory weight 2",
    "memory1024k3cos_only": "memory 1024, 3-NN, all 80, cosine, alone (reference)",
    "inp_former_mem512k3cos": "INP-Former + extrinsic memory 512, 3-NN, all 80, cosine distance (weight 1)",
    "inp_former_mem512k3cos_w2": "INP-Former + extrinsic memory 512, 3-NN, all 80, cosine, memory weight 2",
    "memory512k3cos_only": "memory 512, 3-NN, all 80, cosine, alone (reference)",
    "inp_former_mem1024k1cos": "INP-Former + extrinsic memory 1024, 1-NN, all 80, cosine (weight 1)",
    "inp_former_mem1024k1cos_w2": "INP-Former + extrinsic memory 1024, 1-NN, all 80, cosine, memory weight 2",
    "memory1024k1cos_only": "memory 1024, 1-NN, all 80, cosine, alone (reference)",
    "inp_former_mem2048k3cos": "INP-Former + extrinsic memory 2048, 3-NN, all 80, cosine (weight 1)",
    "inp_former_mem2048k3cos_w2": "INP-Former + extrinsic memory 2048, 3-NN, all 80, cosine, memory weight 2",
    "memory2048k3cos_only": "memory 2048, 3-NN, all 80, cosine, alone (reference)",
    "inp_former_mem2048k1cos": "INP-Former + extrinsic memory 2048, 1-NN, all 80, cosine (weight 1)",
    "inp_former_mem2048k1cos_w2": "INP-Former + extrinsic memory 2048, 1-NN, all 80, cosine, memory weight 2",
    "memory2048k1cos_only": "memory 2048, 1-NN, all 80, cosine, alone (reference)",
    "inp_former_mem2048k1cos8": "INP-Former + memory 2048, 1-NN, cosine, int8 product (benchmark prototype, weight 1)",
    "inp_former_mem2048k1cos8_w2": "INP-Former + memory 2048, 1-NN, cosine, int8 product (prototype), memory weight 2",
    "memory2048k1cos8_only": "memory 2048, 1-NN, cosine, int8 product, alone (reference)",
    "inp_former_mem1024k3_s16": "INP-Former + extrinsic memory 1024, 3-NN, all 80, stride-16 grid (weight 1)",
    "inp_former_mem1024k3_s16_w2": "INP-Former + extrinsic memory 1024, 3-NN, all 80, stride-16 grid, memory weight 2",
    "memory1024k3_s16_only": "memory 1024, 3-NN, all 80, stride-16 grid, alone (reference)",
    "inp_former_mem1024k3cos_s16": "INP-Former + extrinsic memory 1024, 3-NN, cosine, stride-16 grid (weight 1)",
    "inp_former_mem1024k3cos_s16_w2": "INP-Former + extrinsic memory 1024, 3-NN, cosine, stride-16 grid, memory weight 2",
    "memory1024k3cos_s16_only": "memory 1024, 3-NN, cosine, stride-16 grid, alone (reference)",
    "inp_former_mem1024k3dual": "INP-Former + paired memory: cosine 1024 (1-NN) + Euclidean 1024 (3-NN), all 80 (weight 1)",
    "inp_former_mem1024k3dual_w2": "INP-Former + paired memory: cosine 1024 (1-NN) + Euclidean 1024 (3-NN), all 80, memory weight 2",
    "memory1024k3dual_only": "paired memory 1024 + 1024, alone (reference)",
    "inp_former_mem1024k1dual": "INP-Former + paired memory: cosine 1024 (1-NN) + Euclidean 1024 (1-NN), all 80 (weight 1)",
    "inp_former_mem1024k1dual_w2": "INP-Former + paired memory: cosine 1024 + Euclidean 1024, both 1-NN, all 80, memory weight 2",
    "memory1024k1dual_only": "paired memory 1024 + 1024, both 1-NN, alone (reference)",
    "inp_former_mem1024k3dual_s16": "INP-Former + paired memory 1024 + 1024 (Euclidean 3-NN), stride-16 grid (weight 1)",
    "inp_former_mem1024k3dual_s16_w2": "INP-Former + paired memory 1024 + 1024 (Euclidean 3-NN), stride-16 grid, memory weight 2",
    "memory1024k3dual_s16_only": "paired memory 1024 + 1024, stride-16 grid, alone (reference)",
    "inp_former_mem512k3dual_s16": "INP-Former + paired memory 512 + 512 (Euclidean 3-NN), stride-16 grid (weight 1)",
    "inp_former_mem512k3dual_s16_w2": "INP-Former + paired memory 512 + 512 (Euclidean 3-NN), stride-16 grid, memory weight 2",
    "memory512k3dual_s16_only": "paired memory 512 + 512, stride-16 grid, alone (reference)",
    "inp_former_mem512k3dual": "INP-Former + paired memory 512 + 512 (Euclidean 3-NN), all 80 (weight 1)",
    "inp_former_mem512k3dual_w2": "INP-Former + paired memory 512 + 512 (Euclidean 3-NN), all 80, memory weight 2",
    "memory512k3dual_only": "paired memory 512 + 512, alone (reference)",
    "inp_former_mem384k3dual": "INP-Former + paired memory 384 + 384 (Euclidean 3-NN), all 80 (weight 1)",
    "inp_former_mem384k3dual_w2": "INP-Former + paired memory 384 + 384 (Euclidean 3-NN), all 80, memory weight 2",
    "memory384k3dual_only": "paired memory 384 + 384, alone (reference)",
    "inp_former_mem256k3dual": "INP-Former + paired memory 256 + 256 (Euclidean 3-NN), all 80 (weight 1)",
    "inp_former_mem256k3dual_w2": "INP-Former + paired memory 256 + 256 (Euclidean 3-NN), all 80, memory weight 2",
    "memory256k3dual_only": "paired memory 256 + 256, alone (reference)",
    "inp_former_mem1024k3pca64": "INP-Former + extrinsic memory 1024, 3-NN, all 80, on 64 principal axes (weight 1)",
    "inp_former_mem1024k3pca64_w2": "INP-Former + extrinsic memory 1024, 3-NN, all 80, 64 principal axes, memory weight 2",
    "memory1024k3pca64_only": "memory 1024, 3-NN, all 80, 64 principal axes, alone (reference)",
    "inp_former_mem512": "INP-Former + earlier extrinsic memory 512 (1-NN, bank of the 68 fit normals)",
    "inp_former_mem1024": "INP-Former + earlier extrinsic memory 1024 (1-NN, 68 fit normals, weight 1)",
    "inp_former_mem1024_w2": "INP-Former + earlier extrinsic memory 1024 (1-NN, 68 fit normals), memory weight 2",
    "memory1024_only": "earlier memory 1024 (1-NN, 68 fit normals) alone (reference, not an INP-Former)",
    "knn_r20k": "kNN, random 20k bank, k=1, max score (issue's yardstick)",
    "knn_r20k_top1": "kNN, random 20k bank, k=1, top-1 % score",
    "knn_r20k_rw": "kNN, random 20k bank, k=1, PatchCore-reweighted max score (9 neighbours)",
    "knn_r20k_k3": "kNN, random 20k bank, mean of 3 nearest, max score",
    "knn_b4_7_10_r20k": "kNN, blocks 4+7+10, random 20k bank, k=1, max score",
    "knn_b4_7_10_r20k_top1": "kNN, blocks 4+7+10, random 20k bank, k=1, top-1 % score",
    "knn_cs1": "kNN, greedy coreset 1 % (819), k=1, max score",
    "knn_cs1_top1": "kNN, greedy coreset 1 %, k=1, top-1 % score",
    "knn_cs1_rw": "kNN, greedy coreset 1 %, k=1, PatchCore-reweighted max score",
    "knn_cs1_k3": "kNN, greedy coreset 1 %, mean of 3 nearest, max score",
    "knn_cs10": "kNN, greedy coreset 10 % (8192), k=1, max score (PatchCore's default bank)",
    "knn_cs10_top1": "kNN, greedy coreset 10 %, k=1, top-1 % score",
    "knn_cs10_rw": "kNN, greedy coreset 10 %, k=1, PatchCore-reweighted max score",
    "knn_cs10_k3": "kNN, greedy coreset 10 %, mean of 3 nearest, max score",
    "inp_former_fewshot1": "INP-Former default, few-shot 1 (+10 augmented copies)",
    "inp_former_fewshot2": "INP-Former default, few-shot 2 (+10 augmented copies each)",
    "inp_former_fewshot4": "INP-Former default, few-shot 4 (+10 augmented copies each)",
    "inp_former_unified": "INP-Former default, ONE unified model for all 4 categories",
    "inp_former_res": "INP-Former + INP-Former++ residual head (32 channels, pseudo-anomalies), pure",
    "inp_former_mem1024k3_res": "INP-Former + extrinsic memory 1024, 3-NN (weight 1) + residual head",
    "inp_former_mem1024k3_w2_res": "INP-Former + extrinsic memory 1024, 3-NN, memory weight 2 + residual head",
    "residual_only": "residual head's mask alone (reference, not a candidate)",
}


def head_labels() -> dict[str, str]:
    """LABELS of every head variant's rows: the default head's label, with the head named."""
    out: dict[str, str] = {}
    for head, fields in HEADS.items():
        what = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in fields.items())
        out[f"inp_former_{head}"] = f"INP-Former ({what}), pure"
        for name in head_costs():
            if name.startswith(f"inp_former_{head}_"):
                base = LABELS[name.replace(f"_{head}", "", 1)]
                out[name] = base.replace("INP-Former", f"INP-Former ({what})", 1)
    return out


LABELS |= head_labels()


def write_md(q: dict) -> None:
    cats = q["categories"]
    short = [c.split("/")[-1] for c in cats]
    lines = [f"## Quality: INP-Former (+ extrinsic memory) vs the strongest kNN bank ({time.strftime('%Y-%m-%d')})", "",
             (f"bench_memory.py per category and seed (`bash benchmarks/gpu_quality.sh` on a GPU host; on the CPU one "
             f"process per category and seed, two at a time), bench_knn.py and bench_fewshot.py per category, then "
             f"`bench_memory.py --aggregate --from DIR`; speed from `--speed`. Accuracy run on {q['machine']}"
             f"{'' if 'cuda' in q['machine'].lower() or 'nvidia' in q['machine'].lower() else ' (no GPU: the shared 2-core machine, two runs at once beside CI and test jobs; accuracy does not depend on the load)'}. Seeds "
             f"{q['seeds']}; every row is the mean over the 4 categories, then the mean over seeds; spread = max - min "
             "of the per-seed means. Same EfficientNet-Lite0 features at 256x256 for all; the fit / held-out split "
             "(68 / 12 normals) is fixed, the seed varies initialisation, batches, coreset start and kNN sample. "
             "The kNN bank uses all 80 training normals; the INP-Former rows train on the 68 and standardise on the 12; "
             "the `k3` memories are standardised with a bank of the 68 and then refilled from all 80 (the earlier "
             "memory rows keep the 68-image bank). A `knn_*` row with its seeds named ran only those (a 10 % coreset costs "
             "~10x a 1 % one on a CPU). "
             "Pixel metrics and AUPRO (30 % FPR) at 256x256."), "",
             ("Decision rule (written in bench_memory.py before the run, `decide`): a candidate wins if its mean I-AUROC, "
              "P-AUROC and AUPRO are each >= the best kNN row's mean of that metric; among winners the cheapest (bank "
              "rows), unless a dearer winner is better on a metric by more than the seed spread and worse on none by more "
              "than that. Weights 1 and 2 are both fixed, category-free rules (each map standardised on the held-out "
              "normals, then summed with that weight)."), "",
             "| method | I-AUROC | P-AUROC | AUPRO | " + " | ".join(f"{c} I / P / PRO" for c in short) + " |",
             "|---" * (4 + len(cats)) + "|"]
    by_m = q.get("seeds_by_method", {})
    for m, v in q["mean"].items():
        if m in by_m:
            v = v | {"_seeds": by_m[m]}
        cells = [" / ".join(fmt(q["per_category"][c][m][k], 3) for k in KEYS) for c in cats]
        note = f", seeds {v['_seeds']}" if "_seeds" in v else ""
        lines.append(f"| {LABELS.get(m, m)} (`{m}`{note}) | " + " | ".join(f"{fmt(v[k])} ± {v['spread'][k]:.3f}" for k in KEYS)
                     + " | " + " | ".join(cells) + " |")
    bar = q["knn_bar"]
    bm = q.get("knn_bar_method", {})
    lines += ["", (f"Bar (best kNN per metric): I-AUROC {bar['image_auroc']:.4f}, P-AUROC {bar['pixel_auroc']:.4f}, "
              f"AUPRO {bar['aupro']:.4f}" + (f" (from {', '.join(f'`{bm[k]}`' for k in KEYS)})" if bm else "")
              + ". Margins (candidate - bar):"), ""]
    for m, d in q["margin_vs_bar"].items():
        # a margin that rounds to zero is shown to 5 decimals: its sign decides the rule
        exact = {k: q["mean"][m][k] - bar[k] for k in KEYS}
        lines.append(f"- `{m}`: " + ", ".join(f"{k} {exact[k]:+.5f}" if abs(exact[k]) < 5e-5 else f"{k} {d[k]:+.4f}"
                                              for k in KEYS))
    lines += ["", "Winners under the rule: " + (", ".join(f"`{w}`" for w in q["winners"]) if q["winners"] else
                                                "**none** - the default stays the pure INP-Former (`memory_size` 0).")]
    if q.get("winners_below_speed_floor"):
        lines += ["", "Winners on accuracy but below the speed floor (not eligible): "
                  + ", ".join(f"`{m}`" for m in q["winners_below_speed_floor"]) + "."]
    if q.get("chosen"):
        lines += ["", f"Chosen: `{q['chosen']['method']}` ({q['chosen']['why']})."]
    if q.get("knn_previous_seed0_cpu"):
        lines += ["", ("The kNN rows now have the same seeds as the rest (the coresets and the search ran on the GPU); their "
                       "earlier seed-0-only CPU values are kept in quality.json as `knn_previous_seed0_cpu`.")]
    sp = q.get("speed")
    if sp:
        load = sp.get("load_avg_before")
        lines += ["", f"Speed (ONNX Runtime fp32, batch {sp['batch']}, {sp['threads']} threads, {sp['machine']}, "
                  "round-robin in one process" + (f", {sp.get('rounds', 3)} rounds, load average {load[0]:.1f} at the start"
                                                  if load else "") + "): " + ", ".join(
                      f"{n} {v:.1f} img/s ({sp['ratio_to_yardstick'][n]:.2f}x)" for n, v in sp["images_per_s"].items()) + "."]
    if by_m:
        kept = q.get("kept_from_previous_run")
        lines += ["", ("Rows marked with seeds have only the seeds shown (their spread is over those seeds, 0 for one seed)"
                       + (f"; {', '.join(f'`{m}`' for m in kept)} kept from an earlier run (CPU, `bench_fewshot.py`)"
                          if kept else "") + ".")]
    chk = q.get("knn_cpu_check")
    if chk:
        lines += ["", (f"`knn_r20k` / `knn_r20k_top1` recomputed by `bench_knn.py` against `bench_memory.py`'s rows "
                       f"(new - old; {chk.get('note', '')}): " + json.dumps(chk.get("new_minus_old", {})) + ".")]
    tw = q.get("train_wall")
    if tw:
        lines += ["", f"`lineinspect train` wall time on 2 cores ({tw['conditions']}): " + ", ".join(
            f"{n} {v:.0f} s" for n, v in tw["seconds"].items()) + "."]
    ts = [t for v in q["train_s"].values() for t in v if t is not None]
    lines += ["", (f"Training seconds per category and seed in these runs (the `train()` call: INP-Former with its "
              f"1024-row memory, features cached, two processes at once; {q['machine']}): "
              f"{min(ts):.0f}-{max(ts):.0f} s; CPU training time is reported in README.")]
    for head, per_cat in (q.get("train_s_heads") or {}).items():
        hs = [t for v in per_cat.values() for t in v if t is not None]
        if hs:
            where = (q.get("machine_heads") or {}).get(head) or "?"
            lines.append(f"Head `{head}` ({', '.join(f'{k} {v}' for k, v in HEADS[head].items())}), trained as its "
                         f"own models the same way ({where}): {min(hs):.0f}-{max(hs):.0f} s.")
    write_section("quality", "\n".join(lines))


# README's table: the rows a user chooses between (the default, the presets and flags it documents, the cheapest
# pairs on each head, the fastest pairing) and the memory alone as a reference; every row is in RESULTS.md.
README_ROWS = ("inp_former", "inp_former_mem512k3", "inp_former_mem512k3_w2", "inp_former_mem2048k1cos_w2",
               "inp_former_mem1024k3dual_w2", "inp_former_mem512k3dual_w2", "inp_former_mem384k3dual_w2",
               "inp_former_mem256k3dual_w2", "inp_former_mem1024k3dual_s16_w2", "inp_former_dec2_mem512k3dual_w2",
               "inp_former_w64_mem512k3dual_w2", "inp_former_w64_mem384k3dual_w2", "memory1024k3dual_only")


def speed_cell(q: dict, method: str) -> str:
    """A row's measured ORT batch-8 speed against the encoder-only yardstick (``quality_speed.json``), "n/a" for
    graphs the product does not export (kNN banks, a memory alone) or never timed."""
    ratio = (q.get("speed") or {}).get("ratio_to_yardstick", {}).get(speed_key(method))
    if ratio is None:
        return "n/a"
    return f"**{ratio:.2f}x**" if ratio < SPEED_FLOOR else f"{ratio:.2f}x"


def write_readme_table(q: dict, path: Path | None = None) -> None:
    """README's generated quality table (between ``<!-- quality-table:begin/end -->``): the candidates with their
    measured speed, the strongest kNN rows (those that set the bar) and the verdict, from quality.json."""
    from benchmarks.common import REPO

    bar_rows = list(dict.fromkeys(q["knn_bar_method"].values()))
    rows = [m for m in README_ROWS if m in q["mean"]] + bar_rows
    lines = [f"Generated from `benchmarks/results/quality.json`: {len(rows)} of its {len(q['mean'])} rows (every row is "
             f"in RESULTS.md's quality section); seeds {q['seeds']}, mean of the 4 categories, "
             "± = spread of the per-seed means; speed: ONNX Runtime images/s at batch 8 over the encoder alone's, "
             f"median of {(q.get('speed') or {}).get('rounds', '?')} paired rounds of `bench_memory.py --speed`, "
             f"**bold** below the {SPEED_FLOOR}x floor; n/a: not a graph the product exports.", "",
             "| mean of 4 categories | image AUROC | pixel AUROC | AUPRO (30% FPR) | ORT speed (x encoder) |",
             "|---|---|---|---|---|"]
    for m in rows:
        v = q["mean"][m]
        seeds = q.get("seeds_by_method", {}).get(m)
        note = f", seeds {seeds}" if seeds else ""
        lines.append(f"| {LABELS.get(m, m)} (`{m}`{note}) | " + " | ".join(
            f"{v[k]:.3f} ± {v['spread'][k]:.3f}" for k in KEYS) + f" | {speed_cell(q, m)} |")
    bar = q["knn_bar"]
    chosen = q.get("chosen", {}).get("method", "inp_former")
    slow = set(q.get("winners_below_speed_floor") or [])
    if q["winners"] and chosen == "inp_former" and slow >= set(q["winners"]):
        why = f" (every winner runs below {SPEED_FLOOR}x the encoder-only yardstick, ORT batch 8)"
    else:
        why = f" ({q['chosen']['why']})" if q["winners"] and q.get("chosen") else ""
    lines += ["", f"Bar (best kNN per metric): {bar['image_auroc']:.4f} / {bar['pixel_auroc']:.4f} / {bar['aupro']:.4f}. "
              f"Winners on accuracy ({len(q['winners'])} rows): " + (", ".join(f"`{w}`" for w in q["winners"]) or "none")
              + f"; chosen: `{chosen}`" + why + "."]
    write_section("quality-table", "\n".join(lines), path or REPO / "README.md")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category", action="append")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, help="override the training iterations (smoke tests only)")
    ap.add_argument("--out", type=Path, default=WORK / PER_CAT)
    ap.add_argument("--cache", type=Path, help="feature cache folder (default benchmarks/_work/cache_memory); one per "
                                               "process when several run the same category at once")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads of this process (0: torch's default, all cores); with two processes on 2 cores "
                         "give each 1 - oversubscribed, a model trained ~20x slower here")
    ap.add_argument("--reuse-models", action="store_true",
                    help="score a seed's model already under _work/memory_models instead of retraining it (rows added "
                         "later, on the very models the other rows came from)")
    ap.add_argument("--head", choices=sorted(HEADS),
                    help="train and score this lighter head instead (its own model dirs; its rows only, no kNN)")
    ap.add_argument("--aggregate", action="store_true")
    ap.add_argument("--from", dest="src", type=Path,
                    help="with --aggregate: a folder (or .tar.gz) holding memory_runs/, knn_runs/ [, fewshot_runs/] of "
                         "one run (benchmarks/gpu_quality.sh's $OUT): rebuild quality.json and RESULTS.md from it")
    ap.add_argument("--speed", action="store_true", help="ORT batch-8 speed vs the encoder-only yardstick")
    ap.add_argument("--rounds", type=int, default=3, help="--speed: round-robin rounds (median)")
    a = ap.parse_args(argv)
    if a.speed:
        res = speed(rounds=a.rounds)
        (RESULTS_DIR / "quality_speed.json").write_text(json.dumps(res, indent=1))
        print(json.dumps(res, indent=1))
        return 0
    if a.aggregate and a.src:
        q = aggregate_from(a.src)
        print(json.dumps({k: q[k] for k in ("seeds", "knn_bar", "knn_bar_method", "margin_vs_bar", "winners", "chosen")},
                         indent=1))
        return 0
    if a.aggregate:
        sp = RESULTS_DIR / "quality_speed.json"
        payload = aggregate(a.out, {"speed": json.loads(sp.read_text())} if sp.exists() else {})
        (RESULTS_DIR / "quality.json").write_text(json.dumps(payload, indent=1))
        write_md(payload)
        print(json.dumps({k: payload[k] for k in ("knn_bar", "margin_vs_bar", "winners")}, indent=1))
        return 0
    if a.threads:
        torch.set_num_threads(a.threads)
    root = data_root()
    for cat in a.category or []:
        run_category(root, cat, a.seeds, a.device, a.out, a.iters, cache_dir=a.cache, reuse=a.reuse_models,
                     head=a.head or "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
