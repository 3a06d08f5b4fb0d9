"""Run ``lineinspect <args>`` under tracemalloc and write where Python memory grew, for the soak's RSS analysis.

    python benchmarks/trace_consumer.py OUT.json consume --bus ... (the consume arguments)

A baseline snapshot is taken ``--warmup`` seconds in (imports done, model loaded, first batches through);
every ``--every`` seconds after, OUT.json is rewritten with the RSS, the traced Python heap and the 15 source
lines whose allocations grew most since the baseline. Python allocations that grow with the run point at a
leak in Python code; RSS growth with a flat traced heap is native memory (ONNX Runtime, OpenCV, malloc arenas).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

WARMUP_S = float(os.environ.get("LI_TRACE_WARMUP_S", "60"))
EVERY_S = float(os.environ.get("LI_TRACE_EVERY_S", "60"))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return -1.0


def watch(out: Path) -> None:
    time.sleep(WARMUP_S)
    base = tracemalloc.take_snapshot()
    t0, rss0, heap0 = time.monotonic(), rss_mb(), tracemalloc.get_traced_memory()[0]
    series = []
    while True:
        time.sleep(EVERY_S)
        snap = tracemalloc.take_snapshot()
        heap = tracemalloc.get_traced_memory()[0]
        series.append({"t_s": round(time.monotonic() - t0), "rss_mb": round(rss_mb(), 1), "heap_mb": round(heap / 2**20, 1)})
        top = snap.compare_to(base, "lineno")[:15]
        out.write_text(json.dumps({
            "rss_base_mb": round(rss0, 1), "heap_base_mb": round(heap0 / 2**20, 1), "series": series,
            "top_growth": [{"where": str(s.traceback[0]), "size_diff_kb": round(s.size_diff / 1024, 1),
                            "count_diff": s.count_diff} for s in top],
        }, indent=1))


def main() -> int:
    out = Path(sys.argv[1])
    tracemalloc.start(1)
    threading.Thread(target=watch, args=(out,), name="tracemalloc-watch", daemon=True).start()
    from lineinspect.cli import main as cli_main

    return cli_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
