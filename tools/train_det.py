"""Train or evaluate a Detectron2 Mask R-CNN from a LazyConfig in configs/detection/.

    python tools/train_det.py --config-file configs/detection/mask_rcnn_vit_base_100ep.py \\
        --num-gpus 8 train.mae_checkpoint=mae_pretrain_vit_base.pth train.output_dir=output/det/mae
    python tools/train_det.py --config-file CFG --resume train.output_dir=output/det/mae   # continue it
    python tools/train_det.py --config-file CFG --eval-only \\
        train.init_checkpoint=output/det/mae/model_final.pth train.output_dir=output/det/mae_eval
    python tools/train_det.py --config-file CFG --num-machines 2 --machine-rank 0 \\
        --dist-url tcp://HOST0:29500 --num-gpus 8 ...                       # and rank 1 on HOST1

`key=value` pairs override the config (LazyConfig keys such as train.mae_checkpoint=PATH,
train.output_dir=DIR, train.max_iter=N) and must name existing keys (`+key=value` adds one);
options such as `--resume` may come before or after them. Training runs Detectron2's hooks:
iteration timer, lr schedule, periodic checkpoints, periodic COCO evaluation, and metrics printed
with an ETA and written to TensorBoard and `metrics.json` in `train.output_dir`. Box and mask AP
are printed and saved to `train.output_dir/eval_results.json`; the run's record (backbone,
checkpoint, seed, data evaluated) to `run.json`, which tools/compare.py reads.

One run per folder: a run holds `train.output_dir` while it runs (`run.lock`); a folder holding
another run's checkpoints or metrics is refused without `--resume` (continue it) or `--overwrite`
(its checkpoints, metrics and logs are deleted first). A non-finite gradient norm or loss stops the
run (exit 1) naming the iteration as metrics.json does; no checkpoint holding a NaN or infinity is
written. `--resume` restores the weights, optimizer, schedule, sampler position and random
generators, so the resumed run continues as the uninterrupted one would (exactly with
`num_workers=0`)."""

from __future__ import annotations

import sys

from detectron2.engine import launch
from torch.multiprocessing import ProcessExitedException

from detection.train import parse_args, run_reporting_user_errors


def main(argv=None) -> int:
    args = parse_args(argv, __doc__)
    try:
        launch(
            run_reporting_user_errors,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except ProcessExitedException as exc:  # a spawned worker's own message is above
        raise SystemExit(f"train_det.py: error: {exc}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
