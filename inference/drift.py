"""Drift monitor: per camera, is the stream still what the active model was calibrated on?

Runs after a batch is durably stored (:attr:`inference.consumer.InferenceConsumer.post_store`), so
it never delays or endangers a commit. Two kinds of evidence, each in units an engineer reads:

* **score**: the median score of the camera's last ``window`` frames against the active model's
  calibration (its 99th-percentile score on held-out normal images). Normal frames have a median
  near the calibration's p50; defects mixed in move the median little; a light change, a moved
  camera or a new material lot moves all frames at once, and the median above p99 is that.
* **image checks, no model**: brightness (mean grey level, 0-255), sharpness (variance of the
  Laplacian, as a ratio to the reference) and part position (phase-correlation shift against the
  reference mean frame, % of the frame) of the window's median frame against a reference built from
  the camera's first ``reference_frames`` frames. A limit is the larger of an engineering floor
  (``drift_brightness_grey`` ...) and ``drift_min_std_errors`` standard errors of the difference of
  two medians (window vs reference) under the camera's own frame-to-frame variation, so a camera
  whose normal frames vary a lot gets a wider limit instead of false alarms. Position is a
  measurement only where frames align: the check runs only when the reference frames align with
  each other AND the window's frames align with the reference (median phase-correlation peak
  >= 0.6 for both); on a texture without a registered part a "shift" is where the noise peaked.
  (Before, only the reference was gated: a tire reference at 0.61, inflated by repeated frames, let
  window frames with median peaks of ~0.35 through, and their heavy-tailed shifts raised a false
  position alarm.) Identical frames count once in a reference (a frozen camera repeating one image
  must not make the reference look aligned or its spreads small).

A check must breach ``confirm_frames`` frames in a row. The alarm's onset is the first frame of the
window that breached. While an alarm is open the camera's frames are kept (``drift_frames``) as the
candidate training set of a re-baseline; the alarm closes when a re-baselined model is promoted,
and the camera's reference and windows start again from the next frames.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from lineinspect import model_meta
from lineinspect.logs import kv
from lineinspect.settings import Settings

if TYPE_CHECKING:  # types only: storage is imported where a step is built
    from ingest.envelope import FrameEnvelope
    from storage.drift import DriftStore
    from storage.records import ResultRow
    from storage.registry import ModelRegistry
    from storage.store import ResultStore

log = logging.getLogger("lineinspect.drift")

CHECK_SIZE = 256          # frames are compared at this square size (brightness, sharpness)
ALIGN_SIZE = 128          # and aligned at this one (phase correlation)
MIN_ALIGN_PEAK = 0.6      # phase-correlation peak below which a frame's shift is not a measurement


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds of the drift checks (see :class:`lineinspect.settings.Settings` ``drift_*``)."""

    window: int = 30
    reference_frames: int = 30
    score_ratio: float = 1.0
    brightness_grey: float = 12.0
    sharpness_ratio: float = 1.6
    position_pct: float = 3.0
    min_std_errors: float = 4.0
    confirm_frames: int = 3
    keep_frames: int = 1000

    @classmethod
    def from_settings(cls, s: Settings) -> DriftConfig:
        return cls(window=s.drift_window, reference_frames=s.drift_reference_frames, score_ratio=s.drift_score_ratio,
                   brightness_grey=s.drift_brightness_grey, sharpness_ratio=s.drift_sharpness_ratio,
                   position_pct=s.drift_position_pct, min_std_errors=s.drift_min_std_errors,
                   confirm_frames=s.drift_confirm_frames, keep_frames=s.drift_keep_frames)


# --- image measurements ------------------------------------------------------------------------

def to_grey(image: np.ndarray) -> np.ndarray:
    """Square float32 grey frame at :data:`CHECK_SIZE` (RGB/BGR/grey in, any size)."""
    g = image if image.ndim == 2 else cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2GRAY)
    return cv2.resize(g, (CHECK_SIZE, CHECK_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)


DRIFT_OVERSAMPLE = 2.0


def decode_grey(payload: bytes) -> np.ndarray | None:
    """Decode an encoded frame straight to grey at the check size (``None`` when it does not decode);
    a JPEG luma-only at the DCT scale that keeps :data:`CHECK_SIZE` faithful (a camera-size frame is not
    decoded at full resolution just to be shrunk to 256 px). Oversample 2, not the model's default 4:
    the checks compare image statistics (brightness, contrast, sharpness) against a baseline taken the
    same way, and within 1 grey level of the full decode is faithful enough for them."""
    from ingest.envelope import decode_grey_reduced

    arr = decode_grey_reduced(payload, (CHECK_SIZE, CHECK_SIZE), oversample=DRIFT_OVERSAMPLE)
    return None if arr is None else to_grey(arr)


def brightness(grey: np.ndarray) -> float:
    """Mean grey level (0-255)."""
    return float(grey.mean())


def log_sharpness(grey: np.ndarray) -> float:
    """log of the variance of the Laplacian (differences are log ratios: blur lowers it)."""
    return float(math.log(float(cv2.Laplacian(grey, cv2.CV_32F).var()) + 1e-6))


def _align_image(grey: np.ndarray) -> np.ndarray:
    small = cv2.resize(grey, (ALIGN_SIZE, ALIGN_SIZE), interpolation=cv2.INTER_AREA)
    return (small - small.mean()).astype(np.float32)


_HANN: dict[int, np.ndarray] = {}


def shift_pct(reference: np.ndarray, grey: np.ndarray) -> tuple[float, float, float]:
    """(dx %, dy % of the frame, phase-correlation peak) of ``grey`` against an aligned reference image."""
    win = _HANN.get(ALIGN_SIZE)
    if win is None:
        win = _HANN[ALIGN_SIZE] = cv2.createHanningWindow((ALIGN_SIZE, ALIGN_SIZE), cv2.CV_32F)
    # a copy: OpenCV (4.11) applies the window to its inputs IN PLACE, so passing the stored reference
    # multiplied it by the Hann window once per frame; over a stream the reference decayed to its centre,
    # the peaks fell and the shifts turned to noise (the tire false position alarm at frame 111)
    (dx, dy), peak = cv2.phaseCorrelate(reference.copy(), _align_image(grey), win)
    return 100.0 * dx / ALIGN_SIZE, 100.0 * dy / ALIGN_SIZE, float(peak)


class _Draws:
    """``np.random.default_rng(seed)``'s ``integers`` calls, replayed in order from ``memo`` when that seed
    already made the same calls.

    WHY: :meth:`CameraDrift.breaches` runs for every frame with a fresh generator seeded by the window
    length, which is constant once the window is full, so frame after frame it drew the very same
    bootstrap index matrices (with the generator's set-up, a fifth of a drift step's CPU at 5 MP).
    A draw is keyed by the seed and every call before it, so the numbers are exactly the generator's."""

    MAX_MEMO = 64

    def __init__(self, seed: int, memo: dict[tuple, np.ndarray]) -> None:
        self.seed = seed
        self.memo = memo
        self._calls: tuple[tuple[int, int, tuple[int, ...]], ...] = ()
        self._rng: np.random.Generator | None = None
        self._applied = 0  # calls the real generator has made (it catches up on a miss)

    def integers(self, low: int, high: int, size: tuple[int, ...]) -> np.ndarray:
        self._calls += ((int(low), int(high), tuple(size)),)
        key = (self.seed, self._calls)
        got = self.memo.get(key)
        if got is None:
            if self._rng is None:
                self._rng = np.random.default_rng(self.seed)
            for lo, hi, sz in self._calls[self._applied:-1]:
                self._rng.integers(lo, hi, sz)
            got = self._rng.integers(low, high, size)
            self._applied = len(self._calls)
            got.flags.writeable = False
            if len(self.memo) >= self.MAX_MEMO:
                self.memo.clear()
            self.memo[key] = got
        return got


def _row_medians(m: np.ndarray) -> np.ndarray:
    """``np.median(m, axis=1)`` of a 2-D array without NaN, bitwise: the middle one or two values of each
    row by partition, averaged as np.median does, without its generic wrapper (2.5x faster at 200 x 30)."""
    n = m.shape[1]
    k = n // 2
    if n % 2:
        return np.partition(m, k, axis=1)[:, k]
    p = np.partition(m, (k - 1, k), axis=1)
    return (p[:, k - 1] + p[:, k]) / 2


def _median(x: Sequence[float | None] | np.ndarray) -> float:
    """``float(np.median(x))``, bitwise, by :func:`_row_medians` (NaN or empty: np.median itself)."""
    a = np.asarray(x)
    if a.ndim != 1 or not a.size or not np.isfinite(a).all():
        return float(np.median(a))
    return float(_row_medians(a[None, :])[0])


def _median_se(x: Sequence[float], rng: np.random.Generator | _Draws, rounds: int = 200) -> float:
    """Bootstrap standard error of the median of ``len(x)`` frames like these. No normality assumed:
    parts that vary in two or three ways (bimodal positions, several tile sizes) get the wide limit
    their medians really need."""
    a = np.asarray(x, dtype=np.float64)
    m = a[rng.integers(0, a.size, (rounds, a.size))]
    meds = _row_medians(m) if a.size and np.isfinite(a).all() else np.median(m, axis=1)
    return float(meds.std())


@dataclass
class ImageReference:
    """What a camera's normal frames look like: medians and spreads of the measurements, mean frame."""

    n: int
    brightness: float
    brightness_se: float      # standard error of the reference's median brightness (bootstrap)
    log_sharpness: float
    log_sharpness_se: float
    shift_se: float
    align_peak: float
    image: np.ndarray = field(repr=False)
    dx: float = 0.0          # median shift of the reference frames (% of the frame)
    dy: float = 0.0

    @property
    def aligned(self) -> bool:
        return self.align_peak >= MIN_ALIGN_PEAK

    @classmethod
    def build(cls, greys: Sequence[np.ndarray], seed: int = 0) -> ImageReference:
        if len(greys) < 3:
            raise ValueError("an image reference needs at least 3 frames")
        # identical frames (a camera repeating its last image) are one observation: repeated, they make the
        # others' mean contain the frame itself, so it looks aligned and the spreads come out too small
        unique = list({g.tobytes(): g for g in greys}.values())
        if len(unique) < 3:
            raise ValueError("an image reference needs at least 3 distinct frames")
        b = [brightness(g) for g in unique]
        s = [log_sharpness(g) for g in unique]
        total = np.stack(unique).sum(axis=0)
        mean = _align_image(total / len(unique))
        # each reference frame against the mean of the *others*: against a mean it is part of, a frame
        # looks better aligned than a new frame will, and the limits would come out too tight
        shifts = [shift_pct(_align_image((total - g) / (len(unique) - 1)), g) for g in unique]
        peak = float(np.median([p for _, _, p in shifts]))
        dxs, dys = [dx for dx, _, _ in shifts], [dy for _, dy, _ in shifts]
        rng = np.random.default_rng(seed)
        return cls(len(unique), float(np.median(b)), _median_se(b, rng), float(np.median(s)), _median_se(s, rng),
                   max(_median_se(dxs, rng), _median_se(dys, rng)), peak, mean,
                   float(np.median(dxs)), float(np.median(dys)))

    def to_stats(self) -> dict[str, float]:
        return {"n": self.n, "brightness": self.brightness, "brightness_se": self.brightness_se,
                "log_sharpness": self.log_sharpness, "log_sharpness_se": self.log_sharpness_se,
                "shift_se": self.shift_se, "align_peak": self.align_peak, "dx": self.dx, "dy": self.dy}

    def to_png(self) -> bytes:
        ok, buf = cv2.imencode(".png", np.clip(self.image + 128.0, 0, 255).astype(np.uint8))
        if not ok:
            raise RuntimeError("could not encode the reference image")
        return buf.tobytes()

    @classmethod
    def from_stored(cls, stats: dict, png: bytes) -> ImageReference:
        img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise ValueError("stored drift reference image does not decode")
        return cls(int(stats["n"]), float(stats["brightness"]), float(stats["brightness_se"]),
                   float(stats["log_sharpness"]), float(stats["log_sharpness_se"]), float(stats["shift_se"]),
                   float(stats["align_peak"]), img.astype(np.float32) - 128.0, float(stats.get("dx", 0.0)),
                   float(stats.get("dy", 0.0)))


# --- the per-camera statistic (pure: the benchmark drives it directly) --------------------------------

@dataclass(frozen=True)
class Breach:
    """One check over its limit: ``value`` and ``limit`` in ``unit`` (the evidence an engineer reads)."""

    kind: str
    value: float
    limit: float
    unit: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": round(self.value, 4), "limit": round(self.limit, 4), "unit": self.unit}


@dataclass(frozen=True)
class Measure:
    frame_id: int
    captured_at: float
    score: float | None
    p99: float | None
    brightness: float | None
    log_sharpness: float | None
    dx: float | None
    dy: float | None
    peak: float | None = None   # phase-correlation peak of the frame against the reference


class CameraDrift:
    """The drift statistic of one camera; :meth:`update` returns the breaches once confirmed."""

    def __init__(self, config: DriftConfig, reference: ImageReference | None = None) -> None:
        self.config = config
        self.reference = reference
        self._ref_greys: list[np.ndarray] = []
        self.window: deque[Measure] = deque(maxlen=config.window)
        self.streak = 0
        self.model_version: str | None = None
        self.reference_built = False   # set when update() built a new reference (caller persists it)
        self._draws: dict[tuple, np.ndarray] = {}  # bootstrap index matrices per seed and call sequence

    def reset(self) -> None:
        """Forget the reference and the window (after a re-baseline: the next frames are the new normal)."""
        self.reference = None
        self._ref_greys.clear()
        self.window.clear()
        self.streak = 0

    def update(self, frame_id: int, captured_at: float, score: float | None, p99: float | None,
               grey: np.ndarray | None, model_version: str | None = None) -> list[Breach]:
        """Add one frame; returns the confirmed breaches (empty while in limits or not confirmed)."""
        if model_version is not None and model_version != self.model_version:
            if self.model_version is not None:  # a new model: its calibration starts a new score window
                self.window = deque(((m if m.score is None else Measure(m.frame_id, m.captured_at, None, None,
                                                                        m.brightness, m.log_sharpness, m.dx, m.dy,
                                                                        m.peak))
                                     for m in self.window), maxlen=self.config.window)
            self.model_version = model_version
        b = s = dx = dy = peak = None
        if grey is not None:
            if self.reference is None:
                self._ref_greys.append(grey)
                if len(self._ref_greys) >= self.config.reference_frames:
                    try:
                        self.reference = ImageReference.build(self._ref_greys)
                        self.reference_built = True
                    except ValueError:  # fewer than 3 distinct frames (a frozen camera): collect anew
                        pass
                    self._ref_greys.clear()
            else:
                b, s = brightness(grey), log_sharpness(grey)
                if self.reference.aligned:
                    dx, dy, peak = shift_pct(self.reference.image, grey)
        self.window.append(Measure(frame_id, captured_at, score, p99, b, s, dx, dy, peak))
        breaches = self.breaches()
        self.streak = self.streak + 1 if breaches else 0
        return breaches if self.streak >= self.config.confirm_frames else []

    @property
    def onset(self) -> Measure:
        """The first frame of the current window (the alarm's onset)."""
        return self.window[0]

    def breaches(self) -> list[Breach]:
        """Every check over its limit on the current window (only with a full window)."""
        c = self.config
        out: list[Breach] = []
        scored = [m for m in self.window if m.score is not None and m.p99]
        if len(scored) >= c.window:
            med = _median([m.score / m.p99 for m in scored])  # type: ignore[operator]
            if med > c.score_ratio:
                out.append(Breach("score", med, c.score_ratio, "median score / calibration p99"))
        ref = self.reference
        imgs = [m for m in self.window if m.brightness is not None]
        if ref is None or len(imgs) < c.window:
            return out
        # difference of two medians: standard errors of both (bootstrap, no normality assumed) add up
        rng = _Draws(len(self.window), self._draws)  # = np.random.default_rng(len(self.window)), memoised
        k = c.min_std_errors
        bs = [m.brightness for m in imgs]
        db = _median(bs) - ref.brightness
        lim_b = max(c.brightness_grey, k * math.hypot(ref.brightness_se, _median_se(bs, rng)))  # type: ignore[arg-type]
        if abs(db) > lim_b:
            out.append(Breach("brightness", db, lim_b, "grey levels (0-255), window median - reference median"))
        ss = [m.log_sharpness for m in imgs]
        ds = _median(ss) - ref.log_sharpness
        lim_s = max(math.log(c.sharpness_ratio), k * math.hypot(ref.log_sharpness_se, _median_se(ss, rng)))  # type: ignore[arg-type]
        if abs(ds) > lim_s:
            out.append(Breach("sharpness", math.exp(ds), math.exp(lim_s if ds > 0 else -lim_s),
                              "variance-of-Laplacian ratio to the reference"))
        placed = [m for m in imgs if m.dx is not None]
        # the window must align with the reference as the reference aligns with itself (median peak): a
        # texture without a registered part gives shifts that are where the noise peaked, not positions
        if ref.aligned and len(placed) >= len(imgs) // 2 and \
                _median([m.peak for m in placed]) >= MIN_ALIGN_PEAK:
            xs, ys = [m.dx for m in placed], [m.dy for m in placed]
            shift = math.hypot(_median(xs) - ref.dx, _median(ys) - ref.dy)
            se_w = max(_median_se(xs, rng), _median_se(ys, rng))  # type: ignore[arg-type]
            lim_p = max(c.position_pct, k * math.hypot(ref.shift_se, se_w))
            if shift > lim_p:
                out.append(Breach("position", shift, lim_p, "% of the frame (phase-correlation shift)"))
        return out


# --- calibration lookup -------------------------------------------------------------------------

class RegistryCalibration:
    """``(product, version) -> p99`` of the version's held-out normal scores, cached.

    From the registry row's metrics (retrained versions) or the model directory's calibration.json;
    ``threshold / margin`` when the quantile is missing; ``None`` for zero-shot or unknown versions
    (then only the image checks run)."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._cache: dict[tuple[str, str], float | None] = {}

    def __call__(self, product: str, version: str) -> float | None:
        key = (product, version)
        if key not in self._cache:
            self._cache[key] = self._lookup(product, version)
        return self._cache[key]

    def _lookup(self, product: str, version: str) -> float | None:
        try:
            info = next((v for v in self.registry.list(product) if v.version == version), None)
        except Exception as exc:  # noqa: BLE001 - the registry is down: retry on a later frame
            log.warning("calibration lookup failed", extra=kv(product=product, version=version, error=str(exc)[:200]))
            return None
        if info is None:
            return None
        cal = (info.metrics or {}).get("calibration") or {}
        if not cal:
            try:  # the model directory's calibration, read by its one owner
                cal = model_meta.read_calibration(info.path)
            except model_meta.ModelDirError as exc:  # missing or unreadable: threshold / margin instead
                log.info("no calibration in the model directory", extra=kv(product=product, version=version,
                                                                           error=str(exc)[:200]))
        return calibration_p99(cal, info.threshold)


def calibration_p99(cal: dict, threshold: float | None = None) -> float | None:
    """The p99 of a calibration dict (:func:`training.train.calibrate`), else threshold / margin."""
    p99 = (cal.get("quantiles") or {}).get("p99")
    if p99:
        return float(p99)
    thr = cal.get("threshold", threshold)
    if thr:
        return float(thr) / float(cal.get("threshold_margin") or 1.0)
    return None


# --- the consumer hook -----------------------------------------------------------------------------

class DriftMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.open = Gauge("lineinspect_drift_alarm_open", "1 while the camera has an open drift alarm",
                          ["product", "camera"], registry=r)
        self.alarms = Counter("lineinspect_drift_alarms", "Drift alarms opened, by check", ["product", "camera", "kind"],
                              registry=r)
        self.kept = Counter("lineinspect_drift_frames_kept", "Frames kept for a re-baseline", ["product"], registry=r)
        self.errors = Counter("lineinspect_drift_errors", "Drift monitor failures (never block the stream)", registry=r)


@dataclass
class _Cam:
    product: str
    drift: CameraDrift
    alarm_id: int | None = None
    recent: deque = field(default_factory=lambda: deque(maxlen=64))  # (KeptFrame) for the onset flush


class DriftMonitor:
    """The consumer's post-store step: feeds every stored frame to its camera's :class:`CameraDrift`,
    opens (one) alarm with its evidence, keeps frames while it is open, and notices resolution."""

    def __init__(self, settings: Settings, drift_store: DriftStore, calibration: Callable[[str, str], float | None],
                 metrics_registry: CollectorRegistry | None = None, refresh_s: float = 2.0) -> None:
        self.config = DriftConfig.from_settings(settings)
        self.store = drift_store
        self.calibration = calibration
        self.metrics = DriftMetrics(metrics_registry)
        self.refresh_s = refresh_s
        self._cams: dict[str, _Cam] = {}
        self._last_refresh = time.monotonic()  # a camera first seen looks its alarms up itself (_cam)

    takes_images = True  # the consumer hands over the pixels it scored (no second decode per frame)

    def __call__(self, rows: Sequence[ResultRow], envelopes: Sequence[FrameEnvelope],
                 images: Sequence[np.ndarray | None] | None = None) -> None:
        self.on_stored(rows, envelopes, images)

    def before_store(self, rows: Sequence[ResultRow]) -> None:
        """Set ``drifted`` on the rows of cameras with an open alarm, before the consumer stores them.

        No query per frame: the open alarms come from this monitor's own state (it opened them) and its
        refresh (at most one ``open_alarms`` query per ``refresh_s``, and one lookup when a camera is
        first seen). Another consumer's alarm is learnt within ``refresh_s``; the frames it stored
        meanwhile are flagged by :meth:`DriftStore.mark_drifted` when it is learnt. A re-baseline or a
        dismissal stops the flagging from the next refresh on."""
        self._maybe_refresh()
        for row in rows:
            if self._cam(row.product, row.camera).alarm_id is not None:
                row.drifted = True

    def on_stored(self, rows: Sequence[ResultRow], envelopes: Sequence[FrameEnvelope],
                  images: Sequence[np.ndarray | None] | None = None) -> None:
        """``rows`` (ResultRow) and their ``envelopes`` (FrameEnvelope), just stored durably; ``images``,
        when given, the pixels the engine scored (any size; ``None`` entries are decoded from the bytes)."""
        from storage.drift import KeptFrame

        self._maybe_refresh()
        keep: dict[str, list[KeptFrame]] = {}
        pixels = list(images) if images is not None else [None] * len(rows)
        for row, env, image in sorted(zip(rows, envelopes, pixels), key=lambda p: (p[0].camera, p[0].frame_id)):
            cam = self._cam(row.product, row.camera)
            version = str(row.model_version)
            p99 = None if version.startswith("zero-shot") or ":warmup" in str(row.engine) else \
                self.calibration(row.product, version)
            grey = to_grey(image) if image is not None else decode_grey(env.payload)
            kept = KeptFrame(int(row.frame_id), float(row.captured_at), str(env.encoding), bytes(env.payload))
            cam.recent.append(kept)
            breaches = cam.drift.update(int(row.frame_id), float(row.captured_at), float(row.score), p99, grey, version)
            if cam.drift.reference_built:
                cam.drift.reference_built = False
                self._save_reference(row.product, row.camera, cam.drift.reference)
            if cam.alarm_id is not None:
                keep.setdefault(row.camera, []).append(kept)
            elif breaches:
                self._open(row, cam, breaches)
        items: list[tuple[int, str, str, list[KeptFrame]]] = []
        for camera, frames in keep.items():
            alarm_id = self._cams[camera].alarm_id
            if alarm_id is not None:
                items.append((alarm_id, self._cams[camera].product, camera, frames))
        if items:  # one transaction for every drifting camera of the batch
            added = self.store.keep_frames_many(items, self.config.keep_frames)
            for alarm_id, product, _camera, _frames in items:
                self.metrics.kept.labels(product=product).inc(added.get(int(alarm_id), 0))

    def _cam(self, product: str, camera: str) -> _Cam:
        cam = self._cams.get(camera)
        if cam is None or cam.product != product:
            ref = None
            stored = self.store.reference(camera)
            if stored is not None and stored["product"] == product:
                ref = ImageReference.from_stored(stored["stats"], stored["image_png"])
            cam = self._cams[camera] = _Cam(product, CameraDrift(self.config, ref))
            for a in self.store.open_alarms(product):
                if a["camera"] == camera:
                    cam.alarm_id = int(a["id"])
        return cam

    def _save_reference(self, product: str, camera: str, ref: ImageReference | None) -> None:
        if ref is None:
            return
        self.store.save_reference(product, camera, ref.to_stats(), ref.to_png())
        log.info("drift reference built", extra=kv(product=product, camera=camera, frames=ref.n,
                                                   brightness=round(ref.brightness, 1), aligned=ref.aligned))

    def _open(self, row: ResultRow, cam: _Cam, breaches: list[Breach]) -> None:
        onset = cam.drift.onset
        ref = cam.drift.reference
        evidence = {"checks": {b.kind: b.to_dict() for b in breaches}, "window": len(cam.drift.window),
                    "first_frame_id": onset.frame_id, "last_frame_id": int(row.frame_id),
                    "reference": ref.to_stats() if ref else None, "config": cam.drift.config.__dict__}
        kinds = [b.kind for b in breaches]
        alarm_id, created = self.store.open_alarm(row.product, row.camera, kinds=kinds, onset_at=onset.captured_at,
                                                  onset_frame_id=onset.frame_id, model_version=str(row.model_version),
                                                  evidence=evidence)
        cam.alarm_id = alarm_id
        # the window's frames from the onset were stored before the alarm existed: flag them now
        self.store.mark_drifted(row.product, row.camera, onset.captured_at)
        self.metrics.open.labels(product=row.product, camera=row.camera).set(1)
        if created:
            for k in kinds:
                self.metrics.alarms.labels(product=row.product, camera=row.camera, kind=k).inc()
            log.warning("drift alarm opened: retraining of the product pauses until a re-baseline",
                        extra=kv(alarm=alarm_id, product=row.product, camera=row.camera, checks=",".join(kinds),
                                 onset_frame=onset.frame_id, frame=int(row.frame_id),
                                 evidence=json.dumps(evidence["checks"], sort_keys=True)))
        since = [f for f in cam.recent if f.captured_at >= onset.captured_at and f.frame_id < int(row.frame_id)]
        if since:
            self.store.keep_frames(alarm_id, row.product, row.camera, since, self.config.keep_frames)

    def _maybe_refresh(self) -> None:
        """Learn of alarms resolved (re-baselined) or opened by another consumer."""
        now = time.monotonic()
        if now - self._last_refresh < self.refresh_s or not self._cams:
            return
        self._last_refresh = now
        open_alarms = {a["camera"]: a for a in self.store.open_alarms()}
        for camera, cam in self._cams.items():
            a = open_alarms.get(camera)
            now_id = None if a is None or a["product"] != cam.product else int(a["id"])
            if cam.alarm_id is not None and now_id != cam.alarm_id:
                log.info("drift alarm closed (re-baselined or dismissed); the camera's reference starts again",
                         extra=kv(product=cam.product, camera=camera, alarm=cam.alarm_id))
                cam.drift.reset()
                self.metrics.open.labels(product=cam.product, camera=camera).set(0)
            if a is not None and now_id is not None and now_id != cam.alarm_id:
                # opened by another consumer: flag what this one stored on the camera since the onset
                self.store.mark_drifted(cam.product, camera, float(a["onset_at"]))
                self.metrics.open.labels(product=cam.product, camera=camera).set(1)
            cam.alarm_id = now_id

    def snapshot(self) -> dict[str, dict]:
        """Per camera: the current checks (for tests and debugging)."""
        return {c: {"alarm_id": cam.alarm_id, "breaches": [b.kind for b in cam.drift.breaches()],
                    "reference": cam.drift.reference.to_stats() if cam.drift.reference else None}
                for c, cam in self._cams.items()}


def build_steps(settings: Settings, store: ResultStore, registry: ModelRegistry,
                metrics_registry: CollectorRegistry | None = None) -> list[Any]:
    """The consumer's post-store steps the settings ask for: drift monitor, defect families."""
    steps: list[Any] = []
    drift = build_monitor(settings, store, registry, metrics_registry)
    if drift is not None:
        steps.append(drift)
    if settings.families_enabled and hasattr(store, "db_engine"):
        from inference.families import FamilyMonitor
        from storage.families import FamilyStore

        steps.append(FamilyMonitor(store, FamilyStore.of(store), registry, settings.max_frame_pixels,
                                   settings.families_warmup))
    return steps


def build_monitor(settings: Settings, store: ResultStore, registry: ModelRegistry,
                  metrics_registry: CollectorRegistry | None = None) -> DriftMonitor | None:
    """The consumer's drift step (``None`` when ``drift_enabled`` is off or the store has no database)."""
    if not settings.drift_enabled or not hasattr(store, "db_engine"):
        return None
    from storage.drift import DriftStore

    return DriftMonitor(settings, DriftStore.of(store), RegistryCalibration(registry), metrics_registry)
