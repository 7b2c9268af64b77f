"""The demo's Mask R-CNN (`make demo`, mae_app/demo.py): the tiny CPU config with a catalogue
backbone, light heads on a 128-channel pyramid, and the demo's COCO scenes (10 Fashion-MNIST classes).

What varies per run comes as ordinary overrides, e.g.
    python tools/train_det.py --config-file configs/detection/demo_mask_rcnn_vit_toy.py \
        model.backbone.name=vit_mae model.backbone.checkpoint=output/demo/pretrain/mask75/last.pth \
        train.seed=1 train.output_dir=output/demo/runs/det/vit_mae_s1
A catalogue backbone that is not a ViT drops the ViT options:
    model.backbone.name=resnet50_fpn model.backbone.options=null"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from detection.catalogue import DetectronCatalogueBackbone

from .mask_rcnn_vit_tiny_cpu import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

scene_size = 128  # the demo scenes' side (mae_app.demo_data.DemoDataSpec.scene_size)
width = 128  # pyramid, RPN and box-head input width (the model zoo's 256 would dominate the step)
model.backbone = L(DetectronCatalogueBackbone)(
    name="vit_random",
    checkpoint=None,
    out_channels=width,
    square_pad=scene_size,
    # ViTDet-style windows at 128 px (32x32 tokens), two global blocks; pretrained at 64 px.
    options=dict(arch="vit_toy_patch4", img_size=scene_size, pretrain_img_size=64, window_size=8,
                 global_blocks=(1, 3)),
    freeze=False,
)
model.roi_heads.num_classes = 10
# Light heads: the model zoo's 4-conv box and mask heads cost many times the toy backbone's FLOPs;
# one fc box head and a 1-conv mask head keep an iteration's time mostly the backbone's
# (docs/results.md).
model.proposal_generator.head.in_channels = width
model.roi_heads.box_head.input_shape = ShapeSpec(channels=width, height=7, width=7)
model.roi_heads.box_head.conv_dims = []
model.roi_heads.box_head.fc_dims = [4 * width]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=4 * width)
# Scenes hold at most 4 objects; the mask head runs on each detection.
model.roi_heads.box_predictor.test_topk_per_image = 20
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=width, width=14, height=14)
model.roi_heads.mask_head.conv_dims = [64] * 2  # one conv + the deconv
dataloader.train.dataset.update(
    name="demo_scenes_train",
    json_file="output/demo/data/coco/annotations/instances_train.json",
    image_root="output/demo/data/coco/train",
)
dataloader.test.dataset.update(
    name="demo_scenes_val",
    json_file="output/demo/data/coco/annotations/instances_val.json",
    image_root="output/demo/data/coco/val",
)
dataloader.train.mapper.instance_mask_format = "bitmask"  # the demo's masks are RLE
dataloader.train.mapper.augmentations.update(image_size=scene_size)
optimizer.lr = 2e-4
train.max_iter = 500
train.eval_period = 500
train.checkpointer.period = 500
train.log_period = 20
train.seed = 0
train.output_dir = "output/demo/runs/det/vit_random_s0"
