#!/usr/bin/env python
"""Compares backbones on detection and segmentation (and classification probes): collects the
runs, measures each backbone's parameters, FLOPs (fvcore) and latency, and writes `report.md`
with PNG plots, every number given as mean ± spread over the seeds of one setting, and every
comparison judged by one stated rule (mae_app.report.VERDICT_RULE).

    # runs made by the tools, each into its own folder (train.output_dir / --work-dir / --output-dir)
    python tools/compare.py --runs output/det/* output/seg/* --output-dir output/report
    # run what a plan lists (skipping finished runs), then collect
    python tools/compare.py --plan out/plan.json --output-dir out/report

Each folder holds the `run.json` its tool wrote at the end of a successful run
(tools/train_det.py incl. --eval-only, train_seg.py, test_seg.py, eval_cls.py; fields in
mae_core/run_record.py): task, backbone, initial checkpoint, seed, image size and the data it
evaluated. Metrics are read from the logs in the folder (mae_app/runs.py); a catalogue backbone's
params, FLOPs and latency are measured at `img_size`. Runs of one setting (backbone and initial
checkpoint, or pretraining settings) over several seeds make one row; an evaluation on data other
than the val set it trained beside (e.g. tools/test_seg.py on another test set) goes to the
held-out columns, apart from val. A labelled fraction (`label_fraction`) or a frozen backbone
(`frozen`) makes its own rows and curves. A plan is a JSON list of {"run": {...}, "adds": {...},
"output_dir": DIR, "command": [argv...]} (mae_app/jobs.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mae_app.jobs import execute_plan
from mae_app.report import write_report
from mae_app.runs import load_run
from mae_core.errors import exit_on_user_error


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="*", type=Path, default=[], help="run folders or run JSON files")
    p.add_argument("--plan", type=Path, help="run the commands of this plan first (see above)")
    p.add_argument("--rerun", action="store_true", help="with --plan: rerun finished runs too")
    p.add_argument("--jobs", type=int, default=1, help="with --plan: runs at a time (cores shared out)")
    p.add_argument("--output-dir", type=Path, required=True, help="folder for report.md and the plots")
    p.add_argument("--title", default="Backbone comparison")
    args = p.parse_args(argv)
    if not args.runs and not args.plan:
        p.error("give --runs and/or --plan")
    with exit_on_user_error("compare.py"):
        folders = list(args.runs) + (execute_plan(args.plan, args.rerun, args.jobs) if args.plan else [])
        cache: dict = {}
        runs = [load_run(f, cache=cache) for f in folders]
    report = write_report(runs, args.output_dir, args.title)
    print(report.read_text())
    print(f"report written to {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
