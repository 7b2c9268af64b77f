"""MAE training-step benchmark: the toolkit against Hugging Face's ViTMAEForPreTraining, and
against its own model with mask tokens in the encoder (the paper's speed claim). The cases, the
numerics check and the report are benchmarks/pretrain.py.

    python tools/bench_pretrain.py                      # base + tiny + large, fp32 and bf16
    python tools/bench_pretrain.py --quick              # tiny + base, 2 rounds
    python tools/bench_pretrain.py --configs base --precisions fp32 --rounds 5 --ablations
    python tools/bench_pretrain.py --device cuda --precisions bf16   # see tools/gpu_check.sh

FLOPs: benchmarks.common.forward_flops on the forward pass (2 FLOPs per multiply-accumulate,
attention included); a training step counts as 3x the forward (backward = 2x forward; the
optimizer is not counted)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from benchmarks.common import (
    PRECISION_DTYPES,
    device_from_arg,
    machine_description,
    setup_threads,
    write_report,
)
from benchmarks.pretrain import CONFIGS, PretrainOptions, bench_config, report_sections


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,base,large", help=f"comma list of {', '.join(CONFIGS)}")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="override every config's batch size")
    parser.add_argument("--quick", action="store_true", help="tiny + base, 2 rounds: a fast look")
    parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face comparison")
    parser.add_argument("--ablations", action="store_true",
                        help="also time the toolkit with foreach AdamW and with the unfused (math) attention")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile(toolkit); first step = compile")
    parser.add_argument("--foreach-adamw", action="store_true",
                        help="use foreach instead of fused AdamW everywhere")
    parser.add_argument("--skip-flops", action="store_true")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--matmul-reps", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None, help="also write all numbers here")
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.rounds = "tiny,base", min(args.rounds, 2)
    args.precisions = args.precisions.split(",")
    for p in args.precisions:
        if p not in PRECISION_DTYPES:
            parser.error(f"unknown precision {p!r}; use fp32 and/or bf16")
    names = args.configs.split(",")
    for n in names:
        if n not in CONFIGS:
            parser.error(f"unknown config {n!r}; known: {', '.join(CONFIGS)}")
    opts = PretrainOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainOptions)})
    device = device_from_arg(args.device)
    setup_threads(args.threads)
    print(machine_description())
    results = []
    for n in names:
        cfg = CONFIGS[n] if not args.batch else dataclasses.replace(CONFIGS[n], batch=args.batch)
        results.append(bench_config(n, cfg, opts, device))
    write_report(report_sections(results, opts), results,
                 f"python tools/bench_pretrain.py {' '.join(sys.argv[1:])}", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
