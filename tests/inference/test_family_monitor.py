"""The families post-store step with a real (tiny) registered model: flagged frames' regions are
embedded, grouped and stored; after a restart the families (and an operator's name) carry on."""

from __future__ import annotations

import time

import cv2

from inference.families import FamilyMonitor
from ingest.envelope import FrameEnvelope, encode_image
from ingest.simulator import LineSimulator
from storage.families import FamilyStore
from storage.records import ResultRow
from tests.training.test_retrain import SIZE, add_frames, options, registry, store  # noqa: F401 - fixtures
from training.retrain import retrain


def _flagged(sim: LineSimulator, ids: range, version: str) -> tuple[list[ResultRow], list[FrameEnvelope]]:
    rows, envs = [], []
    for i in ids:
        f = sim.frame(i, defect=("scratch", "stain")[i % 2])
        payload = encode_image(f.image, "png")
        now = time.time()
        h, w = f.image.shape[:2]
        rows.append(ResultRow(product="widget", line="L1", camera="cam-1", frame_id=i, captured_at=now, inferred_at=now,
                              score=1.0, threshold=0.5, verdict="defect", model_version=version, engine="torch",
                              infer_ms=1.0, batch_size=1, width=w, height=h, defect_area_px=int(f.mask.sum()),
                              mask_png=cv2.imencode(".png", f.mask.astype("uint8") * 255)[1].tobytes(),
                              frame_bytes=payload, frame_encoding="png"))
        envs.append(FrameEnvelope(product="widget", line="L1", camera="cam-1", frame_id=i, payload=payload,
                                  encoding="png", shape=f.image.shape, capture_ts=now))
    return rows, envs


def test_regions_are_embedded_grouped_stored_and_names_survive_a_restart(store, registry):  # noqa: F811
    add_frames(store, "widget", 24)
    version = retrain(store, registry, "widget", options()).version
    sim = LineSimulator("widget", size=SIZE, seed=5)
    fs = FamilyStore.of(store)
    rows, envs = _flagged(sim, range(12), version)
    store.save_results(rows)
    FamilyMonitor(store, fs, registry, warmup=6)(rows, envs)
    pareto = fs.pareto("widget")
    frames = sum(p["frames"] for p in pareto)  # a frame whose defect is under MIN_REGION_PX has no region
    assert 10 <= frames <= 12 and sum(p["regions"] for p in pareto) >= frames
    thr, fams = fs.load("widget")
    assert thr is not None and thr > 0 and fams
    top = pareto[0]["family"]
    assert fs.name_family("widget", top, "scratch-like")

    more, more_envs = _flagged(sim, range(12, 24), version)  # a restarted consumer: a new monitor
    store.save_results(more)
    FamilyMonitor(store, fs, registry, warmup=6)(more, more_envs)
    after = {p["family"]: p for p in fs.pareto("widget")}
    assert after[top]["name"] == "scratch-like"
    assert sum(p["frames"] for p in after.values()) >= frames + 10
    assert fs.load("widget")[0] == thr  # the threshold was kept, not re-learnt


def test_one_encoder_pass_and_one_id_lookup_per_batch_and_drifted_rows_skipped(store, registry, monkeypatch):  # noqa: F811
    from inference.model.inp_former import InpFormer

    add_frames(store, "widget", 24)
    version = retrain(store, registry, "widget", options()).version
    rows, envs = _flagged(LineSimulator("widget", size=SIZE, seed=6), range(12), version)
    for r in rows[8:]:
        r.drifted = True  # stored while the camera had an open drift alarm
    store.save_results(rows)
    encodes, lookups = [], []
    real_encode, real_ids = InpFormer.encode, store.result_ids
    monkeypatch.setattr(InpFormer, "encode", lambda self, x: encodes.append(len(x)) or real_encode(self, x))
    monkeypatch.setattr(store, "result_ids", lambda keys: lookups.append(len(keys)) or real_ids(keys))
    fs = FamilyStore.of(store)
    FamilyMonitor(store, fs, registry, warmup=4)(rows, envs)
    assert encodes == [8] and lookups == [8]  # the 8 undrifted flagged frames, together
    assert 6 <= sum(p["frames"] for p in fs.pareto("widget")) <= 8
