"""ViTDet's Mask R-CNN on COCO with a frozen MAE ViT-B: the ViT fixed (no gradients, eval mode so
drop path is off, not in the optimizer), the simple feature pyramid and the heads trained on the
100-epoch schedule of mask_rcnn_vit_base_100ep.py."""

from .mask_rcnn_vit_base_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.freeze = True
model.backbone.net.drop_path_rate = 0.0
