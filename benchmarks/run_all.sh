#!/usr/bin/env bash
# Regenerate benchmarks/RESULTS.md, benchmarks/results/*.json and README's generated quality table on this
# machine. Each script replaces only its own <!-- name:begin --> ... <!-- name:end --> section.
#
#   bash benchmarks/run_all.sh system    # engines, pipeline, camera frames, tiling, drift, families (~1-1.5 h on 2 cores)
#   bash benchmarks/run_all.sh quality   # the three-seed quality run behind the README's table (~4-6 h on 2 cores)
#   bash benchmarks/run_all.sh zero-shot # GRNR and INP-distance on every category (~1 h: GRNR runs at ~0.5 img/s)
#   bash benchmarks/run_all.sh all       # the three above, in that order
#
# Not here, because they run for their own purpose: bench_soak.py (30 min of faults on private services),
# ci_loop.py (clean-clone CI runs in a loop), bench_gpu_decode.py (needs a GPU), gpu_quality.sh (the quality
# run on a GPU host), bench_residual.py and bench_levers.py / bench_quality.py --sweep (levers that were
# measured and not adopted). Run on a quiet machine: the speed figures are ratios measured side by side
# within one script's run, but they move with whatever else the cores are doing.
set -euo pipefail
source "$(dirname "$0")/../scripts/env.sh"
cd "$LI_ROOT"

CATS=(bsdata/ball_screw_drive kolektorsdd/commutator magnetic_tile/magnetic_tile mvtec_3d_ad/tire)

system() {
  bash deploy/services.sh install postgres redis kafka
  bash deploy/services.sh start
  python benchmarks/bench_engines.py            # encoder-only yardstick vs PyTorch / ORT fp32 / ORT int8 / OpenVINO / Triton
  python benchmarks/bench_pipeline.py           # bare model vs Kafka -> consumer -> PostgreSQL/Redis, 1 and 2 consumers
  python benchmarks/bench_pipeline.py --camera --camera-auroc   # 5 / 12 / 20 MP frames: decode, line rate, AUROC
  python benchmarks/bench_tiling.py             # small defects on >= 2048 px frames: tiling vs downscaling
  python benchmarks/bench_drift.py              # drift alarms: detection delay and false alarms
  python benchmarks/bench_families.py --consumer-cost   # defect families: clustering quality and consumer cost
}

# One process per half of the categories, one torch thread each (two processes of two threads each on two
# cores train a model in 190-600 s instead of ~20 s). Per category: the default head (INP-Former and every
# memory row on it), the two lighter heads (they reuse the default head's coresets), the kNN banks, few-shot.
quality_half() {
  local out=$1; shift
  for c in "$@"; do
    python benchmarks/bench_memory.py --category "$c" --seeds 0 1 2 --threads 1 --out "$out/memory_runs"
    for head in dec2 w64; do
      python benchmarks/bench_memory.py --category "$c" --seeds 0 1 2 --threads 1 --head "$head" --out "$out/memory_runs"
    done
    python benchmarks/bench_knn.py --category "$c" --seeds 0 1 2 --out "$out/knn_runs"
    for s in 0 1 2; do
      python benchmarks/bench_fewshot.py --category "$c" --few-shot 1 2 4 --seeds "$s" --out "$out/fewshot_runs"
    done
  done
}

quality() {
  local out=benchmarks/_work/quality_run
  rm -rf "$out" && mkdir -p "$out"
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 quality_half "$out" "${CATS[@]:0:2}" > "$out/half_a.log" 2>&1 &
  local a=$!
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 quality_half "$out" "${CATS[@]:2:2}" > "$out/half_b.log" 2>&1 &
  local b=$!
  wait "$a" || { echo "quality: first half failed, see $out/half_a.log" >&2; exit 1; }
  wait "$b" || { echo "quality: second half failed, see $out/half_b.log" >&2; exit 1; }
  # one model for all 4 categories, with this script's per-category control (-> unified_control.json)
  python benchmarks/bench_fewshot.py --unified --control --seeds 0 --out "$out/fewshot_runs"
  python benchmarks/bench_memory.py --speed --rounds 5    # ORT batch 8 vs the encoder alone -> quality_speed.json
  python benchmarks/bench_memory.py --aggregate --from "$out"   # quality.json, RESULTS.md, README's table
  python benchmarks/bench_coreset_draws.py                # the winners' margins over 3 seeds x 5 coreset draws
  python benchmarks/bench_zero_shot.py --rewrite          # its trained rows come from the new quality.json
}

zero_shot() {
  python benchmarks/bench_zero_shot.py
}

case "${1:-all}" in
  system) system ;;
  quality) quality ;;
  zero-shot) zero_shot ;;
  all) system; quality; zero_shot ;;
  *) echo "usage: bash benchmarks/run_all.sh [system|quality|zero-shot|all]" >&2; exit 2 ;;
esac
