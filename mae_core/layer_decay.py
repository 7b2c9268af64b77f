"""Layer-wise learning-rate decay (BEiT, MAE fine-tuning, ViTDet), for any backbone.

A backbone takes part by reporting `num_layers` and `layer_id(name)` (name relative to the
backbone); nothing here looks at class names. Parameters outside every such backbone (necks,
heads) are the top layer and get the full learning rate."""

from __future__ import annotations

from torch import nn


def find_layered_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Outermost submodules (by prefix) that report layer ids."""
    found: dict[str, nn.Module] = {}
    for prefix, module in model.named_modules():
        if hasattr(module, "layer_id") and hasattr(module, "num_layers"):
            if not any(prefix.startswith(p + ".") or p == "" for p in found):
                found[prefix] = module
    return found


def no_weight_decay(name: str, param: nn.Parameter, skip_names: set[str]) -> bool:
    """Norm weights, biases and other 1-D tensors, and named tokens / position tables."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or name.endswith(".bias") or leaf in skip_names


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float = 1.0,
    skip_names: tuple[str, ...] = ("pos_embed", "cls_token", "mask_token", "decoder_pos_embed",
                                   "rel_pos_h", "rel_pos_w", "absolute_pos_embed"),
) -> list[dict]:
    """Optimizer groups, one per (layer, decay / no decay), each with `lr_scale` to multiply the
    scheduled learning rate by: layer_decay ** (num_layers + 1 - layer_id).

    Args:
        model: any module; its backbones take part through `num_layers` and `layer_id(name)`.
        weight_decay: for weight matrices; norms, biases, 1-D tensors and `skip_names` get none.
        layer_decay: learning-rate ratio between a layer and the one above it; 1.0: no decay.
        skip_names: parameter names (the last part of the dotted name) without weight decay.

    Returns:
        A list of `torch.optim` parameter groups, each with `params`, `param_names`,
        `weight_decay`, `lr_scale` and `layer_id`.
    """
    layered = find_layered_modules(model)
    num_layers = max((m.num_layers for m in layered.values()), default=0)
    skip = set(skip_names)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = num_layers + 1
        for prefix, module in layered.items():
            if prefix == "" or name.startswith(prefix + "."):
                layer = module.layer_id(name[len(prefix) + 1 :] if prefix else name)
                break
        decay = not no_weight_decay(name, param, skip)
        key = (layer, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "param_names": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": layer_decay ** (num_layers + 1 - layer),
                "layer_id": layer,
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]
