"""The plain Vision Transformer encoder and its named sizes.

Parameter names follow the official MAE / timm layout (`patch_embed.proj`, `cls_token`, `pos_embed`,
`blocks.N.*`, `norm`), which the masked autoencoder and the detection/segmentation backbone inherit."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from timm.layers import PatchEmbed, to_2tuple
from torch import nn

from .layers import Block
from .pos_embed import sincos_2d


@dataclass(frozen=True)
class ViTArch:
    """The numbers that define a ViT size; everything else (image size, channels, windows) is per use."""

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0

    def to_dict(self) -> dict:
        return asdict(self)


# Paper sizes (ViT-Ti/S/B/L/H) and toy sizes that pretrain on two CPU cores in minutes.
VIT_ARCHS: dict[str, ViTArch] = {
    "vit_huge_patch14": ViTArch(14, 1280, 32, 16),
    "vit_large_patch16": ViTArch(16, 1024, 24, 16),
    "vit_base_patch16": ViTArch(16, 768, 12, 12),
    "vit_small_patch16": ViTArch(16, 384, 12, 6),
    "vit_tiny_patch16": ViTArch(16, 192, 12, 3),
    "vit_toy_patch4": ViTArch(4, 96, 4, 3),
    "vit_mini_patch4": ViTArch(4, 192, 6, 3),
}


def get_arch(name: str, **overrides) -> ViTArch:
    """The size `name` (a key of `VIT_ARCHS`, e.g. "vit_base_patch16"), with `overrides` of its
    fields (e.g. `patch_size=8`). Raises KeyError naming the known sizes."""
    if name not in VIT_ARCHS:
        raise KeyError(f"unknown ViT size {name!r}; known: {', '.join(sorted(VIT_ARCHS))}")
    return replace(VIT_ARCHS[name], **overrides)


def layer_norm(dim: int) -> nn.LayerNorm:
    # eps 1e-6 as in MAE, timm and ViTDet.
    return nn.LayerNorm(dim, eps=1e-6)


class VisionTransformer(nn.Module):
    """ViT encoder: patch embedding, cls token, fixed 2-D sin-cos position table, pre-norm blocks.

    Args:
        img_size: input side, or (height, width); both multiples of `patch_size`. Fixes the
            position table's grid.
        patch_size: side of the square patches.
        in_chans: image channels.
        embed_dim: token width D.
        depth: number of blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width over `embed_dim`.
        qkv_bias: bias in the q, k, v projection.
        drop_path_rate: stochastic depth of the last block, rising linearly from 0 at the first.
        init_values: layer-scale initial value (BEiT); None: no layer scale.
        trainable_pos_embed: train the position table (MAE keeps it fixed).
        block_kwargs: callable from a block's index to extra `Block` arguments (windows, relative
            positions); used by `mae_core.backbone.ViTBackbone`.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        init_values: float | None = None,
        trainable_pos_embed: bool = False,
        block_kwargs=None,
    ):
        super().__init__()
        img_size = to_2tuple(img_size)
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f"image size {img_size} is not a multiple of the patch size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.patch_embed = PatchEmbed(
            img_size, patch_size, in_chans, embed_dim, output_fmt="NHWC", strict_img_size=False
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(
            sincos_2d(embed_dim, self.grid_size, cls_token=True).unsqueeze(0),
            requires_grad=trainable_pos_embed,
        )
        drop_rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=drop_rates[i],
                norm_layer=layer_norm,
                init_values=init_values,
                **(block_kwargs(i) if block_kwargs else {}),
            )
            for i in range(depth)
        )
        self.norm = layer_norm(embed_dim)
        self.init_weights()

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def init_weights(self) -> None:
        """MAE's initialisation: xavier-uniform linears and patch kernel, N(0, 0.02) tokens."""
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        self.apply(_init_linear_and_norm)

    def check_input(self, imgs: torch.Tensor, fixed_size: bool) -> None:
        if imgs.ndim != 4 or imgs.shape[1] != self.in_chans:
            raise ValueError(f"expected images (B, {self.in_chans}, H, W), got {tuple(imgs.shape)}")
        h, w = imgs.shape[-2:]
        if fixed_size and (h, w) != self.img_size:
            raise ValueError(f"expected {self.img_size[0]}x{self.img_size[1]} images, got {h}x{w}")
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}")

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """All patches through the encoder: (B, 1 + gh*gw, D) normalised tokens, cls first."""
        self.check_input(imgs, fixed_size=True)
        x = self.patch_embed(imgs).flatten(1, 2) + self.pos_embed[:, 1:]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


def _init_linear_and_norm(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def vit_from_arch(arch: str, **kwargs) -> VisionTransformer:
    """The encoder of size preset `arch` (a name in VIT_ARCHS); keyword arguments add to it."""
    return VisionTransformer(**get_arch(arch).to_dict(), **kwargs)


__all__ = ["VIT_ARCHS", "ViTArch", "VisionTransformer", "get_arch", "layer_norm", "vit_from_arch"]
