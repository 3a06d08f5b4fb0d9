"""The drift statistic on synthetic camera frames: in-limit streams stay quiet, changes alarm."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from inference.drift import (
    CameraDrift,
    DriftConfig,
    ImageReference,
    RegistryCalibration,
    calibration_p99,
    shift_pct,
    to_grey,
)


def _frame(rng: np.random.Generator, dx: float = 0.0, gain: float = 0.0, blur: float = 0.0) -> np.ndarray:
    """A part (bright disc with a cross) on a textured background, with camera noise."""
    img = np.full((200, 240), 60, np.float32) + rng.normal(0, 4, (200, 240)).astype(np.float32)
    cx, cy = 120 + int(dx * 240 / 100) + int(rng.integers(-2, 3)), 100 + int(rng.integers(-2, 3))
    cv2.circle(img, (cx, cy), 50, 170, -1)
    cv2.line(img, (cx - 30, cy), (cx + 30, cy), 40, 5)
    cv2.line(img, (cx, cy - 30), (cx, cy + 30), 40, 5)
    if blur:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    return np.clip(img + gain, 0, 255).astype(np.uint8)


def _run(cfg: DriftConfig, n_pre: int, n_post: int, seed: int = 0, **change: float) -> int | None:
    rng = np.random.default_rng(seed)
    d = CameraDrift(cfg)
    for t in range(n_pre + n_post):
        img = _frame(rng, **change) if t >= n_pre else _frame(rng)
        score = float(rng.normal(1.0, 0.1))
        if d.update(t, float(t), score, 1.3, to_grey(img), "v1"):
            return t
    return None


CFG = DriftConfig(window=20, reference_frames=20, confirm_frames=3)


def test_steady_stream_never_alarms():
    for seed in range(3):
        assert _run(CFG, 120, 0, seed) is None


@pytest.mark.parametrize("change", [{"gain": 40.0}, {"blur": 3.0}, {"dx": 8.0}])
def test_image_changes_alarm_after_the_change(change):
    t = _run(CFG, 60, 60, **change)
    assert t is not None and 60 <= t < 60 + CFG.window + CFG.confirm_frames


def test_score_median_above_calibration_p99_alarms_and_onset_is_window_start():
    d = CameraDrift(CFG)
    fired = None
    for t in range(80):
        score = 1.0 if t < 40 else 2.0  # p99 is 1.3: from frame 40 every frame scores above it
        if d.update(t, float(t), score, 1.3, None, "v1"):
            fired = t
            break
    assert fired is not None and 40 < fired < 40 + CFG.window
    b = d.breaches()
    assert [x.kind for x in b] == ["score"] and b[0].value > 1.0
    assert d.onset.frame_id == fired - CFG.window + 1


def test_a_new_model_version_restarts_the_score_window():
    d = CameraDrift(CFG)
    for t in range(CFG.window):
        d.update(t, float(t), 2.0, 1.0, None, "v1")
    assert d.breaches()
    d.update(CFG.window, 0.0, 0.5, 1.0, None, "v2")
    assert not d.breaches()


def test_reference_round_trips_and_shift_is_measured_in_percent():
    rng = np.random.default_rng(1)
    greys = [to_grey(_frame(rng)) for _ in range(10)]
    ref = ImageReference.build(greys)
    assert ref.aligned
    back = ImageReference.from_stored(ref.to_stats(), ref.to_png())
    assert back.brightness == pytest.approx(ref.brightness)
    dx, dy, peak = shift_pct(back.image, to_grey(_frame(rng, dx=8.0)))
    assert dx == pytest.approx(8.0, abs=1.5) and abs(dy) < 1.5 and peak > 0.2


def test_calibration_p99_prefers_the_quantile():
    assert calibration_p99({"quantiles": {"p99": 0.7}, "threshold": 0.9}) == 0.7
    assert calibration_p99({"threshold": 1.1, "threshold_margin": 1.1}) == pytest.approx(1.0)
    assert calibration_p99({}) is None


def test_grey_decode_is_reduced_and_close_to_the_full_decode() -> None:
    """A camera-size JPEG is decoded luma-only at a DCT scale, not at full resolution, for the checks."""
    import cv2

    from inference.drift import DRIFT_OVERSAMPLE, decode_grey
    from ingest.envelope import decode_grey_reduced, encode_image

    rng = np.random.default_rng(3)
    img = cv2.resize(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8), (2448, 2048), interpolation=cv2.INTER_CUBIC)
    data = encode_image(img, "jpeg", 92)
    # the drift checks decode at 1/4 (oversample 2), the model at 1/2 (the default 4)
    assert decode_grey_reduced(data, (256, 256), oversample=DRIFT_OVERSAMPLE).shape == (512, 612)
    assert decode_grey_reduced(data, (256, 256)).shape == (1024, 1224)
    full = to_grey(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE))
    got = decode_grey(data)
    assert got is not None and got.shape == full.shape
    assert float(np.abs(got - full).mean()) < 1.0
    assert decode_grey(b"\xff\xd8 not a jpeg") is None


def test_the_monitor_uses_the_pixels_it_is_given(monkeypatch) -> None:
    """With the consumer's pixels the monitor never decodes the frame bytes again."""
    import inference.drift as drift

    def no_decode(payload: bytes) -> None:
        raise AssertionError("decoded the bytes again")

    monkeypatch.setattr(drift, "decode_grey", no_decode)
    assert drift.DriftMonitor.takes_images
    seen: list[np.ndarray] = []

    class _Drift:
        reference_built = False

        def update(self, frame_id, ts, score, p99, grey, version):
            seen.append(grey)
            return []

    class _Cam:
        drift = _Drift()
        recent: list = []
        alarm_id = None

    mon = drift.DriftMonitor.__new__(drift.DriftMonitor)
    mon._maybe_refresh = lambda: None  # type: ignore[method-assign]
    mon._cam = lambda product, camera: _Cam  # type: ignore[method-assign,assignment]
    mon.calibration = lambda product, version: None

    class _Row:
        product, camera, frame_id, captured_at, score, model_version, engine = "p", "c", 1, 0.0, 0.1, "v1", "onnx"

    class _Env:
        encoding, payload = "jpeg", b"unused"

    image = np.full((256, 256, 3), 77, np.uint8)
    mon([_Row()], [_Env()], [image])
    assert len(seen) == 1 and seen[0].shape == (256, 256) and float(seen[0].mean()) == 77.0


def test_monitor_flags_rows_of_open_alarms_with_one_lookup_per_refresh(tmp_path, monkeypatch):
    """``before_store``: rows of a camera with an open alarm are ``drifted``; the open alarms are looked up
    once per refresh (not per frame or batch); an alarm opened elsewhere is learnt at the next refresh
    and the frames stored meanwhile are flagged; a dismissal stops the flagging."""
    from inference.drift import DriftMonitor
    from lineinspect.settings import Settings
    from storage.drift import DriftStore
    from storage.store import ResultStore
    from tests.storage.conftest import make_row

    with ResultStore.open(f"sqlite:///{tmp_path / 'm.sqlite'}") as store:
        ds = DriftStore.of(store)
        calls = []
        real = ds.open_alarms
        monkeypatch.setattr(ds, "open_alarms", lambda product=None: calls.append(product) or real(product))
        monitor = DriftMonitor(Settings(home=tmp_path), ds, lambda p, v: None, refresh_s=3600.0)
        t0 = 1_000_000.0

        def batch(first: int, n: int = 10) -> list:
            rows = [make_row(i, captured_at=t0 + i) for i in range(first, first + n)]
            monitor.before_store(rows)
            store.save_results(rows)
            return rows

        assert not any(r.drifted for r in batch(0) + batch(10) + batch(20))
        assert len(calls) == 1  # the camera's first sight; 30 frames, 3 batches, no other lookup
        aid, _ = ds.open_alarm("bolt", "cam1", kinds=["score"], onset_at=t0 + 25, onset_frame_id=25,
                               model_version="v0001", evidence={})  # another consumer's alarm
        assert not any(r.drifted for r in batch(30))  # not learnt before the refresh is due
        monitor.refresh_s = 0.0
        assert all(r.drifted for r in batch(40))
        assert len(calls) == 2  # one lookup for the whole batch
        flags = [r["drifted"] for r in store.results_for_camera("cam1")]
        assert flags == [False] * 25 + [True] * 25  # onset..learnt flagged when learnt
        ds.dismiss(aid, by="ana")
        assert not any(r.drifted for r in batch(50))


def test_measuring_a_shift_leaves_the_reference_untouched_and_late_frames_stay_accurate():
    """cv2.phaseCorrelate windows its inputs in place: the stored reference must not decay frame by frame
    (it did: after ~100 frames the peaks had fallen to noise and a steady tire stream alarmed on position)."""
    rng = np.random.default_rng(3)
    ref = ImageReference.build([to_grey(_frame(rng)) for _ in range(20)])
    before = ref.image.copy()
    g = to_grey(_frame(rng, dx=5.0))
    first = shift_pct(ref.image, g)
    for _ in range(200):
        assert shift_pct(ref.image, g) == first
    np.testing.assert_array_equal(ref.image, before)
    assert _run(CFG, 400, 0, seed=4) is None  # a long steady stream stays quiet


class _Registry:
    def __init__(self, *infos: SimpleNamespace) -> None:
        self.infos = list(infos)

    def list(self, product: str) -> list[SimpleNamespace]:
        return self.infos


def test_registry_calibration_reads_the_model_dir_through_its_owner(tmp_path: Path) -> None:
    from lineinspect import model_meta

    with_file, without = tmp_path / "v1", tmp_path / "v2"
    with_file.mkdir()
    without.mkdir()
    model_meta.write_json(with_file / model_meta.CALIBRATION, {"threshold": 0.9, "quantiles": {"p99": 0.6}})
    cal = RegistryCalibration(_Registry(
        SimpleNamespace(version="v1", path=with_file, metrics={}, threshold=0.9),
        SimpleNamespace(version="v2", path=without, metrics={}, threshold=1.2),
        SimpleNamespace(version="v3", path=without, metrics={"calibration": {"quantiles": {"p99": 0.4}}}, threshold=1.0)))
    assert cal("p", "v1") == 0.6             # calibration.json of the model directory
    assert cal("p", "v2") == pytest.approx(1.2)  # none there: threshold / margin (1)
    assert cal("p", "v3") == 0.4             # the registry row's metrics come first
    assert cal("p", "nope") is None


def test_monitor_keeps_every_drifting_camera_of_a_batch_in_one_call(tmp_path, monkeypatch):
    """While alarms are open on several cameras, a stored batch's frames are kept with one
    ``keep_frames_many`` (one transaction), each camera's frames under its own alarm."""
    from inference.drift import DriftMonitor
    from lineinspect.settings import Settings
    from storage.drift import DriftStore
    from storage.store import ResultStore
    from tests.storage.conftest import make_row

    class _Env:
        encoding = "png"

        def __init__(self, i: int) -> None:
            self.payload = bytes([i % 256, i // 256]) * 32

    with ResultStore.open(f"sqlite:///{tmp_path / 'k.sqlite'}") as store:
        ds = DriftStore.of(store)
        calls = []
        real = ds.keep_frames_many
        monkeypatch.setattr(ds, "keep_frames_many", lambda items, cap: calls.append(items) or real(items, cap))
        monitor = DriftMonitor(Settings(home=tmp_path), ds, lambda p, v: None, refresh_s=0.0)
        t0 = 1_000_000.0
        alarms = {c: ds.open_alarm("bolt", c, kinds=["score"], onset_at=t0, onset_frame_id=0, model_version="v0001",
                                   evidence={})[0] for c in ("cam1", "cam2")}
        rows = [make_row(i, camera=f"cam{1 + i % 3}", captured_at=t0 + i) for i in range(9)]  # cam3 has no alarm
        monitor.before_store(rows)
        store.save_results(rows)
        monitor(rows, [_Env(i) for i in range(9)], [np.full((32, 32), 100, np.uint8)] * 9)
        assert len(calls) == 1
        assert sorted((a, c, [k.frame_id for k in fr]) for a, _p, c, fr in calls[0]) == sorted(
            [(alarms["cam1"], "cam1", [0, 3, 6]), (alarms["cam2"], "cam2", [1, 4, 7])])
        assert ds.count_frames(alarms["cam1"]) == 3 and ds.count_frames(alarms["cam2"]) == 3


def test_memoised_bootstrap_draws_are_the_generators_numbers() -> None:
    """``_Draws`` hands out exactly what ``default_rng(seed).integers`` would, call after call, whether a
    call is served from the memo or the generator has to catch up on the calls it skipped."""
    from inference.drift import _Draws

    memo: dict = {}
    rng = np.random.default_rng(5)
    for trial in range(40):
        seed = int(rng.integers(1, 4))
        sizes = [int(rng.integers(3, 31)) for _ in range(int(rng.integers(1, 5)))]
        ref = np.random.default_rng(seed)
        d = _Draws(seed, memo)
        for n in sizes:
            want = ref.integers(0, n, (200, n))
            got = d.integers(0, n, (200, n))
            assert np.array_equal(got, want), (trial, seed, sizes)
            assert not got.flags.writeable  # shared by later frames: nobody may change it
    assert 0 < len(memo) <= _Draws.MAX_MEMO


def test_fast_row_median_is_numpys_and_nan_falls_back() -> None:
    from inference.drift import _median, _median_se, _row_medians

    rng = np.random.default_rng(2)
    for n in (1, 2, 3, 15, 29, 30):
        a = np.round(rng.normal(size=n), 1)  # ties
        m = a[rng.integers(0, n, (200, n))]
        assert np.array_equal(_row_medians(m), np.median(m, axis=1))
        assert _median(list(a)) == float(np.median(a)) and _median(a.astype(np.float32)) == float(
            np.median(a.astype(np.float32)))
        assert _median_se(list(a), np.random.default_rng(9)) == float(
            np.median(a[np.random.default_rng(9).integers(0, n, (200, n))], axis=1).std())
    with_nan = [1.0, float("nan"), 2.0, 3.0]
    assert np.isnan(_median_se(with_nan, np.random.default_rng(0)))  # np.median's NaN rule, as before
    assert np.isnan(_median(with_nan))


def test_breaches_with_memoised_draws_equal_fresh_generators(monkeypatch) -> None:
    """A stream that drifts: every limit and value breaches() reports is the same as with a fresh
    ``default_rng(len(window))`` per frame and np.median (the code before the memo and the fast medians)."""
    import inference.drift as drift

    def stream(fresh: bool) -> list[list[tuple]]:
        if fresh:  # the formulas before: a fresh generator per frame, np.median everywhere
            monkeypatch.setattr(drift, "_Draws", lambda seed, memo: np.random.default_rng(seed))
            monkeypatch.setattr(drift, "_median", lambda x: float(np.median(x)))
            monkeypatch.setattr(drift, "_row_medians", lambda m: np.median(m, axis=1))
        else:
            monkeypatch.undo()
        rng = np.random.default_rng(11)
        d = CameraDrift(CFG)
        out = []
        for t in range(70):
            img = _frame(rng, dx=4.0 if t >= 45 else 0.0, gain=20.0 if t >= 55 else 0.0)
            d.update(t, float(t), float(rng.normal(1.0, 0.1)), 1.3, to_grey(img), "v1")
            out.append([(b.kind, b.value, b.limit) for b in d.breaches()])
        return out

    memoised, fresh = stream(False), stream(True)
    assert memoised == fresh and any(memoised)  # and the stream did breach
