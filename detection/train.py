"""The training and evaluation runs of `tools/train_det.py`, assembled from Detectron2's trainer
and hooks and this package's checkpointer, guards and evaluation: what the tool does, importable
(the tool only parses its command line and launches the processes)."""

from __future__ import annotations

import argparse
import logging

import torch
from detectron2.config import instantiate
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
)
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from mae_core.checkpoint import CheckpointError
from mae_core.errors import exit_on_user_error
from mae_core.random_state import keeping_random_state
from mae_core.run_folder import run_folder
from mae_core.run_record import RUN_FILE, evaluation_record, write_run_record
from mae_core.transfer import trainable_summary

from .data import check_categories, train_loader
from .engine import AtomicCheckpointer, build_optimizer, evaluate, init_backbone_from_mae, wrap_ddp
from .hooks import FinalEvalHook, NonFiniteGuard, TrainingState, run_training
from .overrides import load_lazy_config, trust_pickles
from .record import run_record

logger = logging.getLogger("detection")

# What makes train.output_dir another run's (mae_core.run_folder), and what --overwrite deletes with it.
RUN_MARKS = ("model_*.pth", "last_checkpoint", "metrics.json", "eval_results*.json", "events.out.tfevents.*",
             RUN_FILE)
RUN_LOGS = ("log.txt*", "config.yaml", "coco_instances_results.json", "instances_predictions.pth",
            "inference")


def run(args: argparse.Namespace) -> None:
    """What each process that `tools/train_det.py` launches runs: the config loaded, the output
    folder claimed (one run per folder, refused when used unless --resume or --overwrite), then
    training or evaluation; the main process leaves the run record (mae_core.run_record)."""
    cfg = load_lazy_config(args.config_file, args.opts)
    if args.allow_pickle:
        trust_pickles(cfg)
    with run_folder(cfg.train.output_dir, marks=RUN_MARKS, removed_with=RUN_LOGS, resume=args.resume,
                    overwrite=args.overwrite, folder_flag="train.output_dir=DIR",
                    is_main=comm.is_main_process(), share=comm.all_gather):
        default_setup(cfg, args)
        setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="detection")
        if args.eval_only:
            model, weights = evaluate_checkpoint(cfg, args.resume)
            record = evaluation_record(run_record(cfg, model), weights)
        else:
            record = {**run_record(cfg, train(cfg, args.resume)), "split": "val"}
        if comm.is_main_process():
            write_run_record(cfg.train.output_dir, record)


def run_reporting_user_errors(args: argparse.Namespace) -> None:
    """`run` as each process that `launch` spawns (--num-gpus > 1) runs it: a UserError ends the
    process with train_det.py's one-line message and exit status 1, as in a single process, rather
    than as a traceback the launcher forwards."""
    with exit_on_user_error("train_det.py"):
        run(args)


def build_model(cfg):
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    logger.info(f"Model:\n{model}")
    logger.info(trainable_summary(model))
    return model


def train(cfg, resume: bool):
    """Trains `cfg`'s model (from `train.mae_checkpoint` or `train.init_checkpoint`, or, with
    `resume` and a checkpoint in `train.output_dir`, from there: weights, optimizer, schedule,
    iteration, sampler seed, random generators). The data's categories are checked against each
    other and the model first, and every checkpoint it starts from must hold finite weights.
    Returns the trained model."""
    check_categories(cfg, training=True)
    model = build_model(cfg)
    if cfg.train.get("mae_checkpoint"):
        init_backbone_from_mae(
            model,
            cfg.train.mae_checkpoint,
            cfg.train.get("allow_pickle", False),
            cfg.train.get("allow_partial_load", False),
        )
    optim = build_optimizer(model, cfg)
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
    trainer.register_hooks(training_hooks(cfg, model, trainer, checkpointer))
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    if state.sampler_seed is None:
        state.sampler_seed = cfg.train.seed if cfg.train.get("seed", -1) >= 0 else comm.shared_random_seed()
    logger.info(f"Training sampler seed {state.sampler_seed}, starting at iteration {start_iter}")
    trainer.reset_data_loader(lambda: build_train_loader(cfg, state.sampler_seed, start_iter))
    run_training(trainer, start_iter, cfg.train.max_iter, checkpointer)
    return model


def training_hooks(cfg, model, trainer, checkpointer) -> list:
    """Detectron2's hooks (timer, lr schedule, periodic checkpoints and metrics on the main
    process) with the non-finite guard first and evaluation that also runs after the last step."""
    main = comm.is_main_process()
    return [
        NonFiniteGuard(model, checkpointer),
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
        FinalEvalHook(
            cfg.train.eval_period,
            lambda: keeping_random_state(
                evaluate, cfg, model, min(trainer.iter + 1, cfg.train.max_iter),
                f"the model at iteration {trainer.iter}",
            ),
        ),
        hooks.PeriodicWriter(
            default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period
        )
        if main
        else None,
    ]


def build_train_loader(cfg, seed: int, start_iter: int):
    """The training loader, its sampler seeded and positioned at `start_iter` (the toolkit's
    `detection.data.train_loader`; another loader restarts its data order, with a warning)."""
    loader = cfg.dataloader.train
    if loader._target_ is train_loader:
        loader.update(seed=seed, start_iter=start_iter)
    elif start_iter:
        logger.warning(f"{loader._target_} cannot start at iteration {start_iter}: the data order restarts")
    return instantiate(loader)


def evaluate_checkpoint(cfg, resume: bool):
    """COCO evaluation of `train.init_checkpoint` (or, with `resume`, of the last checkpoint in
    `train.output_dir`), which must hold every weight of the model, finite, with as many classes as
    the test set has categories. Returns the model and the checkpoint evaluated."""
    check_categories(cfg, training=False)
    model = wrap_ddp(cfg, build_model(cfg))
    checkpointer = AtomicCheckpointer(
        model, cfg.train.output_dir, allow_pickle=cfg.train.get("allow_pickle", False), strict=True
    )
    if not (resume and checkpointer.has_checkpoint()) and not cfg.train.init_checkpoint:
        raise CheckpointError("--eval-only needs weights: train.init_checkpoint=PATH (or --resume)")
    checkpoint = checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # A checkpoint stores the index of its last iteration; report completed iterations.
    iteration = checkpoint.get("iteration")
    source = checkpointer.get_checkpoint_file() if resume and checkpointer.has_checkpoint() \
        else cfg.train.init_checkpoint
    evaluate(cfg, model, None if iteration is None else iteration + 1, source)
    return model, source


def parse_args(argv=None, description: str | None = None) -> argparse.Namespace:
    """Detectron2's standard arguments (--num-gpus, --num-machines, --machine-rank, --dist-url,
    --resume, --eval-only) with the toolkit's help (`description`: the tool's usage and examples,
    instead of Detectron2's yacs examples, which the key check refuses), --overwrite and
    --allow-pickle; the overrides are an ordinary positional list instead of `argparse.REMAINDER`,
    so that options may follow them (`... train.max_iter=10 --resume`)."""
    parser = default_argument_parser(epilog=" ")
    parser.description = description
    actions = {action.dest: action for action in parser._actions}
    actions["opts"].nargs = "*"
    actions["opts"].metavar = "key=value"
    actions["opts"].help = ("LazyConfig overrides of existing keys, e.g. train.mae_checkpoint=PATH "
                            "train.output_dir=DIR (`+key=value` adds a key)")
    actions["resume"].help = ("continue the run in train.output_dir from its last checkpoint (a fresh run "
                              "when it has none); with --eval-only, evaluate that checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in train.output_dir: its checkpoints, metrics and logs are "
                             "deleted (a used folder is refused otherwise)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="trust pickled checkpoints (train.allow_pickle=True, and a catalogue "
                             "backbone's checkpoint), e.g. an official MAE file or a model-zoo .pkl")
    return parser.parse_intermixed_args(argv)


__all__ = [
    "build_model", "build_train_loader", "evaluate_checkpoint", "parse_args", "run", "train",
    "training_hooks",
]
