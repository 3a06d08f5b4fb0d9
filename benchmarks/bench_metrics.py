"""How long the evaluation metrics take at real-data scale (200 maps of 320x800 by default).

    python benchmarks/bench_metrics.py [--n 200] [--hw 320 800]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from training import metrics


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--hw", type=int, nargs=2, default=(320, 800))
    a = p.parse_args()
    rng = np.random.default_rng(0)
    h, w = a.hw
    masks, maps = [], []
    for i in range(a.n):
        m = np.zeros((h, w), bool)
        if i % 3:
            y, x = rng.integers(0, h - 40), rng.integers(0, w - 80)
            m[y:y + 30, x:x + 60] = True
        masks.append(m)
        maps.append((0.5 * m + rng.random((h, w))).astype(np.float32))
    px = a.n * h * w
    for name, fn in (("pixel_metrics", lambda: metrics.pixel_metrics(masks, maps)),
                     ("aupro", lambda: metrics.aupro(masks, maps)),
                     ("aupro short_side=256", lambda: metrics.aupro(masks, maps, short_side=256))):
        t = time.perf_counter()
        fn()
        print(f"{name:22s} {time.perf_counter() - t:6.2f} s for {a.n} maps ({px / 1e6:.1f} M pixels)")


if __name__ == "__main__":
    main()
