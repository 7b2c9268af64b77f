"""The toolkit's ViT backbone in MMSegmentation's MODELS registry.

It is `mae_core.backbone.ViTBackbone` itself (same parameter names as the MAE encoder), so an MAE
checkpoint loads through `mae_core`'s converter and every key is accounted for in a printed report,
unlike MMSegmentation's `MAE` backbone, which loads with strict=False and says nothing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmseg.registry import MODELS

from mae_core.backbone import ViTBackbone
from mae_core.checkpoint import IncompleteLoadError, load_pretrained
from mae_core.transfer import FreezableMixin
from mae_core.vit import get_arch


@MODELS.register_module()
class MAEViT(FreezableMixin, ViTBackbone):
    """`arch` names a size (`vit_base_patch16`, `vit_large_patch16`, ...); keyword arguments
    override it. Global attention in every block unless `window_size` is set, as in the MAE
    segmentation recipe. `use_rel_pos` adds relative position biases (zero-initialised) and
    `init_values` layer scale. `cls_token_in_attention=True, rel_pos_bias=True` is MMSegmentation's
    `MAE` layout (cls token attending, BEiT's relative-position table): its checkpoints give its
    outputs; set `pretrain_img_size` to their crop size so their position table is not resampled.
    `pretrained` is a checkpoint (the toolkit's, official MAE, timm, HF or MMSegmentation MAE
    layout) loaded in `init_weights`, which the Runner calls before training; mmseg's
    `model.pretrained=...` is forwarded here by `EncoderDecoder`, and mmengine's
    `init_cfg=dict(type="Pretrained", checkpoint=...)` names it too. The checkpoint loads
    completely or not at all (`load_pretrained`) unless `allow_partial_load=True`.

    Args:
        arch: a ViT size of `mae_core.vit.VIT_ARCHS`.
        img_size: the crop size; sets the global blocks' relative-position tables (inputs of other
            sizes work: tables and the position table are resampled).
        out_indices: blocks whose outputs are returned, one map per UperNet input (ViT-B:
            3, 5, 7, 11).
        pretrained: a checkpoint loaded in `init_weights`.
        allow_pickle: trust a pickled checkpoint file.
        init_cfg: mmengine's `dict(type="Pretrained", checkpoint=PATH)`, the other way to name
            it; any other init_cfg is refused.
        allow_partial_load: load what fits and report the rest instead of raising.
        freeze: fix the whole ViT (mae_core.transfer: no gradients, no optimizer group, always in
            eval mode), so only the neck and heads train.
        **kwargs: any `mae_core.backbone.ViTBackbone` argument (`drop_path_rate`, `window_size`,
            `global_blocks`, `use_rel_pos`, `cls_token_in_attention`, `rel_pos_bias`,
            `init_values`, `pretrain_img_size`, `final_norm`, `grad_checkpointing`...).
    """

    def __init__(
        self,
        arch: str = "vit_base_patch16",
        img_size: int | Sequence[int] = 512,
        out_indices: Sequence[int] = (3, 5, 7, 11),
        pretrained: str | None = None,
        allow_pickle: bool = False,
        init_cfg: dict | None = None,
        allow_partial_load: bool = False,
        freeze: bool = False,
        **kwargs,
    ):
        spec = get_arch(arch).to_dict()
        super().__init__(
            **{
                **spec,
                "img_size": tuple(img_size) if not isinstance(img_size, int) else img_size,
                "out_indices": out_indices,
                **kwargs,
            }
        )
        self.pretrained = _one_checkpoint(pretrained, init_cfg)
        self.allow_pickle = allow_pickle
        self.allow_partial_load = allow_partial_load
        self.set_frozen(freeze)

    def init_weights(self) -> None:
        super().init_weights()
        if getattr(self, "pretrained", None):
            try:
                report = load_pretrained(
                    self, self.pretrained, allow_pickle=self.allow_pickle,
                    allow_partial=self.allow_partial_load,
                )
            except IncompleteLoadError as exc:
                raise IncompleteLoadError(
                    f"MAEViT: {exc}\nTo train from what fits anyway, set "
                    "model.backbone.allow_partial_load=True.",
                    exc.report,
                ) from exc
            print_log(f"MAEViT initialised from {self.pretrained}:\n{report}", logger="current")

    def forward(self, imgs: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> one (B, embed_dim, ceil(H/p), ceil(W/p)) map per `out_indices` entry.
        Pads the bottom and right to a multiple of the patch size first: sliding-window crops at
        image borders and resized images need not be multiples (mmseg's backbones pad too)."""
        pad_h, pad_w = (-imgs.shape[-2]) % self.patch_size, (-imgs.shape[-1]) % self.patch_size
        if pad_h or pad_w:
            imgs = F.pad(imgs, (0, pad_w, 0, pad_h))
        return super().forward(imgs)


def _one_checkpoint(pretrained: str | None, init_cfg: dict | None) -> str | None:
    """The checkpoint named by `pretrained` or by mmengine's `init_cfg=dict(type="Pretrained",
    checkpoint=...)`; any other init_cfg, or two different files, is refused rather than ignored."""
    init_cfg = dict(init_cfg or {})
    if init_cfg and (init_cfg.get("type") != "Pretrained" or set(init_cfg) - {"type", "checkpoint"}):
        raise ValueError(
            f"MAEViT init_cfg={init_cfg}: only dict(type='Pretrained', checkpoint=PATH) is supported "
            "(the checkpoint loads through mae_core.checkpoint.load_pretrained)"
        )
    checkpoint = init_cfg.get("checkpoint")
    if pretrained and checkpoint and pretrained != checkpoint:
        raise ValueError(
            f"MAEViT: two checkpoints, pretrained={pretrained} and init_cfg.checkpoint={checkpoint}"
        )
    return pretrained or checkpoint
