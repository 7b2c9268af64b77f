"""Train or evaluate a Detectron2 Mask R-CNN from a LazyConfig in configs/detection/.

Detectron2's standard command line, e.g.
    python tools/train_det.py --config-file configs/detection/mask_rcnn_vit_base_100ep.py \
        --num-gpus 8 train.mae_checkpoint=mae_pretrain_vit_base.pth
    python tools/train_det.py --config-file CFG --eval-only train.init_checkpoint=OUT/model_final.pth
    python tools/train_det.py --config-file CFG --resume      # continue from OUT/last_checkpoint

Trailing `key=value` pairs override the config. Training runs Detectron2's hooks: iteration
timer, lr schedule, periodic checkpoints, periodic COCO evaluation, and metrics printed with an ETA
and written to TensorBoard and `metrics.json` in `train.output_dir`. Box and mask AP are printed
and saved to `train.output_dir/eval_results.json`."""

from __future__ import annotations

import logging

import torch
from detectron2.config import LazyConfig, instantiate
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

from detection.engine import AtomicCheckpointer, build_optimizer, evaluate, init_backbone_from_mae, wrap_ddp

logger = logging.getLogger("detection")


def build_model(cfg):
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    logger.info(f"Model:\n{model}")
    return model


def do_train(args, cfg) -> None:
    model = build_model(cfg)
    if cfg.train.get("mae_checkpoint"):
        init_backbone_from_mae(model, cfg.train.mae_checkpoint, cfg.train.get("allow_pickle", False))
    optim = build_optimizer(cfg, model)
    train_loader = instantiate(cfg.dataloader.train)
    model = wrap_ddp(cfg, model)
    amp = cfg.train.amp.enabled
    if amp and torch.device(cfg.train.device).type != "cuda":
        logger.warning(f"train.amp.enabled needs CUDA; training in float32 on {cfg.train.device}")
        amp = False
    trainer = (AMPTrainer if amp else SimpleTrainer)(model, train_loader, optim)
    checkpointer = AtomicCheckpointer(
        model, cfg.train.output_dir, allow_pickle=cfg.train.get("allow_pickle", False), trainer=trainer
    )
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if comm.is_main_process()
            else None,
            hooks.EvalHook(
                cfg.train.eval_period, lambda: evaluate(cfg, model, min(trainer.iter + 1, cfg.train.max_iter))
            ),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period
            )
            if comm.is_main_process()
            else None,
        ]
    )
    # With --resume and a checkpoint in output_dir, continue from it (model, optimizer, schedule,
    # iteration); otherwise load train.init_checkpoint (a full detector) if one is given.
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def main(args) -> None:
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="detection")
    if args.eval_only:
        model = wrap_ddp(cfg, build_model(cfg))
        checkpointer = AtomicCheckpointer(
            model, cfg.train.output_dir, allow_pickle=cfg.train.get("allow_pickle", False)
        )
        checkpoint = checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
        # A checkpoint stores the index of its last iteration; report completed iterations.
        iteration = checkpoint.get("iteration")
        evaluate(cfg, model, None if iteration is None else iteration + 1)
    else:
        do_train(args, cfg)


def cli(argv=None) -> None:
    args = default_argument_parser().parse_args(argv)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    cli()
