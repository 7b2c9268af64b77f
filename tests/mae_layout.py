"""The official MAE checkpoint layout, written out from its published key names and shapes
(not from the toolkit's modules), so tests can check the toolkit against it."""

from __future__ import annotations

import torch


def official_block_shapes(prefix: str, dim: int, mlp_ratio: float = 4.0) -> dict[str, tuple[int, ...]]:
    hidden = int(dim * mlp_ratio)
    return {
        f"{prefix}.norm1.weight": (dim,),
        f"{prefix}.norm1.bias": (dim,),
        f"{prefix}.attn.qkv.weight": (3 * dim, dim),
        f"{prefix}.attn.qkv.bias": (3 * dim,),
        f"{prefix}.attn.proj.weight": (dim, dim),
        f"{prefix}.attn.proj.bias": (dim,),
        f"{prefix}.norm2.weight": (dim,),
        f"{prefix}.norm2.bias": (dim,),
        f"{prefix}.mlp.fc1.weight": (hidden, dim),
        f"{prefix}.mlp.fc1.bias": (hidden,),
        f"{prefix}.mlp.fc2.weight": (dim, hidden),
        f"{prefix}.mlp.fc2.bias": (dim,),
    }


def official_mae_shapes(
    img_size: int = 224,
    patch: int = 16,
    chans: int = 3,
    dim: int = 768,
    depth: int = 12,
    decoder_dim: int | None = 512,
    decoder_depth: int = 8,
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of `mae_vit_*` (decoder_dim=None: the encoder-only `mae_pretrain_vit_*.pth`)."""
    tokens = 1 + (img_size // patch) ** 2
    shapes = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, tokens, dim),
        "patch_embed.proj.weight": (dim, chans, patch, patch),
        "patch_embed.proj.bias": (dim,),
    }
    for i in range(depth):
        shapes.update(official_block_shapes(f"blocks.{i}", dim))
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    if decoder_dim is None:
        return shapes
    shapes.update(
        {
            "mask_token": (1, 1, decoder_dim),
            "decoder_pos_embed": (1, tokens, decoder_dim),
            "decoder_embed.weight": (decoder_dim, dim),
            "decoder_embed.bias": (decoder_dim,),
        }
    )
    for i in range(decoder_depth):
        shapes.update(official_block_shapes(f"decoder_blocks.{i}", decoder_dim))
    shapes.update(
        {
            "decoder_norm.weight": (decoder_dim,),
            "decoder_norm.bias": (decoder_dim,),
            "decoder_pred.weight": (patch * patch * chans, decoder_dim),
            "decoder_pred.bias": (patch * patch * chans,),
        }
    )
    return shapes


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}
