#!/usr/bin/env bash
# The benchmarks on one CUDA GPU in bf16, in under five minutes; a short table is printed last.
#   bash tools/gpu_check.sh            (PYTHON=... to choose the interpreter, OUT=... for the JSON)
# Paste the printed tables into docs/benchmarks.md ("GPU" section).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-bench_gpu}
mkdir -p "$OUT"
"$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("error: gpu_check.sh needs a CUDA device; torch sees none")
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PYEOF

have() { "$PY" -c "import $1" >/dev/null 2>&1; }

# 1. MAE step vs Hugging Face and vs mask tokens in the encoder (ViT-B and ViT-L at 224).
pretrain_args=(--device cuda --precisions bf16 --configs base,large --batch 64 --rounds 5 --warmup 3
               --json "$OUT/pretrain.json")
have transformers || pretrain_args+=(--no-hf)
timeout 120 "$PY" tools/bench_pretrain.py "${pretrain_args[@]}" > "$OUT/pretrain.log" 2>&1 \
    || echo "bench_pretrain failed or timed out; see $OUT/pretrain.log"

# 2. Backbone + pyramid vs Detectron2 (512, 1024) and vs MMSegmentation's MAE (512).
suites=det
have mmseg && suites=det,seg || echo "mmseg not importable: segmentation comparison skipped"
timeout 170 "$PY" tools/bench_backbone.py --device cuda --precision bf16 --suites "$suites" --sizes 512,1024 \
    --batch 2 --rounds 3 --warmup 2 --json "$OUT/backbone.json" > "$OUT/backbone.log" 2>&1 \
    || echo "bench_backbone failed or timed out; see $OUT/backbone.log"

# The short table.
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("pretrain", "backbone"):
    path = out / f"{name}.json"
    if path.exists():
        print(f"\n## {name} (bf16, CUDA)\n")
        print(json.loads(path.read_text())["report"])
    else:
        print(f"\n## {name}: no result (see {out / (name + '.log')})")
PYEOF
