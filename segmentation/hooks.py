"""Stops a segmentation run at the first non-finite number, through mmengine's own hook points.

A diverged run (lr too high, bad data) otherwise goes on: mmengine logs `loss: nan`, saves
checkpoints full of NaN and reports a metric computed from them, exit 0. `NonFiniteGuardHook`
raises `NonFiniteError` instead, naming the iteration in the loggers' numbering:

- `after_train_iter`: the loss and every logged value of the step (and the gradient norm when the
  optim wrapper clips, so it records one), before the logger, the checkpoint hook or validation
  sees the step;
- `before_save_checkpoint`: every tensor about to be saved (weights, optimizer state), so no file
  and no `last_checkpoint` entry is ever written for a non-finite model, even when the update
  after a finite loss is what diverged;
- `before_train`, `before_val`, `before_test`: the model's weights, so no training starts from, and
  no metric comes from, a non-finite model (a loaded checkpoint, a pretrained file)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from mmengine.dist import all_reduce, is_distributed
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS

from mae_core import random_state
from mae_core.checkpoint import NonFiniteError, describe_non_finite

from .data import check_checkpoint_head_widths


class ValidationKeepsRandomStateHook(Hook):
    """Puts the random generators back after each validation during training
    (mae_core.random_state), so a run's final mIoU does not depend on `val_interval`."""

    def before_val(self, runner) -> None:
        self._state = random_state.capture()

    def after_val(self, runner) -> None:
        random_state.restore(self._state)


@HOOKS.register_module()
class NonFiniteGuardHook(Hook):
    """See the module docstring. The configs list it in `custom_hooks`, and
    `segmentation.train.load_mmseg_config` adds it to any config that does not."""

    # after_train_iter runs before LoggerHook (BELOW_NORMAL) and CheckpointHook (VERY_LOW).
    priority = "ABOVE_NORMAL"

    def before_train(self, runner) -> None:
        self._check_model(runner, "training would start from it")

    def before_val(self, runner) -> None:
        self._check_model(runner, "no validation metric is computed from it")

    def before_test(self, runner) -> None:
        self._check_model(runner, "no test metric is computed from it")

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        values = {k: v for k, v in (outputs or {}).items() if isinstance(v, torch.Tensor | float)}
        grad_norm = self._grad_norm(runner)
        if grad_norm is not None:
            values["grad_norm"] = grad_norm
        bad = [k for k, v in values.items() if not _finite(v)]
        if is_distributed():  # every rank stops at the same step, not one rank alone
            flag = torch.tensor([float(bool(bad))])
            all_reduce(flag, op="sum")
            if flag.item() and not bad:
                bad = ["(on another process)"]
        if bad:
            step = runner.iter + 1  # what the logger prints: Iter(train) [step/max_iters]
            shown = ", ".join(f"{k}={float(values[k]):g}" for k in bad if k in values) or bad[0]
            raise NonFiniteError(
                f"non-finite value at training iteration {step} (Iter(train) [{step}/{runner.max_iters}]): "
                f"{shown}. Stopped before logging, validating or saving it; the last checkpoint written "
                f"is {_last_checkpoint(runner)}. "
                "Lower the learning rate (optim_wrapper.optimizer.lr) or check the data."
            )

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        tensors = {k: checkpoint[k] for k in ("state_dict", "optimizer") if k in checkpoint}
        bad = describe_non_finite(tensors)
        if bad:
            step = checkpoint.get("meta", {}).get("iter", runner.iter)
            raise NonFiniteError(
                f"refusing to save the checkpoint of iteration {step}: {bad}. Nothing was written; "
                f"the last checkpoint written is {_last_checkpoint(runner)}. Lower the learning rate "
                "(optim_wrapper.optimizer.lr) or check the data."
            )

    @staticmethod
    def _grad_norm(runner) -> float | None:
        """The norm the optim wrapper recorded this step, if it computes one (gradient clipping).
        Not with a loss scaler: dynamic loss scaling makes inf gradients on purpose and skips
        those steps itself."""
        wrapper = getattr(runner, "optim_wrapper", None)
        if not getattr(wrapper, "clip_grad_kwargs", None) or hasattr(wrapper, "loss_scaler"):
            return None
        buffer = runner.message_hub.log_scalars.get("train/grad_norm")
        return None if buffer is None else buffer.current()

    @staticmethod
    def _check_model(runner, consequence: str) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        bad = describe_non_finite(model.state_dict())
        if bad:
            if runner.iter:
                state = f"at training iteration {runner.iter}"
            else:
                state = f"loaded from {runner.cfg.get('load_from') or 'initialisation (model.pretrained)'}"
            raise NonFiniteError(
                f"the model {state}: {bad}; {consequence}."
            )


def _last_checkpoint(runner) -> str:
    """What the work dir's `last_checkpoint` names: CheckpointHook writes it only after a save
    succeeded (its `last_ckpt` in the message hub is set before the save is tried)."""
    record = Path(runner.work_dir) / "last_checkpoint"
    return record.read_text().strip() if record.is_file() else "none (none was saved yet)"


def _finite(value) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    return math.isfinite(value)


class HeadWidthHook(Hook):
    """Refuses a loaded checkpoint (load_from, --resume, test_seg's checkpoint) whose head
    classifiers are wider or narrower than the model's, before mmengine loads it: it would leave
    those heads at initialisation with a warning only. `dataset` names where the width came from."""

    def __init__(self, dataset: str):
        self.dataset = dataset

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        source = runner.cfg.get("load_from") or "the checkpoint resumed from"
        check_checkpoint_head_widths(checkpoint.get("state_dict", checkpoint), model, source, self.dataset)
