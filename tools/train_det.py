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

import logging
import sys

import torch
from detectron2.config import instantiate
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from detection.data import CocoDatasetError, train_loader
from detection.engine import (
    AtomicCheckpointer,
    NonFiniteError,
    build_optimizer,
    evaluate,
    init_backbone_from_mae,
    wrap_ddp,
)
from detection.hooks import FinalEvalHook, NonFiniteGuard, TrainingState, run_training
from detection.overrides import OverrideError, load_config
from mae_core.checkpoint import CheckpointError

logger = logging.getLogger("detection")


def build_model(cfg):
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    logger.info(f"Model:\n{model}")
    return model


def do_train(args, cfg) -> None:
    model = build_model(cfg)
    if cfg.train.get("mae_checkpoint"):
        init_backbone_from_mae(
            model,
            cfg.train.mae_checkpoint,
            cfg.train.get("allow_pickle", False),
            cfg.train.get("allow_partial_load", False),
        )
    optim = build_optimizer(cfg, model)
    model = wrap_ddp(cfg, model)
    amp = cfg.train.amp.enabled
    if amp and torch.device(cfg.train.device).type != "cuda":
        logger.warning(f"train.amp.enabled needs CUDA; training in float32 on {cfg.train.device}")
        amp = False
    # The data loader comes once the checkpoint says where the sampler resumes (below).
    trainer = (AMPTrainer if amp else SimpleTrainer)(model, None, optim)
    state = TrainingState()
    checkpointer = AtomicCheckpointer(
        model,
        cfg.train.output_dir,
        allow_pickle=cfg.train.get("allow_pickle", False),
        trainer=trainer,
        state=state,
    )
    trainer.register_hooks(
        [
            NonFiniteGuard(model, checkpointer),
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if comm.is_main_process()
            else None,
            FinalEvalHook(
                cfg.train.eval_period,
                lambda: evaluate(
                    cfg,
                    model,
                    min(trainer.iter + 1, cfg.train.max_iter),
                    f"the model at iteration {trainer.iter}",
                ),
            ),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period
            )
            if comm.is_main_process()
            else None,
        ]
    )
    # With --resume and a checkpoint in output_dir, continue from it (model, optimizer, schedule,
    # iteration, sampler seed, random generators); otherwise load train.init_checkpoint (a full
    # detector) if one is given.
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    if state.sampler_seed is None:
        state.sampler_seed = cfg.train.seed if cfg.train.get("seed", -1) >= 0 else comm.shared_random_seed()
    logger.info(f"Training sampler seed {state.sampler_seed}, starting at iteration {start_iter}")
    trainer.reset_data_loader(lambda: build_train_loader(cfg, state.sampler_seed, start_iter))
    run_training(trainer, start_iter, cfg.train.max_iter, checkpointer)


def build_train_loader(cfg, seed: int, start_iter: int):
    loader = cfg.dataloader.train
    if loader._target_ is train_loader:
        loader.update(seed=seed, start_iter=start_iter)
    elif start_iter:
        logger.warning(f"{loader._target_} cannot start at iteration {start_iter}: the data order restarts")
    return instantiate(loader)


def main(args) -> None:
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="detection")
    if args.eval_only:
        model = wrap_ddp(cfg, build_model(cfg))
        checkpointer = AtomicCheckpointer(
            model, cfg.train.output_dir, allow_pickle=cfg.train.get("allow_pickle", False), strict=True
        )
        if not (args.resume and checkpointer.has_checkpoint()) and not cfg.train.init_checkpoint:
            raise CheckpointError("--eval-only needs weights: train.init_checkpoint=PATH (or --resume)")
        checkpoint = checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
        # A checkpoint stores the index of its last iteration; report completed iterations.
        iteration = checkpoint.get("iteration")
        source = checkpointer.get_checkpoint_file() if args.resume else cfg.train.init_checkpoint
        evaluate(cfg, model, None if iteration is None else iteration + 1, source)
    else:
        do_train(args, cfg)


def parse_args(argv=None):
    """Detectron2's standard arguments, with the overrides as an ordinary positional list instead
    of `argparse.REMAINDER`, so that options may follow them (`... train.max_iter=10 --resume`)."""
    parser = default_argument_parser()
    opts = next(action for action in parser._actions if action.dest == "opts")
    opts.nargs = "*"
    return parser.parse_intermixed_args(argv)


def cli(argv=None) -> None:
    args = parse_args(argv)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (CheckpointError, CocoDatasetError, NonFiniteError, OverrideError) as exc:
        sys.exit(f"train_det.py: error: {exc}")


if __name__ == "__main__":
    cli()
