"""ViT-H Mask R-CNN, 100 epochs on COCO: layer decay 0.9, drop path 0.5, global blocks 7, 15, 23, 31.

MAE's ViT-H uses 14-pixel patches; ViTDet runs it with 16-pixel patches. `train.mae_checkpoint`
may name the patch-14 checkpoint: mae_core's loader resamples the patch kernel 14 -> 16 and the
position table to the 14x14 grid that 224 / 16 gives."""

from .base_mask_rcnn_vit import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net.arch = "vit_huge_patch14"
model.backbone.net.patch_size = 16
model.backbone.net.drop_path_rate = 0.5
optimizer.params.layer_decay = 0.9
train.output_dir = "output/mask_rcnn_vit_huge_100ep"
