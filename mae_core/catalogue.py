"""Backbones to compare, by name, for detection and segmentation with one recipe.

Every entry builds a trunk (image -> list of feature maps, finest first) and a neck that turns it
into the same pyramid: {"p2": stride 4, ..., "p6": stride 64}, all `out_channels` wide. Plain ViTs
get ViTDet's simple feature pyramid from their single map, multi-scale trunks (ResNet, timm) a
torchvision FPN. Detectron2 and MMSegmentation wrap `PyramidBackbone` in detection/catalogue.py and
segmentation/catalogue.py; nothing here imports either framework.

Names:
    vit_mae          the toolkit's ViT loaded from an MAE checkpoint (any layout load_pretrained reads)
    vit_random       the same ViT, randomly initialised
    vit_supervised   the same ViT pretrained with labels (tools/eval_cls.py --mode finetune
                     --save-backbone writes one, as `tools/demo.py --also vit_supervised` does on the
                     demo data; a timm ViT checkpoint works too)
    resnet50_fpn     torchvision ResNet-50 + FPN (checkpoint: a torchvision state dict, optional)
    convnext_atto    timm ConvNeXt-Atto through `features_only` (checkpoint optional)
    timm:<name>      any timm model with `features_only` support: adding one is a config change
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import create_backbone
from .checkpoint import (
    CheckpointError,
    NonFiniteError,
    describe_non_finite,
    extract_state_dict,
    load_checkpoint_file,
    load_pretrained,
)
from .errors import UserError
from .pyramid import SimpleFeaturePyramid

PYRAMID_STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


class CatalogueError(UserError, ValueError):
    """An unknown backbone name or unusable arguments; the message lists what is known."""


@dataclass(frozen=True)
class Entry:
    """A catalogue backbone: which trunk builder makes it, a one-line description for reports,
    whether it needs weights, and the timm model name of a timm entry."""

    kind: str                      # "vit", "resnet" or "timm"
    description: str
    needs_checkpoint: bool = False
    timm_name: str = ""


CATALOGUE: dict[str, Entry] = {
    "vit_mae": Entry("vit", "ViT pretrained by MAE", needs_checkpoint=True),
    "vit_random": Entry("vit", "ViT, random initialisation"),
    "vit_supervised": Entry("vit", "ViT pretrained with labels", needs_checkpoint=True),
    "resnet50_fpn": Entry("resnet", "ResNet-50 + FPN (torchvision)"),
    "convnext_atto": Entry("timm", "ConvNeXt-Atto + FPN (timm)", timm_name="convnext_atto"),
}


def get_entry(name: str) -> Entry:
    """The entry `name` of `CATALOGUE`, or a timm entry for "timm:<model>"; CatalogueError listing
    the known names otherwise."""
    if name.startswith("timm:"):
        return Entry("timm", f"{name[5:]} + FPN (timm)", timm_name=name[5:])
    if name not in CATALOGUE:
        known = ", ".join(CATALOGUE)
        raise CatalogueError(f"unknown backbone {name!r}; known: {known}, or timm:<model name>")
    return CATALOGUE[name]


# --- Trunks: image -> list of maps, with `out_channels` and `strides` lists --------------------------------


class ViTTrunk(nn.Module):
    """The toolkit's ViT backbone (`mae_core.backbone.ViTBackbone`) as a one-map trunk. Keeping it
    as the `net` attribute lets layer-wise lr decay find its layer ids."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.out_channels = [net.embed_dim]
        self.strides = [net.patch_size]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> [(B, embed_dim, H/p, W/p)]: the last output map only."""
        return self.net(images)[-1:]


class ResNetTrunk(nn.Module):
    """torchvision ResNet-50 stages 1-4 (strides 4-32). From scratch it uses GroupNorm, which
    trains at detection batch sizes; from a checkpoint, frozen BatchNorm as in Detectron2."""

    def __init__(self, norm: str = "gn"):
        super().__init__()
        from torchvision.models import resnet50
        from torchvision.ops.misc import FrozenBatchNorm2d

        norms: dict[str, Callable[[int], nn.Module]] = {
            "gn": lambda c: nn.GroupNorm(32, c), "frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d,
        }
        if norm not in norms:
            raise CatalogueError(f"ResNet norm must be one of {list(norms)}, got {norm!r}")
        net = resnet50(weights=None, norm_layer=norms[norm])
        del net.fc, net.avgpool
        self.net = net
        self.out_channels = [256, 512, 1024, 2048]
        self.strides = [4, 8, 16, 32]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(images))))
        outs = []
        for stage in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = stage(x)
            outs.append(x)
        return outs


class TimmTrunk(nn.Module):
    """A timm model built with `features_only`; its stride-4..32 levels, channels first."""

    def __init__(self, model_name: str, checkpoint: str | None = None, in_chans: int = 3, **kwargs):
        super().__init__()
        import timm
        from timm.layers import Format

        try:
            self.net = timm.create_model(
                model_name, features_only=True, in_chans=in_chans, pretrained=bool(checkpoint),
                pretrained_cfg_overlay={"file": str(checkpoint)} if checkpoint else None, **kwargs,
            )
        except RuntimeError as exc:  # timm's "Unknown model" and missing features_only support
            raise CatalogueError(f"timm cannot build {model_name!r} with features_only: {exc}") from exc
        bad = describe_non_finite(self.net.state_dict()) if checkpoint else None
        if bad:
            raise NonFiniteError(f"not loading {checkpoint}: {bad}")
        reductions = self.net.feature_info.reduction()
        self.levels = [i for i, r in enumerate(reductions) if r in (4, 8, 16, 32)]
        if not self.levels:
            raise CatalogueError(f"timm model {model_name!r} has no feature level of stride 4-32 "
                                 f"(its strides: {reductions})")
        self.strides = [reductions[i] for i in self.levels]
        self.out_channels = [self.net.feature_info.channels()[i] for i in self.levels]
        self.channels_last = Format(getattr(self.net, "output_fmt", Format.NCHW)) is Format.NHWC

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats = self.net(images)
        feats = [feats[i] for i in self.levels]
        return [f.permute(0, 3, 1, 2).contiguous() for f in feats] if self.channels_last else feats


# --- Necks: list of maps -> {"pK": map} -------------------------------------------------------------


class SimplePyramidNeck(nn.Module):
    """ViTDet's simple feature pyramid on the trunk's single map, for the strides 4-32 it can reach
    by (de)convolution from the patch stride; `PyramidBackbone` pools the coarser rest."""

    def __init__(self, in_channels: int, in_stride: int, out_channels: int):
        super().__init__()
        scales = [in_stride / s for s in (4, 8, 16, 32) if in_stride / s in (4.0, 2.0, 1.0, 0.5)]
        if not scales or in_stride / 4 not in scales:
            raise CatalogueError(f"a ViT with patch size {in_stride} cannot give a stride-4 level; "
                                 "use a patch size of 16 or less")
        self.pyramid = SimpleFeaturePyramid(in_channels, in_stride, out_channels, scales, top_level=False)

    def forward(self, maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.pyramid(maps[-1])


class FPNNeck(nn.Module):
    """torchvision's FPN (lateral 1x1 + top-down + 3x3) over the trunk's levels."""

    def __init__(self, in_channels: list[int], strides: list[int], out_channels: int):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        self.fpn = FeaturePyramidNetwork(in_channels, out_channels)
        self.names = [f"p{int(math.log2(s))}" for s in strides]

    def forward(self, maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        outs = self.fpn(OrderedDict(zip(self.names, maps, strict=True)))
        return dict(outs)


class PyramidBackbone(nn.Module):
    """trunk -> neck -> {"p2": ..., "p6": ...}; levels the neck does not give are stride-2
    subsamplings of the previous one (Detectron2's LastLevelMaxPool). `strides` maps level names
    to strides; `out_channels` is the width of every level.

    Args:
        trunk: images -> list of feature maps, finest first, with `out_channels` and `strides`.
        neck: that list -> {"pK": map}, from stride 4 (p2) up.
        out_channels: the neck's width, the same for every level.
    """

    def __init__(self, trunk: nn.Module, neck: nn.Module, out_channels: int):
        super().__init__()
        self.trunk, self.neck = trunk, neck
        self.out_channels = out_channels
        self.strides = dict(PYRAMID_STRIDES)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, H, W) -> {"pK": (B, out_channels, H / 2**K, W / 2**K)} for K = 2..6 (sizes exact
        for sides that are multiples of 64)."""
        feats = self.neck(self.trunk(images))
        out = {}
        for name in PYRAMID_STRIDES:
            if name in feats:
                out[name] = feats[name]
            elif out:
                out[name] = F.max_pool2d(out[next(reversed(out))], kernel_size=1, stride=2)
            else:
                raise RuntimeError(f"the neck gave no stride-4 level (got {sorted(feats)})")
        return out


# --- Builders ---------------------------------------------------------------------------------------------


def build_trunk(
    name: str,
    checkpoint: str | None = None,
    *,
    arch: str = "vit_base_patch16",
    img_size: int | tuple[int, int] | None = None,
    pretrain_img_size: int | tuple[int, int] | None = None,
    in_chans: int = 3,
    allow_pickle: bool = False,
    **kwargs,
) -> nn.Module:
    """The trunk of catalogue entry `name`: images -> list of feature maps, finest first.

    Args:
        name: a catalogue name (`CATALOGUE`) or "timm:<model>".
        checkpoint: weights to load (required by `vit_mae` and `vit_supervised`; refused by
            `vit_random`): for a ViT any layout `load_pretrained` reads, the whole encoder or an
            error; for ResNet a torchvision state dict; for timm a file timm reads.
        arch: ViT entries: a size of `mae_core.vit.VIT_ARCHS`.
        img_size: ViT entries: the typical input size (default 224); timm entries: passed to
            timm only when given (Swin needs it, ConvNeXt refuses it).
        pretrain_img_size: ViT entries: the grid of the checkpoint's position table (default
            `img_size`).
        in_chans: image channels.
        allow_pickle: trust a pickled checkpoint file.
        **kwargs: ViT entries: any `create_backbone` keyword (windows, relative positions...);
            ResNet: `norm` ("gn", "frozen_bn", "bn"); timm: `timm.create_model` keywords.
    """
    entry = get_entry(name)
    if entry.needs_checkpoint and not checkpoint:
        raise CatalogueError(f"backbone {name!r} ({entry.description}) needs checkpoint=PATH")
    if entry.kind == "vit":
        if name == "vit_random" and checkpoint:
            raise CatalogueError("vit_random is the randomly initialised ViT; use vit_mae or vit_supervised "
                                 "to load a checkpoint")
        img_size = img_size or 224
        net = create_backbone(arch, img_size=img_size, pretrain_img_size=pretrain_img_size or img_size,
                              in_chans=in_chans, **kwargs)
        if checkpoint:
            load_pretrained(net, checkpoint, allow_pickle=allow_pickle).raise_if_encoder_missing()
        return ViTTrunk(net)
    if entry.kind == "resnet":
        trunk = ResNetTrunk(kwargs.pop("norm", "frozen_bn" if checkpoint else "gn"))
        if kwargs:
            raise CatalogueError(f"{name} takes no options {sorted(kwargs)}")
        if checkpoint:
            load_resnet(trunk.net, checkpoint, allow_pickle)
        return trunk
    if img_size is not None:
        kwargs["img_size"] = img_size
    return TimmTrunk(entry.timm_name, checkpoint, in_chans=in_chans, **kwargs)


def load_resnet(net: nn.Module, checkpoint: str, allow_pickle: bool = False) -> None:
    """A torchvision ResNet-50 state dict (the classifier head is not used)."""
    sd = extract_state_dict(load_checkpoint_file(checkpoint, allow_pickle), str(checkpoint))
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    bad = describe_non_finite(sd)
    if bad:
        raise NonFiniteError(f"not loading {checkpoint}: {bad}")
    try:
        result = net.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{checkpoint}: not a torchvision ResNet-50 state dict: {exc}") from exc
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{checkpoint}: not a torchvision ResNet-50 state dict; missing {missing[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}")


def build_pyramid(name: str, checkpoint: str | None = None, out_channels: int = 256,
                  **kwargs) -> PyramidBackbone:
    """`build_pyramid("vit_mae", "pretrain/checkpoint.pth", arch="vit_toy_patch4", img_size=128)`:
    the backbone + neck of catalogue entry `name`, returning p2-p6. Single-map trunks (ViTs) get
    ViTDet's simple feature pyramid, multi-scale ones torchvision's FPN.

    Args:
        name, checkpoint, **kwargs: as `build_trunk`.
        out_channels: the width of every pyramid level.
    """
    trunk = build_trunk(name, checkpoint, **kwargs)
    if len(trunk.out_channels) == 1:
        neck = SimplePyramidNeck(trunk.out_channels[0], trunk.strides[0], out_channels)
    else:
        neck = FPNNeck(trunk.out_channels, trunk.strides, out_channels)
    return PyramidBackbone(trunk, neck, out_channels)


def trunk_feature_dim(trunk: nn.Module) -> int:
    """Channels of the trunk's last (coarsest) map: the width of its pooled features."""
    return trunk.out_channels[-1]


__all__ = [
    "CATALOGUE", "CatalogueError", "Entry", "PYRAMID_STRIDES", "PyramidBackbone", "build_pyramid",
    "build_trunk", "get_entry", "trunk_feature_dim",
]
