"""Fixed 2-D sine-cosine position embeddings (MAE, MoCo v3) and their resampling to another grid."""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, embed_dim): half sines, half cosines of positions / 10000^(2i/d)."""
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.reshape(-1, 1).double() * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(embed_dim: int, grid_size: tuple[int, int], cls_token: bool = False) -> torch.Tensor:
    """(gh*gw [+1], embed_dim) table, row-major over the grid; half the channels encode the column
    (width) coordinate and half the row, as in the official MAE, so its checkpoints line up.
    A cls token gets an all-zero row in front."""
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {embed_dim}")
    gh, gw = grid_size
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    emb = torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Bicubic resampling of a (1, prefix + gh*gw, D) table to another grid, prefix tokens kept.
    Without antialiasing, as Detectron2's ViTDet does, so that both give the same numbers."""
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    return resample_abs_pos_embed(
        pos_embed, list(new_grid), list(old_grid), num_prefix_tokens=num_prefix_tokens, antialias=False
    )
