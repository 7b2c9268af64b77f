"""The configs as `tools/train_seg.py` and `tools/test_seg.py` run them: MMSegmentation's tool flags,
the config loaded, checked, guarded and adapted to this machine, and the errors a user can cause
turned into one line instead of a traceback (an unknown `--cfg-options` key, an unreadable
checkpoint, a bad dataset, a non-finite run); then the training and test runs. The tools only
parse their command lines."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
from pathlib import Path

from mmengine.config import Config, DictAction
from mmengine.dist import all_gather_object, get_world_size, init_dist, is_distributed, is_main_process
from mmengine.logging import print_log
from mmengine.runner import Runner

from mae_core.errors import UserError
from mae_core.run_folder import RunFolderError, run_folder
from mae_core.run_record import RUN_FILE, evaluation_record, write_run_record
from mae_core.transfer import trainable_summary

from .catalogue import fit_heads_to_backbone
from .data import TEST_SETS, TRAINING_SETS, check_head_classes
from .engine import adapt_config_to_device, init_cpu_distributed
from .hooks import HeadWidthHook, ValidationKeepsRandomStateHook
from .overrides import ConfigOverrideError, checked_overrides
from .record import run_record

# What makes a work dir another run's (mae_core.run_folder), and what --overwrite deletes with it:
# checkpoints, and each run's <timestamp>/ folder of logs, scalars and TensorBoard events.
RUN_MARKS = ("iter_*.pth", "epoch_*.pth", "best_*.pth", "last_checkpoint", "*/vis_data/scalars.json",
             RUN_FILE)
RUN_LOGS = ("[0-9]*_[0-9]*",)


def parse_with_launcher_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Adds the flags MMSegmentation's train and test tools share (--cfg-options, --launcher, and
    --local-rank from older launchers), then parses."""
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction, help="override config keys: key=value ..."
    )
    parser.add_argument(
        "--launcher", choices=["none", "pytorch", "slurm"], default="none", help="job launcher"
    )
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def load_mmseg_config(
    path: str,
    launcher: str = "none",
    work_dir: str | None = None,
    cfg_options: dict | None = None,
    amp: bool = False,
):
    """An mmengine Config prepared as MMSegmentation's tools prepare it (options checked and merged,
    AMP if asked, work_dir from the CLI, else the config, else work_dirs/<config name>), with the
    non-finite guard and, for a catalogue backbone, the heads' widths fitted to it; then adapted
    to this machine. A config file that does not exist is refused by name."""
    if not Path(path).is_file():
        raise ConfigOverrideError(f"config file {path} does not exist")
    cfg = Config.fromfile(path)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(checked_overrides(cfg, cfg_options))
    if amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = os.path.join("work_dirs", Path(path).stem)
    add_non_finite_guard(cfg)
    for change in fit_heads_to_backbone(cfg):
        print_log(f"heads fitted to the catalogue backbone: {change}", logger="current")
    adapt_config_to_device(cfg)
    return cfg


def add_non_finite_guard(cfg) -> None:
    """Every config run by the tools gets `NonFiniteGuardHook`, also one that does not list it."""
    hooks = cfg.setdefault("custom_hooks", [])
    if not any(hook.get("type") == "NonFiniteGuardHook" for hook in hooks):
        hooks.append(dict(type="NonFiniteGuardHook"))


class BatchTooSmallError(UserError, ValueError):
    """A per-device batch that the model's BatchNorm cannot train on; names the cause and the fix."""


BATCH_NORMS = ("BN", "BN2d", "SyncBN", "MMSyncBN")
ONE_IMAGE_NORM = "model.decode_head.norm_cfg.type=GN +model.decode_head.norm_cfg.num_groups=8"


def check_batch_for_pooling_norm(cfg, world_size: int) -> None:
    """UperNet's pyramid pooling averages each feature map to 1x1 (pool scale 1) and normalises it;
    BatchNorm in training needs more than one value per channel, so with one image per device (and
    no SyncBN across several devices) PyTorch stops at the first step with "Expected more than 1
    value per channel when training". Refused before training, naming the cause and both fixes."""
    head = cfg.model.get("decode_head") or {}
    norm = (head.get("norm_cfg") or {}).get("type")
    if 1 not in tuple(head.get("pool_scales") or ()) or norm not in BATCH_NORMS:
        return
    per_device = cfg.train_dataloader.batch_size
    synced = world_size if "Sync" in norm else 1
    if per_device * synced >= 2:
        return
    raise BatchTooSmallError(
        f"train_dataloader.batch_size={per_device} on {world_size} device(s) cannot train this model: "
        f"the decode head's pyramid pooling (model.decode_head.pool_scales {tuple(head.pool_scales)} "
        f"includes 1) averages each image's features to 1x1 and normalises them with {norm} "
        "(model.decode_head.norm_cfg), which in training needs more than one value per channel; PyTorch "
        "would stop at the first iteration with 'Expected more than 1 value per channel when training'. "
        "Use train_dataloader.batch_size=2 or more per device (SyncBN on several GPUs counts every "
        f"device's images), or a norm that trains on one image: --cfg-options {ONE_IMAGE_NORM}"
    )


@contextlib.contextmanager
def exit_on_error(tool: str):
    """Runs a tool's body; a `UserError` (mae_core.errors) is logged and ends the process with exit
    status 1 and `<tool>: error: <message>` alone (the traceback of a user's mistake helps no one)."""
    try:
        yield
    except UserError as exc:
        print_log(f"{tool}: {exc}", logger="current", level=logging.ERROR)
        raise SystemExit(f"{tool}: error: {exc}") from None


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags both segmentation tools take beside MMSegmentation's: --overwrite, --allow-pickle."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in the work dir: its checkpoints and <timestamp>/ log folders "
                             "are deleted (a used work dir is refused otherwise)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="trust a pickled backbone checkpoint (model.backbone.allow_pickle=True)")


def start_processes(cfg, launcher: str) -> None:
    """Joins the process group before the Runner would (it skips a group that exists), so that the
    main process can claim the work dir and tell the others before anything is written."""
    init_cpu_distributed(launcher)
    if launcher != "none" and not is_distributed():
        init_dist(launcher, **cfg.get("env_cfg", {}).get("dist_cfg", {}))


def claimed_work_dir(cfg, args: argparse.Namespace, resume: bool = False):
    """The work dir held for this run (mae_core.run_folder: one run per folder; a used one refused
    without --resume or --overwrite)."""
    dumped_config = Path(cfg.filename).name  # the Runner's copy of the config
    return run_folder(cfg.work_dir, marks=RUN_MARKS, removed_with=(*RUN_LOGS, dumped_config), resume=resume,
                      overwrite=args.overwrite, folder_flag="--work-dir", is_main=is_main_process(),
                      share=all_gather_object)


def allow_pickle(cfg) -> None:
    """--allow-pickle: the backbone (MAEViT, or a catalogue backbone's options) trusts a pickled file."""
    backbone = cfg.model.backbone
    if backbone.get("type") == "MMSegCatalogueBackbone":
        backbone.options = {**(backbone.get("options") or {}), "allow_pickle": True}
    else:
        backbone.allow_pickle = True


def prepared_config(args: argparse.Namespace, amp: bool = False):
    cfg = load_mmseg_config(args.config, args.launcher, args.work_dir, args.cfg_options, amp=amp)
    if args.allow_pickle:
        allow_pickle(cfg)
    start_processes(cfg, args.launcher)
    return cfg


def train(args: argparse.Namespace) -> None:
    """`tools/train_seg.py`: the config's training run, resumed from the work dir's latest
    checkpoint with `args.resume`, in a work dir it holds. Heads whose class count is not the
    datasets' and a batch that the decode head's BatchNorm cannot train on are refused first. The
    main process leaves the run record at the end."""
    cfg = prepared_config(args, amp=args.amp)
    cfg.resume = args.resume
    dataset = check_head_classes(cfg, TRAINING_SETS)
    with claimed_work_dir(cfg, args, resume=args.resume):
        runner = Runner.from_cfg(cfg)
        print_log(trainable_summary(runner.model), logger="current")
        check_batch_for_pooling_norm(cfg, get_world_size())
        runner.register_hook(HeadWidthHook(dataset))
        runner.register_hook(ValidationKeepsRandomStateHook())
        runner.train()
        if is_main_process():
            record = run_record(cfg, runner.model, runner.seed, cfg.val_dataloader)
            write_run_record(cfg.work_dir, {**record, "split": "val"})


def evaluate(args: argparse.Namespace) -> dict:
    """`tools/test_seg.py`: the config's test set and metric on `args.checkpoint`, printed as one JSON
    line, in a work dir of its own (default work_dirs/<config name>_test; never the checkpoint's
    folder, which holds its training run). The checkpoint is read by mmengine through
    `engine.load_from_local_file`: a missing or damaged file stops with an error naming it."""
    if args.work_dir is None:
        args.work_dir = os.path.join("work_dirs", f"{Path(args.config).stem}_test")
    if Path(args.work_dir).resolve() == Path(args.checkpoint).resolve().parent:
        raise RunFolderError(f"--work-dir {args.work_dir} is the folder of the checkpoint {args.checkpoint} "
                             "(its training run's): give the test a work dir of its own")
    cfg = prepared_config(args)
    cfg.load_from = args.checkpoint
    if args.show_dir:
        # Every image, not mmseg's default of one in 50.
        cfg.default_hooks.visualization.update(draw=True, interval=1)
        cfg.visualizer.save_dir = args.show_dir
        # The hook stamps images with runner.iter, which builds the train loop and its dataset:
        # point that at the test data, so testing never needs the training images.
        cfg.train_dataloader = cfg.test_dataloader
    if args.output_dir:
        cfg.test_evaluator.output_dir = args.output_dir
    dataset = check_head_classes(cfg, TEST_SETS)
    with claimed_work_dir(cfg, args):
        runner = Runner.from_cfg(cfg)
        runner.register_hook(HeadWidthHook(dataset))
        metrics = runner.test()
        if is_main_process():
            record = run_record(cfg, runner.model, runner.seed, cfg.test_dataloader)
            write_run_record(cfg.work_dir, evaluation_record(record, args.checkpoint))
    print(json.dumps({"metrics": {name: float(value) for name, value in metrics.items()}}))
    return metrics
