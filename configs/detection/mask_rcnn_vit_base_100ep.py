"""ViT-B Mask R-CNN, 100 epochs on COCO (ViTDet recipe): the shared base as it is."""

from .base_mask_rcnn_vit import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.output_dir = "output/mask_rcnn_vit_base_100ep"
