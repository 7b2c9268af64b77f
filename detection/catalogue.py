"""Any backbone of `mae_core.catalogue` as a Detectron2 `Backbone`, so a Mask R-CNN config picks
its backbone by name with everything else unchanged:

    model.backbone = L(DetectronCatalogueBackbone)(name="resnet50_fpn")
    model.backbone = L(DetectronCatalogueBackbone)(name="vit_mae", checkpoint="pretrain.pth",
                                                   options=dict(arch="vit_toy_patch4", img_size=128))

Outputs p2-p6 (strides 4-64, `out_channels` wide), the levels ViTDet's Mask R-CNN heads read.
(segmentation.catalogue.MMSegCatalogueBackbone is its MMSegmentation twin: p2-p5 as a tuple.)"""

from __future__ import annotations

import torch
from torch import nn

from detection.backbone import PyramidOutputs
from mae_core.catalogue import build_pyramid
from mae_core.transfer import FreezableMixin


class DetectronCatalogueBackbone(FreezableMixin, PyramidOutputs):
    """`name`, `checkpoint`, `out_channels` and the entry's options go to
    `mae_core.catalogue.build_pyramid`. The options come as one dict, so that a config override
    can drop them all when it swaps a ViT for another kind (`model.backbone.options=null`).
    `square_pad` pads inputs to a square of that side (needed by ViTs with relative positions in
    global blocks). `freeze=True` fixes the trunk (mae_core.transfer); the pyramid and heads train."""

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
        return self.body(images)


__all__ = ["DetectronCatalogueBackbone"]
