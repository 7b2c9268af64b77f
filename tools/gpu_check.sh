#!/usr/bin/env bash
# Every benchmark path of issue #12 on one CUDA GPU in bf16, in under five minutes (the steps' limits
# add up to 290 s); each step has its own time limit and a failing step does not stop the others.
# All output goes under one folder:
#   bash tools/gpu_check.sh                  (PYTHON=... the interpreter, OUT=... the folder, default bench_gpu)
#   GPU_CHECK_DRY=1 bash tools/gpu_check.sh  (the same steps on the CPU at tiny sizes: catches typos, about 1 min)
# Steps (OUT/<step>.log each, OUT/<step>.json where the tool writes one, OUT/status.txt):
#   pretrain  MAE step, toolkit vs Hugging Face ViTMAE and vs mask tokens in the encoder (ViT-B, ViT-L)
#   demo      the demo's pretraining epoch, old path vs fast path (tools/bench_demo_epoch.py, on the
#             device; its own data made first)
#   det       backbone + pyramid at 1024 vs Detectron2, forward+backward, the rel-pos attention path
#             chosen for CUDA ("toolkit") and each path forced (toolkit:fused, toolkit:chunked)
#   seg       segmentation backbone in MMSegmentation's MAE layout vs mmseg's MAE (equal outputs first)
# Paste the printed tables into docs/benchmarks.md ("GPU" section). Exit status: the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-bench_gpu}
DRY=${GPU_CHECK_DRY:-0}
mkdir -p "$OUT"
: > "$OUT/status.txt"

if [ "$DRY" = 1 ]; then
    DEVICE=cpu PRECISION=bf16 SCALE=3  # CPU time limits 3x the GPU's
    PRETRAIN=(--configs tiny --batch 4 --rounds 1 --warmup 0 --skip-flops --matmul-size 256)
    DEMO_DATA=(--train-scenes 2 --val-scenes 2 --pretrain-images 256 --cls-train-per-class 2 --cls-val-per-class 2)
    DEMO=(--steps 1 --rounds 1)
    DET=(--sizes 128 --rounds 1 --warmup 0 --no-memory)
    SEG=(--seg-size 64 --rounds 1 --warmup 0 --no-memory)
else
    DEVICE=cuda PRECISION=bf16 SCALE=1
    PRETRAIN=(--configs base,large --batch 64 --rounds 3 --warmup 2)
    DEMO_DATA=(--train-scenes 2 --val-scenes 2 --pretrain-images 1024 --cls-train-per-class 2 --cls-val-per-class 2)
    DEMO=(--steps 8 --rounds 2)  # 8 of the demo epoch's 31 steps (batch 128) per round and path
    DET=(--sizes 1024 --batch 2 --rounds 3 --warmup 2)
    SEG=(--seg-size 512 --batch 2 --rounds 3 --warmup 2)
fi

"$PY" - "$DEVICE" <<'PYEOF' || exit 1
import sys, torch
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("error: gpu_check.sh needs a CUDA device; torch sees none (GPU_CHECK_DRY=1 runs it on the CPU)")
name = torch.cuda.get_device_name(0) if sys.argv[1] == "cuda" else "CPU (dry run)"
print("device:", name, "| torch", torch.__version__)
PYEOF

have() { "$PY" -c "import $1" >/dev/null 2>&1; }
failed=0
# step NAME SECONDS COMMAND...: runs COMMAND with its own limit, output in OUT/NAME.log, status noted.
step() {
    local name=$1 limit=$(( $2 * SCALE )) start=$SECONDS rc
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    local took=$(( SECONDS - start ))
    if [ $rc -eq 0 ]; then
        echo "$name ok ${took}s" >> "$OUT/status.txt"
    else
        [ $rc -eq 124 ] && why="timed out" || why="failed (exit $rc)"
        echo "$name $why ${took}s: see $OUT/$name.log" | tee -a "$OUT/status.txt"
        failed=$(( failed + 1 ))
    fi
}
skip() { echo "$1 skipped: $2" | tee -a "$OUT/status.txt"; }

# 1. MAE step vs Hugging Face and vs mask tokens in the encoder.
have transformers || PRETRAIN+=(--no-hf)
step pretrain 75 "$PY" tools/bench_pretrain.py --device "$DEVICE" --precisions "$PRECISION" "${PRETRAIN[@]}" \
    --json "$OUT/pretrain.json"

# 2. The demo's pretraining epoch, old vs fast, on the demo's own kind of images.
step demo_data 30 "$PY" tools/make_demo_data.py --output-dir "$OUT/demo_data" --seed 0 "${DEMO_DATA[@]}"
step demo 50 "$PY" tools/bench_demo_epoch.py --data "$OUT/demo_data/pretrain" --device "$DEVICE" "${DEMO[@]}" \
    --json "$OUT/demo.json"

# 3. Detection backbone at 1024 vs Detectron2: chosen path and each path forced.
if have detectron2; then
    step det 95 "$PY" tools/bench_backbone.py --device "$DEVICE" --precision "$PRECISION" --suites det \
        --modes fwdbwd --attention-paths fused,chunked "${DET[@]}" --json "$OUT/det.json"
else
    skip det "detectron2 not importable"
fi

# 4. Segmentation backbone in MMSegmentation's layout vs mmseg's MAE.
if have mmseg; then
    step seg 40 "$PY" tools/bench_backbone.py --device "$DEVICE" --precision "$PRECISION" --suites seg \
        "${SEG[@]}" --json "$OUT/seg.json"
else
    skip seg "mmseg not importable"
fi

# The tables, then the status of every step.
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("pretrain", "demo", "det", "seg"):
    path = out / f"{name}.json"
    if path.exists():
        print(f"\n## {name}\n")
        print(json.loads(path.read_text())["report"])
PYEOF
echo; echo "## steps"; cat "$OUT/status.txt"
exit "$failed"
