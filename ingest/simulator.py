"""A synthetic production line: seeded product frames with exact defect masks.

Why: the demo, the unit tests and the ``sim://`` camera source need an endless, reproducible
stream of plausible product images with known ground truth, without shipping any data.

Each product is a part lying on a conveyor belt: a brushed-metal plate, a woven fabric patch or
a moulded plastic part with a paper label, each carrying a printed code and logo. A product's
look (material, colours, print, grain) comes from its name, so two products differ. Every frame
re-renders the part with a small pose jitter, lighting gain/gradient/tint and sensor noise.

Defects are drawn only inside their mask, before lighting and noise, and the normal and the
defective version of frame ``i`` share every other random draw, so the mask is exactly the set
of pixels a defect may change: scratch (thin bright/dark curve), crack (jagged dark polyline,
sometimes branched), stain (tinted blob with a feathered inside) and missing_print (part of the
printed code/logo gone). They are small (well under 3 % of the frame) so the frame's mean
intensity does not give them away.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DEFECTS = ("scratch", "stain", "crack", "missing_print")
AUTO = "auto"
MATERIALS = ("metal", "fabric", "plastic")


@dataclass(frozen=True)
class ProductSpec:
    """What a product looks like; everything a frame varies is drawn per frame instead."""

    material: str                      # one of MATERIALS
    base_rgb: tuple[float, float, float]
    print_rgb: tuple[float, float, float]
    text: str                          # printed code
    logo: str                          # "ring" | "triangle" | "square"
    grain_deg: float                   # brushing / weave direction
    holes: bool                        # screw holes in the corners


_CATALOG: dict[str, ProductSpec] = {
    "widget": ProductSpec("metal", (0.66, 0.67, 0.70), (0.08, 0.09, 0.12), "LX-204", "ring", 0.0, True),
    "fabric": ProductSpec("fabric", (0.55, 0.33, 0.25), (0.93, 0.90, 0.82), "TX 77", "triangle", 0.0, False),
    "cap": ProductSpec("plastic", (0.18, 0.36, 0.62), (0.10, 0.10, 0.10), "C9-31", "square", 0.0, False),
}


def product_spec(product: str) -> ProductSpec:
    """The catalogue entry for a known product, else a look derived from the name's checksum."""
    if product in _CATALOG:
        return _CATALOG[product]
    if not product:
        raise ValueError("product name must not be empty")
    rng = np.random.default_rng(zlib.crc32(product.encode()))
    material = MATERIALS[int(rng.integers(len(MATERIALS)))]
    b0, b1, b2 = (float(v) for v in rng.uniform(0.25, 0.75, 3))
    base = (b0, b1, b2)
    dark = float(np.mean(base)) > 0.45
    i0, i1, i2 = (float(v) for v in (rng.uniform(0.02, 0.2, 3) if dark else rng.uniform(0.8, 0.97, 3)))
    ink = (i0, i1, i2)
    letters = "ABCDEFGHKLMNPRSTUVXZ"
    text = "".join(letters[int(k)] for k in rng.integers(0, len(letters), 2)) + "-" + str(int(rng.integers(10, 999)))
    return ProductSpec(
        material, base, ink, text, ("ring", "triangle", "square")[int(rng.integers(3))],
        float(rng.choice([0.0, 90.0, 30.0, -20.0])), material == "metal" and bool(rng.random() < 0.7),
    )


@dataclass
class SimFrame:
    image: np.ndarray          # RGB uint8 (H, W, 3)
    mask: np.ndarray           # bool (H, W); all False for a normal frame
    defect: str | None         # one of DEFECTS, or None
    index: int = 0


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-blurred noise (soft mottling, stain shapes)."""
    n = cv2.GaussianBlur(rng.normal(size=shape).astype(np.float32), (0, 0), sigma)
    return (n - n.mean()) / (n.std() + 1e-6)


def _rotate(img: np.ndarray, deg: float) -> np.ndarray:
    if deg == 0:
        return img
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


def _rounded_rect(shape: tuple[int, int], x0: int, y0: int, x1: int, y1: int, r: int) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.rectangle(m, (x0 + r, y0), (x1 - r, y1), 1, -1)
    cv2.rectangle(m, (x0, y0 + r), (x1, y1 - r), 1, -1)
    for cx, cy in ((x0 + r, y0 + r), (x1 - r, y0 + r), (x0 + r, y1 - r), (x1 - r, y1 - r)):
        cv2.circle(m, (cx, cy), r, 1, -1)
    return m.astype(bool)


class LineSimulator:
    """Seeded, deterministic frames of one product; ``frame(i)`` is a pure function of (product, size, seed, i)."""

    def __init__(self, product: str = "widget", size: tuple[int, int] = (256, 256), defect_rate: float = 0.1, seed: int = 0) -> None:
        h, w = int(size[0]), int(size[1])
        if h < 48 or w < 48:
            raise ValueError(f"frame size must be at least 48x48, got {h}x{w}")
        if not 0.0 <= defect_rate <= 1.0:
            raise ValueError(f"defect_rate must be in [0, 1], not {defect_rate}")
        self.product = product
        self.spec = product_spec(product)
        self.size = (h, w)
        self.defect_rate = float(defect_rate)
        self.seed = int(seed)
        self._pid = zlib.crc32(product.encode())
        self._render_product()

    # --- the product, rendered once ------------------------------------------------------

    def _render_product(self) -> None:
        h, w = self.size
        s = min(h, w)
        rng = np.random.default_rng([self._pid, 7])
        spec = self.spec
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

        # Conveyor belt: dark rubber with faint ribs across the direction of travel.
        belt = 0.16 + 0.015 * np.sin(2 * np.pi * xx / max(6.0, s / 20)) + 0.01 * _smooth_noise(rng, (h, w), 1.5)
        scene = np.repeat(belt[:, :, None], 3, axis=2) * np.array([0.95, 1.0, 1.05], np.float32)

        mx, my = int(0.09 * w), int(0.11 * h)
        part = _rounded_rect((h, w), mx, my, w - 1 - mx, h - 1 - my, max(3, int(0.07 * s)))
        shadow = cv2.GaussianBlur(np.roll(part, (int(0.02 * s), int(0.02 * s)), (0, 1)).astype(np.float32), (0, 0), 0.015 * s)
        scene *= (1 - 0.5 * shadow)[:, :, None]

        tone = self._material_tone(rng, (h, w), xx, yy)
        surface = tone[:, :, None] * np.array(spec.base_rgb, np.float32) / 0.7
        dist = cv2.distanceTransform(part.astype(np.uint8), cv2.DIST_L2, 3)
        bevel = np.clip(dist / max(2.0, 0.025 * s), 0, 1)
        surface *= (0.78 + 0.22 * bevel)[:, :, None]

        holes = np.zeros((h, w), bool)
        if spec.holes:
            r, inset = max(3, int(0.03 * s)), int(0.085 * s)
            for cx, cy in ((mx + inset, my + inset), (w - 1 - mx - inset, my + inset), (mx + inset, h - 1 - my - inset), (w - 1 - mx - inset, h - 1 - my - inset)):
                ring = np.zeros((h, w), np.uint8)
                cv2.circle(ring, (cx, cy), r + max(1, r // 3), 1, -1)
                surface[ring.astype(bool)] *= 1.12
                hole = np.zeros((h, w), np.uint8)
                cv2.circle(hole, (cx, cy), r, 1, -1)
                surface[hole.astype(bool)] = 0.07
                holes |= ring.astype(bool)

        # Print: a code and a logo, inside a paper label on plastic parts.
        label_box = (int(mx + 0.2 * (w - 2 * mx)), int(my + 0.3 * (h - 2 * my)), int(w - mx - 0.12 * (w - 2 * mx)), int(h - my - 0.3 * (h - 2 * my)))
        lx0, ly0, lx1, ly1 = label_box
        if spec.material == "plastic":
            paper = np.zeros((h, w), np.uint8)
            cv2.rectangle(paper, (lx0 - 4, ly0 - 4), (lx1 + 4, ly1 + 4), 1, -1)
            p = paper.astype(bool)
            surface[p] = np.array([0.9, 0.89, 0.84], np.float32) * (1 + 0.02 * _smooth_noise(rng, (h, w), 1.0)[p])[:, None]
        ink = np.zeros((h, w), np.uint8)
        bh = ly1 - ly0
        logo_r = max(3, int(0.32 * bh))
        cx, cy = lx0 + logo_r + 2, (ly0 + ly1) // 2
        thick = max(1, int(round(s / 110)))
        if spec.logo == "ring":
            cv2.circle(ink, (cx, cy), logo_r, 255, thick + 1, cv2.LINE_AA)
            cv2.circle(ink, (cx, cy), max(1, logo_r // 3), 255, -1, cv2.LINE_AA)
        elif spec.logo == "triangle":
            pts = np.array([[cx, cy - logo_r], [cx - logo_r, cy + logo_r], [cx + logo_r, cy + logo_r]], np.int32)
            cv2.polylines(ink, [pts], True, 255, thick + 1, cv2.LINE_AA)
        else:
            cv2.rectangle(ink, (cx - logo_r, cy - logo_r), (cx + logo_r, cy + logo_r), 255, -1, cv2.LINE_AA)
            cv2.rectangle(ink, (cx - logo_r // 2, cy - logo_r // 2), (cx + logo_r // 2, cy + logo_r // 2), 0, -1, cv2.LINE_AA)
        tx0 = cx + logo_r + max(4, int(0.04 * s))
        avail = max(10, lx1 - tx0)
        font = cv2.FONT_HERSHEY_SIMPLEX
        (tw, th), _ = cv2.getTextSize(spec.text, font, 1.0, 1)
        scale = min(avail / tw, 0.55 * bh / th)
        tthick = max(1, int(round(scale * 2)))
        (tw, th), _ = cv2.getTextSize(spec.text, font, scale, tthick)
        cv2.putText(ink, spec.text, (tx0, cy + th // 2), font, scale, 255, tthick, cv2.LINE_AA)
        ink_a = (ink.astype(np.float32) / 255.0) * part
        # A worn-print look: ink coverage varies slightly.
        ink_a *= np.clip(0.92 + 0.05 * _smooth_noise(rng, (h, w), 2.0), 0, 1)

        scene[part] = surface[part]
        self._base = scene.astype(np.float32)     # unprinted product on the belt
        self._ink = ink_a.astype(np.float32)      # print coverage 0..1
        self._ink_rgb = np.array(spec.print_rgb, np.float32)
        self._part = part
        self._keepout = holes

    def _material_tone(self, rng: np.random.Generator, shape: tuple[int, int], xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
        """Grey-level surface texture around 0.7 for the product's material."""
        h, w = shape
        s = min(h, w)
        m = self.spec.material
        if m == "metal":
            pad = int(0.3 * max(h, w))
            noise = rng.normal(size=(h + 2 * pad, w + 2 * pad)).astype(np.float32)
            klen = max(9, (s // 5) | 1)
            streak = cv2.blur(noise, (klen, 1))
            streak = _rotate(streak, self.spec.grain_deg)[pad:pad + h, pad:pad + w]
            streak = (streak - streak.mean()) / (streak.std() + 1e-6)
            sheen = np.exp(-(((xx * 0.4 + yy) / (1.4 * h) - 0.45) / 0.18) ** 2)
            return 0.66 + 0.035 * streak + 0.012 * rng.normal(size=shape).astype(np.float32) + 0.08 * sheen + 0.015 * _smooth_noise(rng, shape, s / 8)
        if m == "fabric":
            p = max(4.0, s / 40)
            u, v = xx / p, yy / p
            over = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
            prof_x = np.sin(np.pi * (u % 1.0)) ** 0.6
            prof_y = np.sin(np.pi * (v % 1.0)) ** 0.6
            n_threads = int(max(h, w) / p) + 2
            gain_col = rng.uniform(0.9, 1.1, n_threads).astype(np.float32)[np.floor(u).astype(int)]
            gain_row = rng.uniform(0.9, 1.1, n_threads).astype(np.float32)[np.floor(v).astype(int)]
            weave = over * prof_x * gain_col + (1 - over) * prof_y * gain_row
            fuzz = 0.03 * cv2.GaussianBlur(rng.normal(size=shape).astype(np.float32), (0, 0), 0.7)
            return _rotate(0.45 + 0.35 * weave + fuzz, self.spec.grain_deg) + 0.02 * _smooth_noise(rng, shape, s / 6)
        # plastic: smooth, faint sink marks, fine speckle and a broad gloss highlight
        gloss = np.exp(-(((xx - 0.3 * w) ** 2 + (yy - 0.35 * h) ** 2) / (2 * (0.35 * s) ** 2)))
        return 0.62 + 0.12 * gloss + 0.015 * _smooth_noise(rng, shape, s / 10) + 0.006 * rng.normal(size=shape).astype(np.float32)

    # --- frames ----------------------------------------------------------------------------

    def frame(self, i: int, defect: str | None = AUTO) -> SimFrame:
        """Frame ``i``. ``defect="auto"`` draws one with probability ``defect_rate``; ``None`` or a
        name from :data:`DEFECTS` forces it. Forcing never changes the frame's other randomness."""
        if i < 0:
            raise ValueError(f"frame index must be >= 0, got {i}")
        h, w = self.size
        s = min(h, w)
        rng = np.random.default_rng([self.seed, self._pid, int(i)])
        # Every per-frame draw happens here, in a fixed order, whatever the defect.
        angle = rng.uniform(-2.0, 2.0)
        shift = rng.uniform(-0.02, 0.02, 2) * np.array([w, h])
        gain = rng.uniform(0.9, 1.08)
        grad_dir = rng.uniform(0, 2 * np.pi)
        grad_amp = rng.uniform(0.0, 0.12)
        tint = 1.0 + rng.uniform(-0.025, 0.025, 3)
        sigma = rng.uniform(0.008, 0.016)
        noise = rng.normal(0.0, 1.0, (h, w, 3)).astype(np.float32)
        auto_defect = DEFECTS[int(rng.integers(len(DEFECTS)))] if rng.random() < self.defect_rate else None
        if defect == AUTO:
            defect = auto_defect
        elif defect is not None and defect not in DEFECTS:
            raise ValueError(f"unknown defect {defect!r}; choose from {DEFECTS}")

        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        m[:, 2] += shift
        warp = lambda a, interp: cv2.warpAffine(a, m, (w, h), flags=interp, borderMode=cv2.BORDER_REFLECT101)  # noqa: E731
        base = warp(self._base, cv2.INTER_LINEAR)
        ink = warp(self._ink, cv2.INTER_LINEAR)
        part = warp(self._part.astype(np.uint8), cv2.INTER_NEAREST).astype(bool)
        keepout = warp(self._keepout.astype(np.uint8), cv2.INTER_NEAREST).astype(bool)
        img = base * (1 - ink[:, :, None]) + self._ink_rgb * ink[:, :, None]

        mask = np.zeros((h, w), bool)
        if defect is not None:
            drng = np.random.default_rng([self.seed, self._pid, int(i), 1 + DEFECTS.index(defect)])
            inner = cv2.erode(part.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=max(2, int(0.03 * s))).astype(bool) & ~keepout
            img, mask = _DRAW[defect](self, drng, img, base, ink, inner)

        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = ((xx - w / 2) * np.cos(grad_dir) + (yy - h / 2) * np.sin(grad_dir)) / s
        light = gain * (1 + grad_amp * ramp)
        img = img * light[:, :, None] * tint.astype(np.float32) + sigma * noise
        out = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
        return SimFrame(out, mask, defect, int(i))

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[SimFrame]:
        """Frames ``start, start+1, ...`` (endless when ``stop`` is None): the camera stream."""
        i = start
        while stop is None or i < stop:
            yield self.frame(i)
            i += 1

    def normal_frames(self, n: int, start: int = 0) -> list[np.ndarray]:
        """``n`` defect-free RGB images (frames ``start..start+n-1`` with defects forced off)."""
        return [self.frame(i, defect=None).image for i in range(start, start + n)]

    def write_mvtec(
        self,
        root: str | Path,
        n_train: int,
        n_test_good: int,
        n_test_defect: int,
        defects: Sequence[str] = DEFECTS,
    ) -> Path:
        """Write an MVTec-layout category folder at ``root`` (``train/good``, ``test/good``,
        ``test/<defect>``, ``ground_truth/<defect>/<stem>_mask.png``), PNG throughout.

        ``n_test_defect`` is the total number of defective test images, spread round-robin over
        ``defects``. Train, test-good and test-defect frames use disjoint frame indices.
        """
        root = Path(root)
        for d in defects:
            if d not in DEFECTS:
                raise ValueError(f"unknown defect {d!r}; choose from {DEFECTS}")
        if min(n_train, n_test_good, n_test_defect) < 0:
            raise ValueError("image counts must be >= 0")
        for j in range(n_train):
            _save(root / "train" / "good" / f"{j:03d}.png", self.frame(j, defect=None).image)
        for j in range(n_test_good):
            _save(root / "test" / "good" / f"{j:03d}.png", self.frame(1_000_000 + j, defect=None).image)
        counters = {d: 0 for d in defects}
        for j in range(n_test_defect):
            d = defects[j % len(defects)]
            f = self.frame(2_000_000 + j, defect=d)
            stem = f"{counters[d]:03d}"
            counters[d] += 1
            _save(root / "test" / d / f"{stem}.png", f.image)
            _save(root / "ground_truth" / d / f"{stem}_mask.png", f.mask.astype(np.uint8) * 255)
        return root

    # --- defects (each returns the new float image and its exact mask) -----------------------

    def _point_in(self, rng: np.random.Generator, region: np.ndarray) -> tuple[int, int]:
        ys, xs = np.nonzero(region)
        k = int(rng.integers(len(xs)))
        return int(xs[k]), int(ys[k])

    def _scratch(self, rng: np.random.Generator, img: np.ndarray, base: np.ndarray, ink: np.ndarray, inner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = min(self.size)
        for _ in range(20):
            x, y = self._point_in(rng, inner)
            ang = rng.uniform(0, np.pi)
            length = rng.uniform(0.18, 0.35) * s
            bend = rng.uniform(-0.15, 0.15) * length
            t = np.linspace(-0.5, 0.5, 24)[:, None]
            d, nrm = np.array([np.cos(ang), np.sin(ang)]), np.array([-np.sin(ang), np.cos(ang)])
            pts = np.array([x, y]) + t * length * d + (1 - 4 * t**2) * bend * nrm
            m = np.zeros(self.size, np.uint8)
            cv2.polylines(m, [np.rint(pts).astype(np.int32)], False, 1, max(1, int(round(s / 256))))
            mask = m.astype(bool) & inner
            if mask.sum() >= 0.5 * length:
                break
        bright = rng.random() < 0.6
        amt = rng.uniform(0.35, 0.5)
        new = img + amt * (1 - img) if bright else img * (1 - amt)
        return np.where(mask[:, :, None], new, img), mask

    def _crack(self, rng: np.random.Generator, img: np.ndarray, base: np.ndarray, ink: np.ndarray, inner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = min(self.size)
        for _ in range(20):
            m = np.zeros(self.size, np.uint8)
            p = np.array(self._point_in(rng, inner), np.float64)
            heading = rng.uniform(0, 2 * np.pi)
            n_seg = int(rng.integers(7, 14))
            branch_at = int(rng.integers(3, n_seg)) if rng.random() < 0.5 else -1
            pts = [p.copy()]
            for k in range(n_seg):
                heading += rng.uniform(-0.7, 0.7)
                p = p + rng.uniform(0.015, 0.035) * s * np.array([np.cos(heading), np.sin(heading)])
                pts.append(p.copy())
                if k == branch_at:
                    q, hb = p.copy(), heading + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
                    br = [q.copy()]
                    for _ in range(int(rng.integers(2, 5))):
                        hb += rng.uniform(-0.5, 0.5)
                        q = q + rng.uniform(0.01, 0.025) * s * np.array([np.cos(hb), np.sin(hb)])
                        br.append(q.copy())
                    cv2.polylines(m, [np.rint(br).astype(np.int32)], False, 1, 1)
            width = max(1, int(round(s / 180)))
            for a, b in zip(pts[:-1], pts[1:]):
                cv2.line(m, tuple(np.rint(a).astype(int)), tuple(np.rint(b).astype(int)), 1, int(rng.integers(1, width + 2)))
            mask = m.astype(bool) & inner
            if mask.sum() >= 0.1 * s:
                break
        return np.where(mask[:, :, None], img * rng.uniform(0.25, 0.4), img), mask

    def _stain(self, rng: np.random.Generator, img: np.ndarray, base: np.ndarray, ink: np.ndarray, inner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = min(self.size)
        h, w = self.size
        for _ in range(20):
            x, y = self._point_in(rng, inner)
            r = rng.uniform(0.035, 0.075) * s
            m = np.zeros(self.size, np.uint8)
            for _ in range(int(rng.integers(3, 6))):
                cx, cy = x + rng.normal(0, 0.45 * r), y + rng.normal(0, 0.45 * r)
                axes = (max(2, int(r * rng.uniform(0.4, 0.9))), max(2, int(r * rng.uniform(0.3, 0.8))))
                cv2.ellipse(m, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
            # Ragged rim: carve the blob with smooth noise.
            rough = _smooth_noise(rng, (h, w), max(1.0, r / 5))
            dist = cv2.distanceTransform(m, cv2.DIST_L2, 3)
            mask = (dist + 0.25 * r * rough > 0.2 * r) & m.astype(bool) & inner
            if mask.sum() >= 0.5 * r * r:
                break
        dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
        alpha = (0.35 + 0.65 * np.clip(dist / max(1.0, 0.3 * r), 0, 1)) * rng.uniform(0.4, 0.6)
        oily = rng.random() < 0.5
        color = (np.array([0.22, 0.17, 0.10]) if oily else np.array([0.80, 0.74, 0.55])).astype(np.float32)
        new = img * (1 - alpha[:, :, None]) + color * alpha[:, :, None]
        return np.where(mask[:, :, None], new, img), mask

    def _missing_print(self, rng: np.random.Generator, img: np.ndarray, base: np.ndarray, ink: np.ndarray, inner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        printed = ink > 0.25
        ys, xs = np.nonzero(printed)
        x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
        bw, bh = x1 - x0 + 1, y1 - y0 + 1
        for _ in range(20):
            cw = int(bw * rng.uniform(0.2, 0.45))
            ch = int(bh * rng.uniform(0.6, 1.0))
            ex0 = int(rng.integers(x0, x1 - cw + 2))
            ey0 = int(rng.integers(y0, y1 - ch + 2))
            region = np.zeros(self.size, bool)
            region[ey0:ey0 + ch, ex0:ex0 + cw] = True
            mask = region & printed
            if mask.sum() >= 0.15 * printed.sum():
                break
        # Where the ink is gone the bare surface shows; faint ink fringes outside the mask stay.
        return np.where(mask[:, :, None], base, img), mask


_DRAW = {
    "scratch": LineSimulator._scratch,
    "stain": LineSimulator._stain,
    "crack": LineSimulator._crack,
    "missing_print": LineSimulator._missing_print,
}


def _save(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb):
        raise OSError(f"could not write {path}")
