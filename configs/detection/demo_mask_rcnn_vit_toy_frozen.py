"""The demo's frozen-backbone Mask R-CNN (mae_app.demo --frozen): the demo's config with the ViT
fixed (no gradients, eval mode, not in the optimizer); its simple feature pyramid, the RPN and
the ROI heads train. Overrides as for configs/detection/demo_mask_rcnn_vit_toy.py."""

from .demo_mask_rcnn_vit_toy import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.freeze = True
