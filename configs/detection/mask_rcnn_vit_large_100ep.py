"""ViT-L Mask R-CNN, 100 epochs on COCO: layer decay 0.8, drop path 0.4, global blocks 5, 11, 17, 23."""

from .base_mask_rcnn_vit import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net.arch = "vit_large_patch16"
model.backbone.net.drop_path_rate = 0.4
optimizer.params.layer_decay = 0.8
train.output_dir = "output/mask_rcnn_vit_large_100ep"
