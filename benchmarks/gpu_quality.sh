#!/usr/bin/env bash
# Issue 13's three-seed quality run on a lent GPU, all in one job (budget: 330 s wall).
#
#   bash benchmarks/gpu_quality.sh            # from the repo root; $OUT and $LINEINSPECT_DATA set by the host
#   python benchmarks/bench_memory.py --aggregate --from <fetched $OUT>   # afterwards, anywhere
#
# bench_memory.py (INP-Former, the extrinsic-memory hybrids, the earlier memory rows, knn_r20k): one
# process per category and seed; bench_knn.py (every knn_* row: coresets and search on the GPU) and
# bench_fewshot.py (few-shot 1/2/4 rows, niced: lowest priority): one per category, seeds 0 1 2 in turn.
# 20 processes on 16 CPUs, one torch thread each.
# Every process has its own wall-clock limit and writes its JSON after each seed, so a slow category
# loses its last seeds, never the run. Knobs (for a CPU smoke test): QUALITY_SEEDS, QUALITY_CATEGORIES,
# QUALITY_ITERS, QUALITY_DEVICE, QUALITY_LIMIT_S, QUALITY_FEWSHOT (0 = skip).
set -uo pipefail

OUT=${OUT:?set OUT to the folder the results go to}
SEEDS=${QUALITY_SEEDS:-"0 1 2"}
CATS=${QUALITY_CATEGORIES:-"bsdata/ball_screw_drive kolektorsdd/commutator magnetic_tile/magnetic_tile mvtec_3d_ad/tire"}
DEVICE=${QUALITY_DEVICE:-cuda}
LIMIT=${QUALITY_LIMIT_S:-280}
FEWSHOT=${QUALITY_FEWSHOT:-1}
ITERS=${QUALITY_ITERS:-}
RUNS="$OUT/runs"
LOG="$OUT/gpu_quality.log"
mkdir -p "$RUNS/memory_runs" "$RUNS/knn_runs" "$RUNS/fewshot_runs" "$OUT/logs"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
t0=$(date +%s)
say() { echo "[gpu_quality +$(( $(date +%s) - t0 ))s] $*" | tee -a "$LOG"; }

say "start: seeds [$SEEDS], device $DEVICE, limit ${LIMIT}s per process, data ${LINEINSPECT_DATA:-<unset>}"
# fail fast: imports, the device, the data
python - "$DEVICE" $CATS <<'EOF' 2>&1 | tee -a "$LOG"
import sys, os, pathlib
dev, cats = sys.argv[1], sys.argv[2:]
import numpy, torch, cv2, tqdm  # noqa: F401  (onnxruntime is not needed here)
from benchmarks import bench_memory, bench_knn, bench_fewshot  # noqa: F401
from benchmarks.common import data_root
from inference.model.inp_former import InpConfig, InpFormer
if dev.startswith("cuda") and not torch.cuda.is_available():
    sys.exit("IMPORT CHECK FAILED: no CUDA device")
root = data_root()
missing = [c for c in cats if not (root / c / "train" / "good").is_dir() or not (root / c / "test").is_dir()]
if missing:
    sys.exit(f"IMPORT CHECK FAILED: data missing under {root}: {missing}")
# the device paths this job relies on: the greedy coreset and a memory model's forward pass there
from training.patchcore import greedy_coreset
x = torch.randn(3000, 152, device=dev)
sel = greedy_coreset(x, 64, 0)
assert sel.device.type == torch.device(dev).type and len(set(sel.tolist())) == 64, "coreset on the device"
m = InpFormer(InpConfig(memory_size=8, memory_dims=4)).to(dev).eval()  # the backbone weights package is installed
with torch.no_grad():
    img = torch.rand(2, 3, 256, 256, device=dev)
    rows = m.encode_memory(img).permute(0, 2, 3, 1).reshape(-1, m.head.memory.channels)
    m.head.memory.fit_projection(rows)
    m.head.memory.fit(rows[greedy_coreset(rows, 8, 0)])
    amap, score = m(img)
assert torch.isfinite(score).all() and amap.shape == (2, 256, 256), "memory model forward on the device"
print(f"import check ok: torch {torch.__version__}, numpy {numpy.__version__}, device {dev}"
      + (f" ({torch.cuda.get_device_name()})" if dev.startswith("cuda") else "") + f", data {root}", flush=True)
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || { say "import check failed: stopping"; exit 1; }

pids=()
for c in $CATS; do
  n=${c//\//__}
  for s in $SEEDS; do  # one process per category AND seed (each trains one model and scores ~20 maps)
    timeout -k 5 "$LIMIT" python benchmarks/bench_memory.py --category "$c" --seeds "$s" --device "$DEVICE" \
        --out "$RUNS/memory_runs" --cache "benchmarks/_work/cache_memory_s$s" ${ITERS:+--iters $ITERS} \
        > "$OUT/logs/memory_${n}_s$s.log" 2>&1 &
    pids+=($!)
  done
  timeout -k 5 "$LIMIT" python benchmarks/bench_knn.py --category "$c" --seeds $SEEDS --device "$DEVICE" \
      --out "$RUNS/knn_runs" > "$OUT/logs/knn_$n.log" 2>&1 &
  pids+=($!)
  if [ "$FEWSHOT" != 0 ]; then
    # seed by seed, so that what finishes covers every category for the first seeds
    timeout -k 5 "$LIMIT" nice -n 5 bash -c 'for s in $1; do
        python benchmarks/bench_fewshot.py --category "$2" --few-shot 1 2 4 --seeds "$s" --device "$3" --out "$4" $5 || exit $?
      done' _ "$SEEDS" "$c" "$DEVICE" "$RUNS/fewshot_runs" "${ITERS:+--iters $ITERS}" > "$OUT/logs/fewshot_$n.log" 2>&1 &
    pids+=($!)
  fi
done
say "started ${#pids[@]} processes"
while :; do
  alive=0
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
  [ "$alive" -eq 0 ] && break
  say "running: $alive; files: memory $(ls "$RUNS/memory_runs" | wc -l), knn $(ls "$RUNS/knn_runs" | wc -l), fewshot $(ls "$RUNS/fewshot_runs" | wc -l); last lines: $(tail -qn1 "$OUT"/logs/memory_*.log 2>/dev/null | tr '\r' '\n' | tail -n1 | cut -c1-160)"
  sleep 15
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
say "all done (last non-zero exit $rc; 124 = hit the ${LIMIT}s limit)"
for f in "$OUT"/logs/*.log; do echo "== $f" >> "$LOG"; tail -n 5 "$f" | tr '\r' '\n' | tail -n 5 >> "$LOG"; done
tar -czf "$OUT/quality_runs.tar.gz" -C "$RUNS" memory_runs knn_runs fewshot_runs -C "$OUT" logs
rm -rf "$RUNS" "$OUT/logs"
say "wrote $OUT/quality_runs.tar.gz ($(du -h "$OUT/quality_runs.tar.gz" | cut -f1)); aggregate with: python benchmarks/bench_memory.py --aggregate --from <that file or its folder>"
exit 0
