"""The toolkit's ViT backbone + simple feature pyramid as a Detectron2 `Backbone`.

The model code lives in `mae_core`; this module only tells Detectron2 the output names, strides
and channels, and how inputs must be padded (square padding as ViTDet, so the global blocks'
relative-position tables always see the grid they were sized for)."""

from __future__ import annotations

import re

import torch
from detectron2.modeling import Backbone, ShapeSpec
from torch import nn

from mae_core.pyramid import SimpleFeaturePyramid
from mae_core.transfer import FreezableMixin


class PyramidOutputs(Backbone):
    """What Detectron2 asks of a backbone whose outputs are pyramid levels all `out_channels`
    wide: their names, strides and channels, and how inputs must be padded (a multiple of
    `size_divisibility`; square to `square_pad` when it is set). One place for both backbones here."""

    def _set_outputs(self, strides: dict[str, int], out_channels: int, size_divisibility: int,
                     square_pad: int) -> None:
        self._out_features = list(strides)
        self._out_feature_strides = dict(strides)
        self._out_feature_channels = {name: out_channels for name in self._out_features}
        self._size_divisibility = size_divisibility
        self._square_pad = square_pad

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {"size_divisibility": self._size_divisibility, "square_size": self._square_pad}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }


class ViTDetBackbone(FreezableMixin, PyramidOutputs):
    """`net` (e.g. `mae_core.backbone.create_backbone(...)`) returns a list of token maps; the last
    one feeds the pyramid. Its channels and stride are read from `net.embed_dim` and
    `net.patch_size` unless given. Outputs "p2".."p6" (with `top_level`).

    Args:
        net: images (B, C, H, W) -> list of (B, in_channels, H / in_stride, W / in_stride) maps.
        out_channels: width of every pyramid level.
        scale_factors: the pyramid's levels relative to the net's map (see
            `mae_core.pyramid.SimpleFeaturePyramid`).
        top_level: add "p6", a stride-2 subsampling of "p5" (for the RPN's largest anchors).
        square_pad: pad every batch to a square of this side (ViTDet: the image size, so the
            global blocks' relative-position tables see the grid they were sized for); 0: no.
        in_channels: the net's output width; None: `net.embed_dim`.
        in_stride: the net's output stride; None: `net.patch_size`.
        freeze: fix `net` (mae_core.transfer: no gradients, no optimizer group, eval mode); the
            pyramid trains.
    """

    def __init__(
        self,
        net: nn.Module,
        out_channels: int = 256,
        scale_factors: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5),
        top_level: bool = True,
        square_pad: int = 0,
        in_channels: int | None = None,
        in_stride: int | None = None,
        freeze: bool = False,
    ):
        super().__init__()
        self.net = net
        self.pyramid = SimpleFeaturePyramid(
            in_channels or net.embed_dim, in_stride or net.patch_size, out_channels, scale_factors, top_level
        )
        # The coarsest non-extra level: every image side must be a multiple of it.
        divisibility = max(s for name, s in self.pyramid.strides.items() if name in self.pyramid.stages)
        self._set_outputs(self.pyramid.strides, out_channels, divisibility, square_pad)
        self.set_frozen(freeze)

    def frozen_part(self) -> nn.Module:
        return self.net

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, H, W), padded by Detectron2 as `padding_constraints` asks -> {"pK": (B,
        out_channels, H / 2**K, W / 2**K)}."""
        return self.pyramid(self.net(images)[-1])


# Detectron2's ViTDet names the pyramid levels `simfp_<K>` directly under the backbone; ours are
# `pyramid.stages.p<K>`. The ViT keys are the same in both (MAE / timm layout).
_D2_LEVEL = re.compile(r"(^|\.)simfp_(\d+)\.")
_OUR_LEVEL = re.compile(r"(^|\.)pyramid\.stages\.p(\d+)\.")


def from_detectron2_vitdet(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames a Detectron2 ViTDet state dict (`ViT` + `SimpleFeaturePyramid`, e.g. an official
    ViTDet checkpoint's `model`) to this backbone's names."""
    return {_D2_LEVEL.sub(r"\1pyramid.stages.p\2.", k): v for k, v in state_dict.items()}


def to_detectron2_vitdet(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `from_detectron2_vitdet`."""
    return {_OUR_LEVEL.sub(r"\1simfp_\2.", k): v for k, v in state_dict.items()}


__all__ = ["PyramidOutputs", "ViTDetBackbone", "from_detectron2_vitdet", "to_detectron2_vitdet"]
