#!/usr/bin/env python
"""Compares backbones on detection and segmentation (and classification probes): collects the
runs, measures each backbone's parameters, FLOPs (fvcore) and latency, and writes `report.md`
with PNG plots, every number given as mean ± spread over the seeds that were run, and every
comparison judged by one stated rule (mae_app.report.VERDICT_RULE).

    # collect finished runs (each folder holds a run.json, see below)
    python tools/compare.py --runs out/det/vit_mae_s0 out/det/vit_random_s0 ... --out out/report
    # run what a plan lists (skipping finished runs), then collect
    python tools/compare.py --plan out/plan.json --out out/report

A run is described by `run.json` in its folder:
    {"task": "det" | "seg" | "cls", "backbone": "vit_mae", "seed": 0,
     "backbone_kwargs": {...}, "checkpoint": "...", "img_size": 128, "batch_size": 2,
     "mask_ratio": 0.75,                # optional, for pretraining sweeps
     "label_fraction": 0.1, "subset_seed": 0,  # optional: a labelled subset (else every label)
     "frozen": true,                    # optional: the backbone fixed (linear / head-only transfer)
     "split": "heldout",                # optional: an evaluation on held-out data, beside val
     "box_AP": ..., "mask_AP": ..., "mIoU": ..., "knn_acc": ..., "linear_acc": ...}
Absent metrics are read from the logs in the folder (mae_app/runs.py); params, FLOPs and latency
are measured on the catalogue backbone at `img_size`. A plan is a JSON list of
{"run": {...run.json...}, "output_dir": DIR, "command": [argv...]} (mae_app/jobs.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mae_app.jobs import execute_plan
from mae_app.report import write_report
from mae_app.runs import RunError, load_run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="*", type=Path, default=[], help="run folders or run JSON files")
    p.add_argument("--plan", type=Path, help="run the commands of this plan first (see above)")
    p.add_argument("--rerun", action="store_true", help="with --plan: rerun finished runs too")
    p.add_argument("--jobs", type=int, default=1, help="with --plan: runs at a time (cores shared out)")
    p.add_argument("--out", type=Path, required=True, help="folder for report.md and the plots")
    p.add_argument("--title", default="Backbone comparison")
    args = p.parse_args(argv)
    try:
        folders = list(args.runs) + (execute_plan(args.plan, args.rerun, args.jobs) if args.plan else [])
        if not folders:
            p.error("give --runs and/or --plan")
        cache: dict = {}
        runs = [load_run(f, cache=cache) for f in folders]
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = write_report(runs, args.out, args.title)
    print(report.read_text())
    print(f"report written to {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
