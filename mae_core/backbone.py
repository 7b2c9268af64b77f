"""The plain-ViT backbone for dense prediction (ViTDet), framework-agnostic.

It is the MAE encoder (same blocks, same parameter names, so an MAE checkpoint loads directly)
run on the whole image as a token map, with windowed attention in most blocks, optional
decomposed relative positions, and the pretraining position table resampled to the input grid.
The cls token and final norm of pretraining are not used (ViTDet), unless `cls_token_in_attention`
keeps the cls token as MMSegmentation's `MAE` / `BEiT` backbones do (with `rel_pos_bias`, their
relative-position table), so that their checkpoints give the same outputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import to_2tuple
from torch.utils.checkpoint import checkpoint

from .pos_embed import resample_pos_embed
from .vit import VisionTransformer, get_arch

# ViTDet's global-attention blocks per size; the other blocks attend within 14x14 windows.
VITDET_GLOBAL_BLOCKS = {
    "vit_base_patch16": (2, 5, 8, 11),
    "vit_large_patch16": (5, 11, 17, 23),
    "vit_huge_patch14": (7, 15, 23, 31),
}


class ViTBackbone(VisionTransformer):
    """The MAE encoder as a dense-prediction trunk: images (B, in_chans, H, W) of any size that is
    a multiple of the patch size -> token maps (B, embed_dim, H/p, W/p) after the blocks in
    `out_indices`. MMSegmentation's `MAE` is `cls_token_in_attention=True, rel_pos_bias=True,
    init_values=...` (layer scale); ViTDet is `create_backbone(arch, vitdet_windows=True,
    use_rel_pos=True)`.

    Args:
        img_size: the typical input size; it sets the size of the relative-position tables of the
            global blocks (tables are resampled for other sizes).
        pretrain_img_size: the grid the position table was trained on (224 for MAE checkpoints);
            the table is resampled to each input's grid.
        patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, drop_path_rate,
            init_values: as `VisionTransformer`.
        window_size: side of the attention windows, in tokens; 0: global attention everywhere.
        global_blocks: indices of the blocks that attend globally when `window_size` is set.
        use_rel_pos: decomposed relative positions (ViTDet).
        cls_token_in_attention: the cls token (with its position) attends and is attended to in
            every block, and is dropped from the outputs (MMSegmentation's `MAE` / `BEiT`); global
            attention only.
        rel_pos_bias: BEiT's relative position bias, one learned scalar per head and 2-D offset
            (plus the cls entries when the cls token attends); excludes `use_rel_pos`.
        out_indices: blocks whose outputs are returned, in order; None: the last block only.
        final_norm: apply the pretraining's final LayerNorm to the last block's output.
        grad_checkpointing: recompute each block in backward while training (less memory).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 1024,
        pretrain_img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        init_values: float | None = None,
        window_size: int = 0,
        global_blocks: Sequence[int] = (),
        use_rel_pos: bool = False,
        cls_token_in_attention: bool = False,
        rel_pos_bias: bool = False,
        out_indices: Sequence[int] | None = None,
        final_norm: bool = False,
        grad_checkpointing: bool = False,
    ):
        grid = tuple(s // patch_size for s in to_2tuple(img_size))
        if cls_token_in_attention and window_size:
            raise ValueError("cls_token_in_attention needs global attention in every block (window_size=0)")
        if use_rel_pos and rel_pos_bias:
            raise ValueError("use_rel_pos (decomposed, ViTDet) and rel_pos_bias (BEiT) exclude each other")

        def block_kwargs(i: int) -> dict:
            windowed = window_size > 0 and i not in global_blocks
            size = (window_size, window_size) if windowed else grid
            return {
                "window_size": window_size if windowed else 0,
                "rel_pos_size": size if use_rel_pos else None,
                "rel_pos_bias_size": size if rel_pos_bias else None,
                "cls_token": cls_token_in_attention,
            }

        super().__init__(
            pretrain_img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
            qkv_bias=qkv_bias, drop_path_rate=drop_path_rate, init_values=init_values,
            trainable_pos_embed=True, block_kwargs=block_kwargs,
        )
        self.cls_token_in_attention = cls_token_in_attention
        if not cls_token_in_attention:
            self.register_parameter("cls_token", None)
        if not final_norm:
            self.norm = None
        self.out_indices = tuple(out_indices) if out_indices is not None else (depth - 1,)
        valid = all(0 <= i < depth for i in self.out_indices)
        if len(set(self.out_indices)) != len(self.out_indices) or not valid:
            raise ValueError(
                f"out_indices must be distinct block indices in [0, {depth}), got {self.out_indices}"
            )
        self.grad_checkpointing = grad_checkpointing

    @property
    def num_layers(self) -> int:
        """For layer-wise lr decay: embeddings are layer 0, block i is layer i + 1."""
        return self.depth

    def layer_id(self, name: str) -> int:
        """Layer of a parameter (name relative to this module) for layer-wise lr decay."""
        if name.startswith(("patch_embed", "pos_embed", "cls_token")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.depth + 1

    def forward(self, imgs: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_chans, H, W) -> one (B, embed_dim, H/p, W/p) map per `out_indices` entry."""
        self.check_input(imgs, fixed_size=False)
        x = self.patch_embed(imgs)
        b, h, w, c = x.shape
        pos = resample_pos_embed(self.pos_embed, (h, w), self.grid_size, num_prefix_tokens=1)
        x = x + pos[:, 1:].reshape(1, h, w, -1)
        grid = None
        if self.cls_token_in_attention:
            # Tokens (B, 1 + h*w, C), cls first, with the grid for the relative positions.
            cls = (self.cls_token + pos[:, :1]).expand(b, -1, -1)
            x, grid = torch.cat([cls, x.reshape(b, h * w, c)], dim=1), (h, w)
        outs = []
        for i, blk in enumerate(self.blocks):
            if self.grad_checkpointing and self.training:
                x = checkpoint(blk, x, grid, use_reentrant=False)
            else:
                x = blk(x, grid)
            if i in self.out_indices:
                y = self.norm(x) if self.norm is not None and i == self.depth - 1 else x
                if grid is not None:
                    y = y[:, 1:].reshape(b, h, w, c)
                outs.append(y.permute(0, 3, 1, 2).contiguous())
        return outs


def create_backbone(arch: str, vitdet_windows: bool = False, **kwargs) -> ViTBackbone:
    """`create_backbone("vit_base_patch16", vitdet_windows=True, use_rel_pos=True)`: a named size,
    optionally with ViTDet's 14x14 windows and global blocks; keyword arguments override.

    Args:
        arch: a ViT size of `mae_core.vit.VIT_ARCHS`.
        vitdet_windows: 14x14 windows with ViTDet's global blocks for `arch`
            (`VITDET_GLOBAL_BLOCKS`; KeyError for a size it has none for).
        **kwargs: any `ViTBackbone` argument, overriding the size's and the windows'.
    """
    spec = get_arch(arch).to_dict()
    if vitdet_windows:
        if arch not in VITDET_GLOBAL_BLOCKS:
            raise KeyError(f"no ViTDet global blocks known for {arch!r}; pass global_blocks= yourself")
        spec.update(window_size=14, global_blocks=VITDET_GLOBAL_BLOCKS[arch])
    return ViTBackbone(**{**spec, **kwargs})
