"""Helpers shared by the benchmarks: data discovery, test-split loading, RESULTS.md sections."""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"
RESULTS_DIR = REPO / "benchmarks" / "results"
WORK = REPO / "benchmarks" / "_work"


def data_root() -> Path:
    return Path(os.environ.get("LINEINSPECT_DATA", REPO.parent / "shared" / "data")).resolve()


def sampled_test_rgb(per_category: int) -> Iterator[tuple[str, np.ndarray]]:
    """(category, RGB image) for up to ``per_category`` test images per category (good and defective,
    evenly spaced in name order), every category under the data root."""
    root = data_root()
    for ds in sorted(p for p in root.iterdir() if p.is_dir()):
        for cat in sorted(p for p in ds.iterdir() if (p / "test").is_dir()):
            paths = sorted(p for p in (cat / "test").rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
            step = max(1, len(paths) // per_category)
            for p in paths[::step][:per_category]:
                yield cat.name, cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cpu, torch {torch.__version__}, {torch.get_num_threads()} threads"


def masks_at(items: list, hw: tuple[int, int]) -> list[np.ndarray]:
    """Ground-truth masks resized (nearest) to the model input size; zeros for normal images."""
    out = []
    for it in items:
        if it.mask_path is None:
            out.append(np.zeros(hw, bool))
        else:
            m = it.mask()
            out.append(cv2.resize(m.astype(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST) > 0)
    return out


def write_section(name: str, body: str, path: Path = RESULTS_MD) -> None:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` (append if absent)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pat = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pat.sub(lambda _m: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


class Recorder:
    """A benchmark run's wall clock and load average, taken at construction and stamped on its results
    at the end, so every benchmark reports the conditions it ran under the same way."""

    def __init__(self) -> None:
        self.t0, self.load0 = time.time(), os.getloadavg()[0]

    def finish(self, name: str, res: dict, render: Callable[[dict], str]) -> int:
        """Add ``seconds`` and ``load_average_start_end`` to ``res``, write ``results/<name>.json`` and
        the ``name`` section of RESULTS.md, print the section; 0 for ``sys.exit``."""
        res["seconds"] = round(time.time() - self.t0, 1)
        res["load_average_start_end"] = [round(self.load0, 2), round(os.getloadavg()[0], 2)]
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
        text = render(res)
        write_section(name, text)
        print(text)
        return 0


def section_head(title: str, script: str, about: str, res: dict, columns: list[str]) -> list[str]:
    """The opening lines of a RESULTS.md section written from a :class:`Recorder`'s results: title, what
    was run, the machine and load average it ran under, and the head of its table."""
    return [f"## {title} (benchmarks/{script})", "",
            f"{about} Machine: {res['machine']}; load average {res['load_average_start_end']} (start, end).", "",
            "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def fmt(v: float | None, nd: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{nd}f}"
