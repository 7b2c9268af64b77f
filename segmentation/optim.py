"""Layer-wise learning-rate decay as an mmengine optimizer-wrapper constructor.

MMSegmentation's own constructors choose the rule by class-name substrings (BEiT, MAE, ConvNeXt)
and raise for anything else; this one asks `mae_core.layer_decay.param_groups`, which works for
every backbone that reports `num_layers` and `layer_id(name)`."""

from __future__ import annotations

from mmengine.model import is_model_wrapper
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS
from torch import nn

from mae_core.layer_decay import find_layered_modules, param_groups


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """`paramwise_cfg=dict(layer_decay_rate=0.65)`: the group of layer l gets
    lr * rate ** (num_layers + 1 - l); norms, biases, position tables and tokens get no weight
    decay. Necks and heads are the top layer (full lr).

    mmengine builds it from the config's `optim_wrapper`, with `DefaultOptimWrapperConstructor`'s
    arguments:

    Args:
        optim_wrapper_cfg: the wrapper and its `optimizer` (whose `lr` is the top layer's and
            `weight_decay` the matrices').
        paramwise_cfg: only `layer_decay_rate` (default 1.0: no decay); any other key is refused.

    Calling it with the model returns the built optim wrapper.
    """

    KNOWN_KEYS = {"layer_decay_rate"}

    def __call__(self, model: nn.Module):
        if is_model_wrapper(model):
            model = model.module
        unknown = set(self.paramwise_cfg) - self.KNOWN_KEYS
        if unknown:
            raise KeyError(
                f"{type(self).__name__}: unknown paramwise_cfg keys {sorted(unknown)}; "
                f"known: {sorted(self.KNOWN_KEYS)}"
            )
        rate = self.paramwise_cfg.get("layer_decay_rate", 1.0)
        if rate != 1.0 and not find_layered_modules(model):
            raise ValueError(
                f"layer_decay_rate={rate} but no module of {type(model).__name__} reports "
                "`num_layers` and `layer_id(name)`"
            )
        optimizer_cfg = self.optimizer_cfg.copy()
        base_lr = optimizer_cfg["lr"]
        groups = param_groups(model, optimizer_cfg.get("weight_decay", 0.0), rate)
        for group in groups:
            group["lr"] = base_lr * group["lr_scale"]
        optimizer_cfg["params"] = groups
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        wrapper_cfg = self.optim_wrapper_cfg.copy()
        wrapper_cfg.setdefault("type", "OptimWrapper")
        return OPTIM_WRAPPERS.build(wrapper_cfg, default_args=dict(optimizer=optimizer))
