"""Any backbone of `mae_core.catalogue` as a Detectron2 `Backbone`, so a Mask R-CNN config picks
its backbone by name with everything else unchanged:

    model.backbone = L(CatalogueBackbone)(name="resnet50_fpn")
    model.backbone = L(CatalogueBackbone)(name="vit_mae", checkpoint="pretrain.pth",
                                          arch="vit_toy_patch4", img_size=128)

Outputs p2-p6 (strides 4-64, `out_channels` wide), the levels ViTDet's Mask R-CNN heads read."""

from __future__ import annotations

import torch
from detectron2.modeling import Backbone, ShapeSpec
from torch import nn

from mae_core.catalogue import build_pyramid


class CatalogueBackbone(Backbone):
    """`name` and keyword arguments go to `mae_core.catalogue.build_pyramid`. `square_pad` pads
    inputs to a square of that side (needed by ViTs with relative positions in global blocks)."""

    def __init__(self, name: str, checkpoint: str | None = None, out_channels: int = 256, square_pad: int = 0,
                 **kwargs):
        super().__init__()
        self.body = build_pyramid(name, checkpoint, out_channels, **kwargs)
        self.catalogue_name = name
        self._out_features = list(self.body.strides)
        self._out_feature_strides = dict(self.body.strides)
        self._out_feature_channels = {level: out_channels for level in self._out_features}
        self._square_pad = square_pad

    @property
    def net(self) -> nn.Module:
        """The trunk's network (the ViT for vit_* entries): where `train.mae_checkpoint` loads."""
        return self.body.trunk.net

    @property
    def size_divisibility(self) -> int:
        # p6 is a subsampling of p5: inputs must divide by the p5 stride only.
        return self._out_feature_strides["p5"]

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {"size_divisibility": self.size_divisibility, "square_size": self._square_pad}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.body(images)


__all__ = ["CatalogueBackbone"]
