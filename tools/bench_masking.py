"""Pretraining speed of masking strategies on the same model and batch, in interleaved rounds, with
the parameters each adds and its data pipeline's noise cost. The cases and the report are
benchmarks/masking.py (the masking docs' speed column came from it).

    python tools/bench_masking.py --strategies random,block,filtered_noise,hard_patches,salience \
        --rounds 3 --steps 5 --batch 128 --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.common import machine_description, setup_threads, write_report
from benchmarks.masking import MaskingOptions, pretrain_speed, report_sections
from mae_core.masking import MASKING


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", default=",".join(MASKING),
                        help=f"comma list of {', '.join(MASKING)} (each with its default parameters)")
    parser.add_argument("--arch", default="vit_toy_patch4")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="training steps per round and strategy")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write all numbers here")
    args = parser.parse_args(argv)
    names = args.strategies.split(",")
    unknown = [n for n in names if n not in MASKING]
    if unknown:
        parser.error(f"unknown masking {unknown}; known: {', '.join(MASKING)}")
    opts = MaskingOptions(rounds=args.rounds, threads=args.threads, device=args.device, batch=args.batch,
                          steps=args.steps)
    setup_threads(opts.threads)
    print(machine_description())
    result = pretrain_speed({n: (n, {}) for n in names}, arch=args.arch, img_size=args.img_size,
                            batch=opts.batch, steps=opts.steps, rounds=opts.rounds, device=opts.device)
    write_report(report_sections(result, opts), [result],
                 f"python tools/bench_masking.py {' '.join(sys.argv[1:])}", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
