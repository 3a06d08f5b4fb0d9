"""Deterministic fake inspection history for dashboard tests, demos and query benchmarks.

The history is generated as *specimens* (one physical part seen by each camera of a line, one
view per camera), so frame verdicts, specimen verdicts, per-product thresholds, a defect burst
(to give the control chart something to flag), false alarms, masks, heatmaps, frames, model
versions and consumer health snapshots all agree with each other. Rows go through the ORM's
tables with Core ``executemany`` in chunks, so a million rows take seconds, not minutes.

:class:`SeedTruth` keeps what was written as numpy arrays, so tests check the dashboard's SQL
against numbers computed here in Python, independently of the queries under test.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
from sqlalchemy import Engine, create_engine, func, insert, select

from storage import models as m

VIEWS = ("top", "side")


@dataclass(frozen=True)
class SeedConfig:
    """What to generate. ``end`` defaults to a fixed instant so two runs write identical rows."""

    results: int = 4000                  # approximate number of frame results
    end: float = 1_767_268_800.0         # 2026-01-01T12:00:00Z
    hours: float = 12.0
    products: tuple[str, ...] = ("commutator", "magnetic_tile", "tire")
    lines: int = 2                       # each line has one camera per view
    seed: int = 7
    images: int = 60                     # newest defect frames that get mask + heatmap + frame
    frame_size: tuple[int, int] = (96, 64)  # width, height of the fake frames and masks
    consumers: int = 2
    stats_every_s: float = 10.0
    chunk: int = 50_000

    def __post_init__(self) -> None:
        if self.results <= 0 or self.hours <= 0 or self.lines <= 0 or not self.products:
            raise ValueError("SeedConfig needs results > 0, hours > 0, lines > 0 and at least one product")


@dataclass
class SeedTruth:
    """Per-frame arrays as written (index i = i-th inserted result) plus the entity ids."""

    product_ids: dict[str, int]
    line_ids: dict[str, int]
    camera_ids: dict[str, int]
    product: np.ndarray        # product id per frame
    line: np.ndarray           # line id per frame
    camera: np.ndarray         # camera id per frame
    captured_at: np.ndarray
    score: np.ndarray
    threshold: np.ndarray
    flagged: np.ndarray        # verdict == "defect"
    false_alarm: np.ndarray
    thresholds: dict[str, float]   # active model threshold per product name
    specimens: int
    incomplete_specimens: int
    specimen_defects: int
    consumer_frames: int
    consumer_seconds: float
    image_result_ids: list[int] = field(default_factory=list)

    @property
    def defect(self) -> np.ndarray:
        """Counted defects: flagged and not overridden as a false alarm."""
        return self.flagged & ~self.false_alarm


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover - cv2 only fails on invalid arrays
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _images(rng: np.random.Generator, product_index: int, size: tuple[int, int], thr: float,
            score: float) -> tuple[bytes, bytes, bytes]:
    """(mask_png, heat_png, frame_png) of one fake defect: a blob whose position depends on the
    product, so the accumulated location heatmap has a visible hot spot per product."""
    w, h = size
    cx = int(w * (0.25 + 0.25 * (product_index % 3)) + rng.normal(0, w * 0.05))
    cy = int(h * (0.35 + 0.3 * (product_index % 2)) + rng.normal(0, h * 0.05))
    ax, ay = int(rng.integers(3, max(4, w // 8))), int(rng.integers(3, max(4, h // 8)))
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (cx, cy), (ax, ay), float(rng.uniform(0, 180)), 0, 360, 255, -1)
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-(((xx - cx) / (1.5 * ax)) ** 2 + ((yy - cy) / (1.5 * ay)) ** 2))
    heat = np.clip(blob * min(score / (2 * thr), 1.0) * 255, 0, 255).astype(np.uint8)  # 0..255 = 0..2x thr
    frame = (110 + 25 * np.sin(xx / 5.0) + rng.normal(0, 6, (h, w))).clip(0, 255).astype(np.uint8)
    frame[mask > 0] = (frame[mask > 0] * 0.45).astype(np.uint8)
    return _png(mask), _png(heat), _png(frame)


def seed_history(engine: Engine, cfg: SeedConfig = SeedConfig()) -> SeedTruth:
    """Create the tables if needed and write a deterministic history into an empty database."""
    m.Base.metadata.create_all(engine)
    rng = np.random.default_rng(cfg.seed)
    t0 = cfg.end - cfg.hours * 3600.0
    with engine.begin() as conn:
        if conn.execute(select(func.count()).select_from(m.InspectionResult.__table__)).scalar_one():
            raise ValueError("seed_history writes into an empty database; inspection_results already has rows")
        for i, name in enumerate(cfg.products):
            conn.execute(insert(m.table(m.Product)).values(name=name, expected_views=len(VIEWS), created_at=t0 - 86400 + i))
        for li in range(cfg.lines):
            conn.execute(insert(m.table(m.Line)).values(name=f"line-{li + 1}", created_at=t0 - 86400))
        product_ids = dict(conn.execute(select(m.Product.name, m.Product.id)).all())
        line_ids = dict(conn.execute(select(m.Line.name, m.Line.id)).all())
        for li in range(cfg.lines):
            for view in VIEWS:
                conn.execute(insert(m.table(m.Camera)).values(
                    name=f"cam-{li + 1}-{view}", line_id=line_ids[f"line-{li + 1}"], created_at=t0 - 86400))
        camera_ids = dict(conn.execute(select(m.Camera.name, m.Camera.id)).all())

    n_prod, n_views = len(cfg.products), len(VIEWS)
    n_spec = max(1, cfg.results // n_views)
    spec_t = np.sort(rng.uniform(t0, cfg.end - 1.0, n_spec))
    spec_prod = rng.integers(0, n_prod, n_spec)
    spec_line = rng.integers(0, cfg.lines, n_spec)
    # about 3% of specimens lose their last view (a camera dropped a frame)
    spec_views = np.where(rng.random(n_spec) < 0.03, n_views - 1, n_views)
    thr_active = np.array([0.5 + 0.1 * i for i in range(n_prod)])
    # the first half of the window ran the previous model version with a 10% higher threshold
    mid = t0 + cfg.hours * 1800.0

    fr_spec = np.repeat(np.arange(n_spec), spec_views)
    fr_view = np.concatenate([np.arange(v) for v in spec_views])
    n = fr_spec.size
    fr_prod = spec_prod[fr_spec]
    fr_line = spec_line[fr_spec]
    fr_t = spec_t[fr_spec] + fr_view * 0.05
    fr_thr = thr_active[fr_prod] * np.where(fr_t < mid, 1.1, 1.0)
    score = rng.gamma(4.0, 0.06, n) * (thr_active[fr_prod] / 0.5)
    # a defective specimen pushes its views' scores up; a 30-minute burst on product 0 at 2/3 of the window
    burst = (fr_prod == 0) & (fr_t > t0 + cfg.hours * 2400.0) & (fr_t < t0 + cfg.hours * 2400.0 + 1800.0)
    spec_bad = rng.random(n_spec) < 0.04
    bad = spec_bad[fr_spec] | (burst & (rng.random(n) < 0.25))
    score = np.where(bad, score + fr_thr * rng.uniform(0.6, 1.5, n), score)
    flagged = score > fr_thr
    false_alarm = flagged & (rng.random(n) < 0.1)
    latency = rng.gamma(6.0, 7.0, n)
    batch = rng.integers(1, 9, n)
    lines_arr = np.array([line_ids[f"line-{i + 1}"] for i in range(cfg.lines)])
    prods_arr = np.array([product_ids[p] for p in cfg.products])
    cam_arr = np.array([[camera_ids[f"cam-{li + 1}-{v}"] for v in VIEWS] for li in range(cfg.lines)])
    fr_cam = cam_arr[fr_line, fr_view]
    frame_no = np.zeros(n, np.int64)
    for cid in np.unique(fr_cam):
        sel = fr_cam == cid
        frame_no[sel] = np.arange(1, int(sel.sum()) + 1)
    w, h = cfg.frame_size
    area = np.where(flagged, rng.integers(20, 400, n), 0)

    results_t = m.table(m.InspectionResult)
    with engine.begin() as conn:
        for a in range(0, n, cfg.chunk):
            rows = []
            for i in range(a, min(n, a + cfg.chunk)):
                t = float(fr_t[i])
                s_idx = int(fr_spec[i])
                pname = cfg.products[int(fr_prod[i])]
                rows.append({
                    "camera_id": int(fr_cam[i]), "frame_id": int(frame_no[i]), "product_id": int(prods_arr[fr_prod[i]]),
                    "line_id": int(lines_arr[fr_line[i]]), "specimen_id": f"{pname}-{s_idx:07d}",
                    "view": VIEWS[int(fr_view[i])], "captured_at": t, "inferred_at": t + float(latency[i]) * 0.0007,
                    "stored_at": t + float(latency[i]) / 1000.0, "score": float(score[i]), "threshold": float(fr_thr[i]),
                    "verdict": "defect" if flagged[i] else "ok", "model_version": "v1" if t < mid else "v2",
                    "engine": "onnx", "infer_ms": float(latency[i]) * 0.4, "latency_ms": float(latency[i]),
                    "batch_size": int(batch[i]), "width": w, "height": h, "defect_area_px": int(area[i]),
                    "false_alarm": bool(false_alarm[i]),
                })
            conn.execute(insert(results_t), rows)

        # specimens: fused with "max" over the views that arrived
        spec_score = np.full(n_spec, -np.inf)
        np.maximum.at(spec_score, fr_spec, score)
        spec_thr = thr_active[spec_prod] * np.where(spec_t < mid, 1.1, 1.0)
        spec_defect = spec_score > spec_thr
        for a in range(0, n_spec, cfg.chunk):
            rows = []
            for k in range(a, min(n_spec, a + cfg.chunk)):
                pname = cfg.products[int(spec_prod[k])]
                rows.append({
                    "product_id": int(prods_arr[spec_prod[k]]), "specimen_id": f"{pname}-{k:07d}",
                    "expected_views": n_views, "received_views": int(spec_views[k]), "score": float(spec_score[k]),
                    "threshold": float(spec_thr[k]), "verdict": "defect" if spec_defect[k] else "ok", "fusion": "max",
                    "complete": bool(spec_views[k] == n_views), "first_seen_at": float(spec_t[k]),
                    "decided_at": float(spec_t[k]) + 2.0, "result_ids": [],
                })
            conn.execute(insert(m.table(m.Specimen)), rows)

        # model registry: v1 retired, v2 active, v3 candidate
        for i, pname in enumerate(cfg.products):
            pid = product_ids[pname]
            for ver, status, thr, created in (
                ("v1", "retired", thr_active[i] * 1.1, t0 - 7 * 86400), ("v2", "active", thr_active[i], mid - 60),
                ("v3", "candidate", thr_active[i] * 0.95, cfg.end - 600),
            ):
                conn.execute(insert(m.table(m.ModelVersion)).values(
                    product_id=pid, version=ver, status=status, path=f"models/{pname}/{ver}", checksum="0" * 64,
                    backbone="efficientnet-lite0", threshold=float(thr),
                    metrics={"image_auroc": round(0.9 + 0.02 * (ver == "v2") + 0.01 * i, 3), "val_normals": 200},
                    data_snapshot={}, parent_version=None if ver == "v1" else f"v{int(ver[1]) - 1}",
                    reason=None, created_at=float(created), promoted_at=float(mid) if status == "active" else None,
                ))

        # consumer health snapshots: frames stored per interval, split across consumers
        edges = np.arange(t0, cfg.end + cfg.stats_every_s, cfg.stats_every_s)
        per_bin, _ = np.histogram(fr_t, edges)
        stats, dlq = [], [0] * cfg.consumers
        for b, count in enumerate(per_bin):
            for c in range(cfg.consumers):
                frames = int(count) // cfg.consumers + (1 if c < int(count) % cfg.consumers else 0)
                dlq[c] += int(rng.random() < 0.002)
                stats.append({
                    "consumer": f"consumer-{c + 1}", "at": float(edges[b + 1]), "frames": frames,
                    "seconds": cfg.stats_every_s, "mean_batch": float(rng.uniform(3, 8)),
                    "p50_latency_ms": float(rng.normal(40, 4)), "p99_latency_ms": float(rng.normal(120, 15)),
                    "lag": int(rng.integers(0, 30)), "dlq_total": dlq[c], "engine": "onnx", "engine_ok": True,
                })
        for a in range(0, len(stats), cfg.chunk):
            conn.execute(insert(m.table(m.ConsumerStat)), stats[a:a + cfg.chunk])

        # images for the newest flagged frames (a bounded number, like a retention policy would keep)
        newest = np.flatnonzero(flagged)[::-1][: cfg.images]
        image_ids = []
        for i in newest:
            rid = conn.execute(select(results_t.c.id).where(
                results_t.c.camera_id == int(fr_cam[i]), results_t.c.frame_id == int(frame_no[i]))).scalar_one()
            mask_png, heat_png, frame_png = _images(rng, int(fr_prod[i]), cfg.frame_size, float(fr_thr[i]), float(score[i]))
            conn.execute(insert(m.table(m.Mask)).values(result_id=rid, png=mask_png, heat_png=heat_png, width=w, height=h))
            conn.execute(insert(m.table(m.FrameImage)).values(result_id=rid, encoding="png", data=frame_png))
            image_ids.append(int(rid))

    return SeedTruth(
        product_ids=product_ids, line_ids=line_ids, camera_ids=camera_ids,
        product=prods_arr[fr_prod], line=lines_arr[fr_line], camera=fr_cam, captured_at=fr_t, score=score,
        threshold=fr_thr, flagged=flagged, false_alarm=false_alarm,
        thresholds={p: float(thr_active[i]) for i, p in enumerate(cfg.products)},
        specimens=n_spec, incomplete_specimens=int((spec_views < n_views).sum()),
        specimen_defects=int(spec_defect.sum()), consumer_frames=int(per_bin.sum()),
        consumer_seconds=float(len(per_bin) * cfg.stats_every_s), image_result_ids=image_ids,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m storage.seed --db sqlite:///demo.sqlite --results 100000``"""
    ap = argparse.ArgumentParser(description="Write a deterministic fake inspection history (demos, benchmarks).")
    ap.add_argument("--db", required=True, help="SQLAlchemy URL of an empty database")
    ap.add_argument("--results", type=int, default=SeedConfig.results)
    ap.add_argument("--hours", type=float, default=SeedConfig.hours)
    ap.add_argument("--end", type=float, default=None, help="epoch seconds of the newest row (default: now)")
    ap.add_argument("--seed", type=int, default=SeedConfig.seed)
    args = ap.parse_args(argv)
    cfg = SeedConfig(results=args.results, hours=args.hours, seed=args.seed,
                     end=args.end if args.end is not None else time.time())
    from storage.db import upgrade

    upgrade(args.db)  # the migrated schema, so real consumers can keep writing into a demo database
    t = time.perf_counter()
    truth = seed_history(create_engine(args.db), cfg)
    print(f"seeded {truth.captured_at.size} results, {truth.specimens} specimens in {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
