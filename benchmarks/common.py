"""Helpers shared by the benchmarks: data discovery, test-split loading, RESULTS.md sections."""

from __future__ import annotations

import os
import platform
import re
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


def fmt(v: float | None, nd: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{nd}f}"
