"""Optimizer parameter groups for Detectron2 configs, from `mae_core.layer_decay`.

Detectron2's schedulers (`LRMultiplier` under `WarmupParamScheduler`) multiply each group's
initial `lr`, so the layer scale is folded into that initial value and survives every step."""

from __future__ import annotations

from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler
from torch import nn

from mae_core.layer_decay import param_groups

# ViTDet's 100-epoch schedule: 184,375 iterations at batch 64, x0.1 at 163,889 and 177,546.
VITDET_DECAY_FRACTIONS = (163889 / 184375, 177546 / 184375)


def layer_decay_params(
    model: nn.Module, base_lr: float, weight_decay: float, layer_decay: float
) -> list[dict]:
    """Groups for `torch.optim.AdamW(params=...)`: lr = base_lr * layer_decay ** (depth + 1 - layer),
    no weight decay on norms, biases, position tables and tokens.

    Args:
        model: the detector; its ViT reports layer ids (`mae_core.layer_decay.param_groups`), the
            rest (pyramid, heads) is the top layer.
        base_lr: the top layer's learning rate.
        weight_decay: for weight matrices.
        layer_decay: ratio between a layer's learning rate and the next one up (ViTDet: 0.7 for
            ViT-B, 0.8 for ViT-L, 0.9 for ViT-H).
    """
    groups = param_groups(model, weight_decay, layer_decay)
    for group in groups:
        group["lr"] = base_lr * group["lr_scale"]
    return groups


def step_lr_schedule(
    max_iter: int,
    warmup_iters: int = 250,
    decay_fractions: tuple[float, ...] = VITDET_DECAY_FRACTIONS,
    warmup_factor: float = 0.001,
) -> WarmupParamScheduler:
    """Linear warmup, then x0.1 at each fraction of `max_iter` (ViTDet's step decay), so that
    changing `train.max_iter` keeps the schedule's shape. Very short runs (tests) keep the
    milestones that still fall strictly inside the run.

    Args:
        max_iter: the run's iterations.
        warmup_iters: iterations of linear warm-up (capped at `max_iter`).
        decay_fractions: where the learning rate drops by 10x, as fractions of `max_iter`.
        warmup_factor: the warm-up's starting multiplier.
    """
    milestones = sorted({round(f * max_iter) for f in decay_fractions} & set(range(1, max_iter)))
    return WarmupParamScheduler(
        MultiStepParamScheduler(
            values=[0.1**i for i in range(len(milestones) + 1)], milestones=milestones, num_updates=max_iter
        ),
        warmup_factor=warmup_factor,
        warmup_length=min(1.0, warmup_iters / max_iter),
    )


__all__ = ["VITDET_DECAY_FRACTIONS", "layer_decay_params", "step_lr_schedule"]
