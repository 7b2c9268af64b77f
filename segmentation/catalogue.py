"""Any backbone of `mae_core.catalogue` in MMSegmentation's MODELS registry, so an UperNet config
picks its backbone by name with the head unchanged:

    custom_imports = dict(imports=["segmentation", "segmentation.catalogue"])
    model = dict(backbone=dict(_delete_=True, type="MMSegCatalogueBackbone", name="resnet50_fpn"),
                 neck=None)

Returns the pyramid levels p2-p5 (strides 4-32, `out_channels` wide) as a tuple, the four inputs
UPerHead expects; the pyramid is part of the backbone, so the config has no neck. The heads'
`in_channels` follow the backbone (`fit_heads_to_backbone`, applied as the tools load a config), so
a ViT config's 768-wide heads need no edit.
(detection.catalogue.DetectronCatalogueBackbone is its Detectron2 twin: p2-p6 as a dict.)"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import nn

from mae_core.catalogue import build_pyramid, build_trunk
from mae_core.errors import UserError
from mae_core.transfer import FreezableMixin

from .data import model_heads

LEVELS = ("p2", "p3", "p4", "p5")
DEFAULT_OUT_CHANNELS = 256


@MODELS.register_module()
class MMSegCatalogueBackbone(FreezableMixin, nn.Module):
    """`name`, `checkpoint`, `out_channels` and the entry's options go to
    `mae_core.catalogue.build_pyramid`; weights load when it is built. The options come as one
    dict, so `--cfg-options model.backbone.options=None` drops them all when a ViT is swapped for
    another kind. A plain nn.Module, so the Runner's `init_weights` leaves the weights alone.

    Args:
        name: a `mae_core.catalogue` backbone name ("vit_mae", "resnet50_fpn", "timm:<model>"...).
        checkpoint: its weights (required by `vit_mae` and `vit_supervised`).
        out_channels: width of every level p2-p5 (the decode head's `in_channels`).
        options: the entry's own arguments (`mae_core.catalogue.build_trunk`), e.g.
            `dict(arch="vit_base_patch16", img_size=512)`.
        freeze: fix the trunk (mae_core.transfer); the pyramid on it still trains.
        features: "pyramid", or "trunk" for the trunk's own maps (no pyramid is built), for a head
            on the raw features such as `LinearHead`'s DINOv2-style linear evaluation.
    """

    def __init__(self, name: str, checkpoint: str | None = None, out_channels: int = DEFAULT_OUT_CHANNELS,
                 options: dict | None = None, freeze: bool = False, features: str = "pyramid"):
        super().__init__()
        if features not in ("pyramid", "trunk"):
            raise UserError(f"model.backbone.features={features!r}: must be 'pyramid' or 'trunk'")
        self.features = features
        if features == "trunk":
            self.trunk = build_trunk(name, checkpoint, **(options or {}))
            self.strides = tuple(self.trunk.strides)
        else:
            self.body = build_pyramid(name, checkpoint, out_channels, **(options or {}))
            self.strides = tuple(self.body.strides[level] for level in LEVELS)
        self.out_channels = out_channels
        self.set_frozen(freeze)

    def frozen_part(self) -> nn.Module:
        return self.trunk if self.features == "trunk" else self.body.trunk

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, C, H, W) -> (p2, p3, p4, p5), each (B, out_channels, ceil(H/s), ceil(W/s)) for its
        stride s. Any input size: pads the bottom and right to a multiple of the coarsest stride
        (sliding-window crops at borders need not be multiples), then crops every level back to
        the cells that cover the input, so the head's logits stay aligned with the image."""
        h, w = images.shape[-2:]
        divisor = self.strides[-1]
        images = F.pad(images, (0, (-w) % divisor, 0, (-h) % divisor))
        if self.features == "trunk":
            maps = self.trunk(images)
        else:
            levels = self.body(images)
            maps = [levels[level] for level in LEVELS]
        cells = [(-(-h // s), -(-w // s)) for s in self.strides]
        return tuple(m[..., :ch, :cw] for m, (ch, cw) in zip(maps, cells, strict=True))


def fit_heads_to_backbone(cfg) -> list[str]:
    """With `MMSegCatalogueBackbone`, every head reads pyramid levels `out_channels` wide: sets the
    decode and auxiliary heads' `in_channels` to that width (a list per level for a head that reads
    several), so that swapping a config's ViT for a catalogue backbone keeps the recipe's heads and
    needs no width edit. Returns what changed, `key: old -> new`, for the log; other backbones
    are left alone."""
    backbone = cfg.model.get("backbone") or {}
    if backbone.get("type") != "MMSegCatalogueBackbone" or backbone.get("features", "pyramid") != "pyramid":
        return []  # not a catalogue pyramid (a trunk's own maps keep the widths the config states)
    width = backbone.get("out_channels", DEFAULT_OUT_CHANNELS)
    changed = []
    for key, head in model_heads(cfg.model):
        levels = head.get("in_index", 0)
        fitted = [width] * len(levels) if isinstance(levels, (list, tuple)) else width
        if head.get("in_channels") != fitted:
            changed.append(f"{key}.in_channels: {head.get('in_channels')} -> {fitted}")
            head.in_channels = fitted
    return changed


__all__ = ["DEFAULT_OUT_CHANNELS", "MMSegCatalogueBackbone", "fit_heads_to_backbone"]
