"""Any backbone of `mae_core.catalogue` as a Detectron2 `Backbone`, so a Mask R-CNN config picks
its backbone by name with everything else unchanged:

    model.backbone = L(DetectronCatalogueBackbone)(name="resnet50_fpn")
    model.backbone = L(DetectronCatalogueBackbone)(name="vit_mae", checkpoint="pretrain.pth",
                                                   options=dict(arch="vit_toy_patch4", img_size=128))

Outputs p2-p6 (strides 4-64, `out_channels` wide), the levels ViTDet's Mask R-CNN heads read; the
heads' input widths follow `out_channels` as the tools load a config (`fit_heads_to_backbone`).
(segmentation.catalogue.MMSegCatalogueBackbone is its MMSegmentation twin: p2-p5 as a tuple.)"""

from __future__ import annotations

import inspect

import torch
from omegaconf import OmegaConf
from torch import nn

from detection.backbone import PyramidOutputs
from mae_core.catalogue import build_pyramid
from mae_core.transfer import FreezableMixin


class DetectronCatalogueBackbone(FreezableMixin, PyramidOutputs):
    """`name`, `checkpoint`, `out_channels` and the entry's options go to
    `mae_core.catalogue.build_pyramid`. The options come as one dict, so that a config override
    can drop them all when it swaps a ViT for another kind (`model.backbone.options=null`).

    Args:
        name: a `mae_core.catalogue` backbone name ("vit_mae", "resnet50_fpn", "timm:<model>"...).
        checkpoint: its weights (required by `vit_mae` and `vit_supervised`).
        out_channels: width of every level p2-p6.
        square_pad: pad inputs to a square of this side (needed by ViTs with relative positions
            in global blocks); 0: no.
        options: the entry's own arguments (`mae_core.catalogue.build_trunk`), e.g.
            `dict(arch="vit_base_patch16", img_size=1024, window_size=14, global_blocks=(2, 5, 8, 11))`.
        freeze: fix the trunk (mae_core.transfer); the pyramid and heads train.
    """

    def __init__(self, name: str, checkpoint: str | None = None, out_channels: int = 256, square_pad: int = 0,
                 options: dict | None = None, freeze: bool = False):
        super().__init__()
        self.body = build_pyramid(name, checkpoint, out_channels, **(options or {}))
        # p6 is a subsampling of p5: inputs must divide by the p5 stride only.
        self._set_outputs(self.body.strides, out_channels, self.body.strides["p5"], square_pad)
        self.set_frozen(freeze)

    def frozen_part(self) -> nn.Module:
        return self.body.trunk

    @property
    def net(self) -> nn.Module:
        """The trunk's network (the ViT for vit_* entries): where `train.mae_checkpoint` loads."""
        return self.body.trunk.net

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, H, W) -> {"p2": (B, out_channels, H/4, W/4), ..., "p6": (..., H/64, W/64)}."""
        return self.body(images)


# The Mask R-CNN inputs that read the pyramid, each as wide as its levels (ViTDet's configs: 256).
HEAD_WIDTH_KEYS = (
    "proposal_generator.head.in_channels",
    "roi_heads.box_head.input_shape.channels",
    "roi_heads.mask_head.input_shape.channels",
)


def fit_heads_to_backbone(cfg) -> list[str]:
    """With `DetectronCatalogueBackbone`, sets the RPN head's and the box and mask heads' input
    widths to its `out_channels`: Detectron2's LazyConfigs state them instead of reading the
    backbone's `output_shape()`, so a catalogue backbone of another width would otherwise fail to
    build. Returns what changed, `key: old -> new`, for the log; other backbones are left alone."""
    backbone = cfg.model.get("backbone") or {}
    target = backbone.get("_target_")
    cls = DetectronCatalogueBackbone
    if target is not cls and target != f"{cls.__module__}.{cls.__qualname__}":
        return []
    width = backbone.get("out_channels", inspect.signature(cls).parameters["out_channels"].default)
    changed = []
    for key in HEAD_WIDTH_KEYS:
        old = OmegaConf.select(cfg.model, key)
        if old is not None and old != width:
            OmegaConf.update(cfg.model, key, width)
            changed.append(f"model.{key}: {old} -> {width}")
    return changed


__all__ = ["DetectronCatalogueBackbone", "HEAD_WIDTH_KEYS", "fit_heads_to_backbone"]
