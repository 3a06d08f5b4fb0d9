#!/usr/bin/env bash
# Regenerate every section of benchmarks/RESULTS.md on this machine (about 40-60 minutes on 2 cores).
# Each script replaces only its own <!-- name:begin --> ... <!-- name:end --> section and writes
# benchmarks/results/<name>.json. Run on a quiet machine: the numbers are ratios measured side by side
# within one script's run, but absolute images/s move with whatever else the machine is doing.
set -euo pipefail
source "$(dirname "$0")/../scripts/env.sh"
cd "$LI_ROOT"
bash deploy/services.sh install postgres redis kafka
bash deploy/services.sh start
python benchmarks/bench_quality.py            # INP-Former vs PatchCore on every real category (+ --sweep for the cost table)
python benchmarks/bench_engines.py            # encoder-only yardstick vs PyTorch / ORT fp32 / ORT int8 / Triton
python benchmarks/bench_zero_shot.py          # zero-shot GRNR and INP-distance beside the trained models
python benchmarks/bench_tiling.py             # small defects on >= 2048 px frames: tiling vs downscaling
python benchmarks/bench_pipeline.py           # bare model vs Kafka -> consumer -> PostgreSQL/Redis, 1 and 2 consumers
