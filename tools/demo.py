#!/usr/bin/env python
"""`make demo`: the whole pipeline at toy scale on real bundled images, on a CPU.

    build the data -> pretrain a tiny MAE -> reconstruction picture -> k-NN and linear probe of the
    MAE encoder against random initialisation -> Mask R-CNN from MAE init and from random init ->
    UperNet from both -> the trained models on the held-out scenes -> comparison report (report.md,
    plots, verdicts by a stated rule; the report printed at the end)

    python tools/demo.py                                # defaults: seeds 0 1 2, mask ratio 75%
    python tools/demo.py --mask-ratio-sweep             # + pretrainings at 25/50/90% (probes)
    python tools/demo.py --masking-sweep --output-dir output/masking   # each masking strategy, pretrained
                                                        # with seeds 0 1 and probed with seeds 0 1 2
    python tools/demo.py --masking-sweep --sweep-transfer --transfer-seeds 0 --output-dir output/masking
                                                        # + Mask R-CNN and UperNet of every pretraining
    python tools/demo.py --label-efficiency --frozen    # + MAE, random init and supervised ViT on
                                                        # 10/25/100 % of the labels, fine-tuned and
                                                        # frozen: curves against the fraction
    python tools/demo.py --quick                        # a smoke run of every step in a few minutes

Every step's files go under --output-dir; a finished step (a `.done` marker) is not run again, so an
interrupted demo continues where it stopped (--fresh starts over). Each run's log is in its
folder. The steps and the recipe are mae_app/demo.py; the detection and segmentation runs use
configs/detection/demo_mask_rcnn_vit_toy.py and configs/segmentation/demo_upernet_vit_toy.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mae_app.demo import MASKING_SWEEP, RATIO_SWEEP, REPO, Demo, DemoOptions, Recipe
from mae_core.errors import exit_on_user_error


def parse_args(argv=None) -> DemoOptions:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", type=Path, default=REPO / "output/demo", help="where everything goes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="fine-tuning / probe seeds (>= 2 for a spread and a verdict; default 0 1 2)")
    p.add_argument("--transfer-seeds", type=int, nargs="+",
                   help="detection / segmentation seeds where fewer than --seeds (default: --seeds); "
                        "the masking sweep's transfer fits 90 minutes with one")
    p.add_argument("--mask-ratio", type=float, default=0.75, help="the MAE used for detection / segmentation")
    p.add_argument("--mask-ratio-sweep", action="store_true",
                   help=f"also pretrain at {', '.join(f'{x * 100:.0f}%%' for x in RATIO_SWEEP)} and probe "
                        "each")
    p.add_argument("--masking-sweep", action="store_true",
                   help=f"instead of the main comparison, pretrain with each masking strategy "
                        f"({', '.join(MASKING_SWEEP)}) at --mask-ratio for --sweep-epochs and probe each")
    p.add_argument("--sweep-epochs", type=int,
                   help=f"pretraining epochs of each strategy (default {Recipe().sweep_epochs})")
    p.add_argument("--pretrain-seeds", type=int, nargs="+",
                   help="seeds of the MAE pretraining: one pretraining per seed (and per swept ratio or "
                        "strategy), each probed and fine-tuned (default 0; with --masking-sweep 0 1)")
    p.add_argument("--sweep-transfer", action="store_true",
                   help="with --masking-sweep: Mask R-CNN and UperNet from every strategy too")
    p.add_argument("--jobs", type=int, default=2, help="probe / fine-tuning runs at a time, one core each")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--pretrain-epochs", type=int)
    p.add_argument("--det-iters", type=int)
    p.add_argument("--seg-iters", type=int)
    p.add_argument("--skip", nargs="*", choices=["det", "seg"], default=[], help="leave out a task")
    p.add_argument("--also", nargs="*", default=[], metavar="BACKBONE",
                   help="more catalogue backbones for detection and segmentation: vit_supervised (trained "
                        "here with labels), resnet50_fpn, convnext_atto, timm:<name>")
    p.add_argument("--label-efficiency", action="store_true",
                   help="also fine-tune every backbone (MAE, random init, vit_supervised) on 10 %% and "
                        "25 %% of the labelled scenes (nested subsets; segmentation's iterations x "
                        "sqrt(fraction), detection's in full); curves in the report")
    p.add_argument("--frozen", action="store_true",
                   help="also train on each backbone frozen: Mask R-CNN's pyramid and heads, a linear "
                        "segmentation head (at every --label-efficiency fraction, else on all labels)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run of every step (minutes, meaningless numbers)")
    p.add_argument("--fresh", action="store_true", help="delete --output-dir first")
    args = p.parse_args(argv)
    try:
        return DemoOptions(**vars(args))
    except ValueError as exc:  # an unknown backbone, a ratio outside the sweep, two sweeps
        p.error(str(exc))


def main(argv=None) -> int:
    options = parse_args(argv)
    with exit_on_user_error("demo.py"):
        return Demo(options).main()


if __name__ == "__main__":
    sys.exit(main())
