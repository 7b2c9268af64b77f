"""A tiny Mask R-CNN that trains on a CPU in about a minute on small images (smoke runs, tests,
the demo): ViT 96 wide and 4 deep, 128-pixel images, batch 2, no AMP. The heads keep ViTDet's
layout (4 conv + 1 fc box head, 4 conv mask head, LayerNorm) at 64 channels and a 256-wide fc: at
the model zoo's widths they held 18 of the model's 22 million parameters, and a checkpoint (weights
and AdamW's two moments) took 265 MB.

Data: a COCO-format json + image folder per split, e.g.
    dataloader.train.dataset.json_file=DIR/train.json dataloader.train.dataset.image_root=DIR/images
and the same for dataloader.test.dataset; `model.roi_heads.num_classes` must match its categories
(a run with another count is refused, naming both)."""

from detectron2.layers import ShapeSpec

from .base_mask_rcnn_vit import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

image_size = 128
model.backbone.net.update(
    embed_dim=96,
    depth=4,
    num_heads=3,
    img_size=image_size,
    window_size=4,
    global_blocks=(1, 3),
    drop_path_rate=0.0,
)
model.backbone.square_pad = image_size
model.roi_heads.num_classes = 2
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_head.conv_dims = [64] * 4
model.roi_heads.box_head.fc_dims = [256]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
model.roi_heads.mask_head.conv_dims = [64] * 5  # 4 convs + the deconvolution
model.proposal_generator.post_nms_topk = (200, 100)

dataloader.train.dataset.update(
    name="tiny_coco_train", json_file="datasets/tiny_coco/train.json", image_root="datasets/tiny_coco/images"
)
dataloader.test.dataset.update(
    name="tiny_coco_val", json_file="datasets/tiny_coco/val.json", image_root="datasets/tiny_coco/images"
)
dataloader.train.mapper.augmentations.update(image_size=image_size, min_scale=0.5, max_scale=1.5)
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.test.num_workers = 0

optimizer.lr = 2e-4
lr_multiplier.warmup_iters = 10
optimizer.params.layer_decay = 0.9
train.device = "cpu"
train.amp.enabled = False
train.ddp.fp16_compression = False
train.max_iter = 100
train.eval_period = 100
train.log_period = 10
train.checkpointer.period = 50
train.output_dir = "output/mask_rcnn_vit_tiny_cpu"
