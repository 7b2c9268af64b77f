"""The simple feature pyramid of ViTDet, framework-agnostic.

A plain ViT yields one stride-16 map; detectors want strides 4-32 (64). ViTDet showed that
deconvolutions and a max-pool of that last map are enough, without FPN's lateral top-down path.
Each level is an `nn.Sequential` whose indices match Detectron2's `SimpleFeaturePyramid`
(`stages.p2.4.norm.weight` here is `simfp_2.4.norm.weight` there), so weights map by renaming."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn


def layer_norm_2d(channels: int) -> LayerNorm2d:
    """LayerNorm over the channels of a (B, C, H, W) map, eps 1e-6 as ViTDet."""
    return LayerNorm2d(channels, eps=1e-6)


class ConvNorm(nn.Conv2d):
    """Bias-free convolution followed by a channels-first LayerNorm (the norm replaces the bias)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = layer_norm_2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


def _resize_layers(channels: int, scale: float) -> tuple[list[nn.Module], int]:
    """Layers that bring the stride-s map to stride s / scale, and their output channels."""
    if scale == 4.0:
        return [
            nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2),
            layer_norm_2d(channels // 2),
            nn.GELU(),
            nn.ConvTranspose2d(channels // 2, channels // 4, kernel_size=2, stride=2),
        ], channels // 4
    if scale == 2.0:
        return [nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2)], channels // 2
    if scale == 1.0:
        return [], channels
    if scale == 0.5:
        return [nn.MaxPool2d(kernel_size=2, stride=2)], channels
    raise ValueError(f"pyramid scale factor {scale} is not supported; use 4, 2, 1 or 0.5")


class SimpleFeaturePyramid(nn.Module):
    """(B, C, H, W) map of stride `in_stride` -> {"p2": ..., "p6": ...} maps of `out_channels`.

    Level names follow FPN: "pK" has stride 2**K. `top_level` adds one more level by a stride-2
    subsampling of the coarsest one (Detectron2's LastLevelMaxPool, "p6" for RPN anchors).

    Args:
        in_channels: channels C of the input map (the ViT's width).
        in_stride: the input map's stride in pixels (the patch size).
        out_channels: channels of every output level.
        scale_factors: one level per factor, each the input resized by it (4, 2, 1 or 0.5); the
            strides they give must be powers of two growing by 2 from level to level.
        top_level: add the stride-2 subsampling of the coarsest level.
    """

    def __init__(
        self,
        in_channels: int,
        in_stride: int = 16,
        out_channels: int = 256,
        scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        top_level: bool = True,
    ):
        super().__init__()
        strides = [in_stride / s for s in scale_factors]
        if any(s != int(s) or int(s) & (int(s) - 1) for s in strides):
            raise ValueError(
                f"scale factors {tuple(scale_factors)} on stride {in_stride} do not give power-of-two strides"
            )
        strides = [int(s) for s in strides]
        if any(b != 2 * a for a, b in zip(strides, strides[1:], strict=False)):
            raise ValueError(f"pyramid strides {strides} must grow by 2 from level to level")
        self.stages = nn.ModuleDict()
        for scale, stride in zip(scale_factors, strides, strict=True):
            layers, channels = _resize_layers(in_channels, float(scale))
            layers += [ConvNorm(channels, out_channels, 1), ConvNorm(out_channels, out_channels, 3)]
            self.stages[f"p{int(math.log2(stride))}"] = nn.Sequential(*layers)
        self.strides = {f"p{int(math.log2(s))}": s for s in strides}
        self.coarsest = f"p{int(math.log2(strides[-1]))}"
        self.top_level = f"p{int(math.log2(strides[-1])) + 1}" if top_level else None
        if self.top_level:
            self.strides[self.top_level] = 2 * strides[-1]
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, in_channels, H, W) -> {"pK": (B, out_channels, H * in_stride / 2**K, ...)}, finest
        first (`self.strides` gives each level's stride)."""
        outs = {name: stage(x) for name, stage in self.stages.items()}
        if self.top_level:
            outs[self.top_level] = F.max_pool2d(outs[self.coarsest], kernel_size=1, stride=2)
        return outs


__all__ = ["ConvNorm", "SimpleFeaturePyramid", "layer_norm_2d"]
