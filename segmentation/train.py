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
from mmengine.dist import get_world_size
from mmengine.logging import print_log
from mmengine.runner import Runner

from mae_core.checkpoint import CheckpointError
from mae_core.data import ImageReadError
from mae_core.transfer import trainable_summary

from .data import DatasetError
from .engine import adapt_config_to_device, init_cpu_distributed
from .hooks import NonFiniteError
from .overrides import ConfigOverrideError, checked_overrides


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
    non-finite guard, then adapted to this machine."""
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
    adapt_config_to_device(cfg)
    return cfg


def add_non_finite_guard(cfg) -> None:
    """Every config run by the tools gets `NonFiniteGuardHook`, also one that does not list it."""
    hooks = cfg.setdefault("custom_hooks", [])
    if not any(hook.get("type") == "NonFiniteGuardHook" for hook in hooks):
        hooks.append(dict(type="NonFiniteGuardHook"))


class BatchTooSmallError(ValueError):
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


# What the tools turn into a one-line error instead of a traceback.
TOOL_ERRORS = (BatchTooSmallError, CheckpointError, ConfigOverrideError, DatasetError, ImageReadError,
               NonFiniteError)


@contextlib.contextmanager
def exit_on_error(tool: str):
    """Runs a tool's body; a `TOOL_ERRORS` exception is logged and ends the process with exit
    status 1 and the message alone (the traceback of a user's mistake helps no one)."""
    try:
        yield
    except TOOL_ERRORS as exc:
        print_log(f"{tool}: {exc}", logger="current", level=logging.ERROR)
        raise SystemExit(f"{tool}: error: {exc}") from None


def train(args: argparse.Namespace) -> None:
    """`tools/train_seg.py`: the config's training run, resumed from the work dir's latest
    checkpoint with `args.resume`. A batch that the decode head's BatchNorm cannot train on is
    refused first."""
    cfg = load_mmseg_config(args.config, args.launcher, args.work_dir, args.cfg_options, amp=args.amp)
    init_cpu_distributed(args.launcher)
    cfg.resume = args.resume
    runner = Runner.from_cfg(cfg)  # starts the process group: the world size is known from here
    print_log(trainable_summary(runner.model), logger="current")
    check_batch_for_pooling_norm(cfg, get_world_size())
    runner.train()


def evaluate(args: argparse.Namespace) -> dict:
    """`tools/test_seg.py`: the config's test set and metric on `args.checkpoint`, printed as one JSON
    line. The checkpoint is read by mmengine through `engine.load_from_local_file`: a missing or
    damaged file stops with an error naming it."""
    cfg = load_mmseg_config(args.config, args.launcher, args.work_dir, args.cfg_options)
    init_cpu_distributed(args.launcher)
    cfg.load_from = args.checkpoint
    if args.show_dir:
        # Every image, not mmseg's default of one in 50.
        cfg.default_hooks.visualization.update(draw=True, interval=1)
        cfg.visualizer.save_dir = args.show_dir
        # The hook stamps images with runner.iter, which builds the train loop and its dataset:
        # point that at the test data, so testing never needs the training images.
        cfg.train_dataloader = cfg.test_dataloader
    if args.out:
        cfg.test_evaluator.output_dir = args.out
    metrics = Runner.from_cfg(cfg).test()
    print(json.dumps({"metrics": {name: float(value) for name, value in metrics.items()}}))
    return metrics
