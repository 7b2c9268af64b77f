"""Decode heads of the toolkit in MMSegmentation's MODELS registry.

`LinearHead` is DINOv2's linear evaluation on ADE20K: the last feature map, an optional BatchNorm
(no affine parameters of its own beyond BN's), and a 1x1 classifier; its logits are upsampled
bilinearly to the label size by MMSegmentation's loss and prediction (`BaseDecodeHead`). On a
frozen backbone (`model.backbone.freeze=True`) it measures what the features alone tell apart."""

from __future__ import annotations

import torch
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS
from torch import nn


@MODELS.register_module()
class LinearHead(BaseDecodeHead):
    """`in_channels` is the width of the map at `in_index` (default the last); `batch_norm`
    normalises it first, as DINOv2's linear head does. `channels` is `in_channels` (no hidden
    layer); set `dropout_ratio=0.0` for a purely linear map."""

    def __init__(self, in_channels: int, batch_norm: bool = True, **kwargs):
        kwargs.setdefault("channels", in_channels)
        if kwargs["channels"] != in_channels:
            raise ValueError(f"LinearHead: channels={kwargs['channels']} must equal "
                             f"in_channels={in_channels} (the classifier reads the features directly)")
        super().__init__(in_channels, **kwargs)
        self.norm = nn.BatchNorm2d(in_channels) if batch_norm else nn.Identity()

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.cls_seg(self.norm(self._transform_inputs(inputs)))


__all__ = ["LinearHead"]
