"""The demo's pretraining steps, old data path against fast path (per-sample augmentation, images
decoded every epoch, glibc's allocator defaults vs batched augmentation, cached images, retained
host memory), same weights, crops and masks. The cases and the report are benchmarks/demo_epoch.py.

    python tools/bench_demo_epoch.py --data <demo out>/data/pretrain --steps 31 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.common import write_report
from benchmarks.demo_epoch import DemoEpochOptions, bench_demo_epoch, report_sections


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True,
                        help="the demo's pretraining images (tools/make_demo_data.py)")
    parser.add_argument("--steps", type=int, default=31, help="steps per round and path (31 = one epoch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", type=Path, default=None, help="also write all numbers here")
    args = parser.parse_args(argv)
    opts = DemoEpochOptions(rounds=args.rounds, threads=args.threads, device=args.device, steps=args.steps)
    result = bench_demo_epoch(args.data, opts)
    write_report(report_sections(result), [result],
                 f"python tools/bench_demo_epoch.py {' '.join(sys.argv[1:])}", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
