"""Train or evaluate a Detectron2 Mask R-CNN from a LazyConfig in configs/detection/.

Detectron2's standard command line, e.g.
    python tools/train_det.py --config-file configs/detection/mask_rcnn_vit_base_100ep.py \
        --num-gpus 8 train.mae_checkpoint=mae_pretrain_vit_base.pth
    python tools/train_det.py --config-file CFG --eval-only train.init_checkpoint=OUT/model_final.pth
    python tools/train_det.py --config-file CFG --resume      # continue from OUT/last_checkpoint

`key=value` pairs override the config and must name existing keys (`+key=value` adds one);
options such as `--resume` may come before or after them. Training runs Detectron2's hooks:
iteration timer, lr schedule, periodic checkpoints, periodic COCO evaluation, and metrics printed
with an ETA and written to TensorBoard and `metrics.json` in `train.output_dir`. Box and mask AP
are printed and saved to `train.output_dir/eval_results.json`.

A non-finite gradient norm or loss stops the run (exit 1) naming the iteration as metrics.json
does; no checkpoint holding a NaN or infinity is written and no model holding one is evaluated.
`--resume` restores the weights, optimizer, schedule, sampler position and random generators, so
the resumed run continues as the uninterrupted one would (exactly with `num_workers=0`)."""

from __future__ import annotations

import sys

from detectron2.engine import default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from detection.data import CocoDatasetError
from detection.engine import NonFiniteError
from detection.overrides import OverrideError, load_lazy_config
from detection.train import evaluate_checkpoint, parse_args, train
from mae_core.checkpoint import CheckpointError
from mae_core.data import ImageReadError


def run_process(args) -> None:
    """What each process Detectron2's `launch` starts runs: the config set up, then training or
    evaluation (detection.train)."""
    cfg = load_lazy_config(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="detection")
    if args.eval_only:
        evaluate_checkpoint(cfg, args.resume)
    else:
        train(cfg, args.resume)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        launch(
            run_process,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (CheckpointError, CocoDatasetError, ImageReadError, NonFiniteError, OverrideError) as exc:
        sys.exit(f"train_det.py: error: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
