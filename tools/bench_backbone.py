"""Backbone benchmark: the toolkit's ViT backbone + simple feature pyramid against Detectron2's
ViTDet `ViT` + `SimpleFeaturePyramid` (ViT-B), and the toolkit's segmentation backbone against
MMSegmentation's `MAE`. Same weights, outputs compared before timing; medians of interleaved
rounds; peak memory per case in a fresh process. The cases and the report are
benchmarks/backbone.py.

    python tools/bench_backbone.py                          # det at 512 and 1024, seg at 512
    python tools/bench_backbone.py --sizes 512 --rounds 2 --suites det --no-memory   # quick look

FLOPs: benchmarks.common.forward_flops on the plain ViT + pyramid forward (2 per MAC); fwd+bwd
counts 3x forward."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.backbone import BackboneOptions, bench_suite, prepare_process, report_sections
from benchmarks.common import machine_description, write_report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", default="det,seg", help="det (vs Detectron2), seg (vs MMSegmentation)")
    parser.add_argument("--sizes", default="512,1024", help="det sizes")
    parser.add_argument("--seg-size", type=int, default=512, help="the seg suite's size")
    parser.add_argument("--modes", default="fwd,fwdbwd")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-case peak-memory processes")
    parser.add_argument("--attention-paths", default="",
                        help="det: also time the toolkit with these rel-pos paths forced, e.g. fused,chunked "
                             "(mae_core.layers.REL_POS_PATHS; the plain toolkit case uses the chosen path)")
    parser.add_argument("--retain-host-memory", action="store_true",
                        help="keep freed host memory in the process (mae_core.host_memory), as pretraining "
                             "does with retain_host_memory; both implementations alike")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    opts = BackboneOptions(rounds=args.rounds, threads=args.threads, device=args.device, warmup=args.warmup,
                           precision=args.precision, batch=args.batch, modes=args.modes.split(","),
                           memory=not args.no_memory,
                           attention_paths=tuple(p for p in args.attention_paths.split(",") if p),
                           retain_host_memory=args.retain_host_memory)
    device = prepare_process(opts)
    print(machine_description())
    runs = []
    for suite in args.suites.split(","):
        sizes = [int(s) for s in args.sizes.split(",")] if suite == "det" else [args.seg_size]
        runs += [(suite, size) for size in sizes]
    results = [bench_suite(suite, size, opts, device) for suite, size in runs]
    write_report(report_sections(results, opts), results,
                 f"python tools/bench_backbone.py {' '.join(sys.argv[1:])}", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
