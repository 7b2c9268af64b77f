#!/usr/bin/env python
"""Classification evaluation of an encoder: k-NN, linear probe, partial and full fine-tuning.

    # MAE encoder vs the same ViT at random initialisation, on the demo's classification folders
    python tools/eval_cls.py --data data/demo/cls --backbone vit_mae --checkpoint out/pretrain/ckpt.pth \\
        --arch vit_toy_patch4 --img-size 64 --mode knn linear --output-dir out/eval/mae
    python tools/eval_cls.py --data data/demo/cls --backbone vit_random --arch vit_toy_patch4 --img-size 64 \\
        --mode knn linear --output-dir out/eval/random
    # a ViT pretrained with labels (the catalogue's vit_supervised): fine-tune from scratch, keep the backbone
    python tools/eval_cls.py --data data/demo/cls --backbone vit_random --mode finetune --epochs 30 \\
        --save-backbone out/supervised/backbone.pth

`--data` holds `train/` and `val/`, each with one sub-folder per class. Any catalogue backbone
(mae_core/catalogue.py) works; partial fine-tuning needs one that reports layer ids (the ViTs).
Results go to stdout and, with --output-dir, to `eval_cls.json` in that folder beside the run's
record (`run.json`: backbone, checkpoint, seed, image size, data), which tools/compare.py reads."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mae_app.classify import MODES, ClsEval, evaluate, run_record
from mae_app.runs import CLS_RESULTS
from mae_core.catalogue import CATALOGUE
from mae_core.config import IMAGENET_MEAN, IMAGENET_STD
from mae_core.errors import exit_on_user_error
from mae_core.run_record import write_run_record


def parse_args(argv=None) -> tuple[ClsEval, Path | None]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with train/ and val/ class folders")
    p.add_argument("--backbone", default="vit_mae",
                   help=f"catalogue name: {', '.join(CATALOGUE)}, timm:<name>")
    p.add_argument("--checkpoint", default=None, help="weights for the backbone (required by vit_mae)")
    p.add_argument("--allow-pickle", action="store_true", help="load pickled checkpoints you trust")
    p.add_argument("--arch", default="vit_toy_patch4", help="ViT size for vit_* backbones")
    p.add_argument("--patch-size", type=int, default=None, help="override the ViT size's patch size")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--mode", nargs="+", choices=MODES, default=["knn", "linear"])
    p.add_argument("--k", type=int, default=20, help="k-NN neighbours")
    p.add_argument("--temperature", type=float, default=0.07, help="k-NN vote temperature")
    p.add_argument("--probe-epochs", type=int, default=90)
    p.add_argument("--probe-lr", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (partial and full)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--layer-decay", type=float, default=0.75)
    p.add_argument("--blocks", type=int, default=1, help="partial fine-tuning: train the last k blocks")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--mean", type=float, nargs="+", default=list(IMAGENET_MEAN))
    p.add_argument("--std", type=float, nargs="+", default=list(IMAGENET_STD))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--save-backbone", type=Path, default=None,
                   help="after full fine-tuning, write the trained ViT backbone here (official layout)")
    p.add_argument("--output-dir", type=Path, default=None,
                   help=f"write the results ({CLS_RESULTS}) and the run record (run.json) here")
    args = vars(p.parse_args(argv))
    output = args.pop("output_dir")
    try:
        return ClsEval(**args), output
    except ValueError as exc:
        p.error(str(exc))


def main(argv=None) -> int:
    ev, output = parse_args(argv)
    with exit_on_user_error("eval_cls.py"):
        results = evaluate(ev)
    for key in ("knn_acc", "linear_acc", "partial_acc", "finetune_acc"):
        if key in results:
            print(f"{key:13s} {100 * results[key]:.2f}%")
    if output:
        output.mkdir(parents=True, exist_ok=True)
        (output / CLS_RESULTS).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        write_run_record(output, run_record(ev))
        print(f"results written to {output / CLS_RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
