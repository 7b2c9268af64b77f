# The demo's UperNet (`make demo`, mae_app/demo.py): the tiny CPU config with a catalogue backbone
# (its own pyramid, so no neck) on the demo's scenes in the ADE20K layout (background + the 10
# Fashion-MNIST classes). What varies per run comes as --cfg-options, e.g.
#   python tools/train_seg.py configs/segmentation/demo_upernet_vit_toy.py --work-dir WORK \
#       --cfg-options model.backbone.name=vit_mae model.backbone.checkpoint=CKPT randomness.seed=1
# A catalogue backbone that is not a ViT drops the ViT options: model.backbone.options=None.
_base_ = ["./upernet_vit_tiny_cpu.py"]

# The 128 px scenes are resized to 64 px, the MAE's pretraining size (mae_app.demo.Recipe's
# data.image_size): 16x16 tokens as in pretraining, the items (Fashion-MNIST's 28 px, pasted at 32-64
# px) at 16-32 px. Predictions are scaled back to 128 px for the IoU. A 64 px step costs a fraction
# of a 128 px one, so in about the same time the demo sees several times more scenes (batch 8 for
# 1,000 iterations): enough for both backbones to learn the item classes, which at 128 px and
# batch 2 they did not (docs/results.md).
input_size = (64, 64)
width = 128  # the backbone's pyramid width
classes = ("background", "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
           "sneaker", "bag", "ankle boot")
palette = [[0, 0, 0], [37, 91, 151], [74, 182, 46], [111, 17, 197], [148, 108, 92], [185, 199, 243],
           [222, 34, 138], [3, 125, 33], [40, 216, 184], [77, 51, 79], [114, 142, 230]]
# Background is most of the scenes' pixels: at full weight a model still unsure of the item's class
# predicts background everywhere (mIoU stuck at background's IoU / 11 for any backbone).
class_weight = [0.1] + [1.0] * 10
custom_imports = dict(imports=["segmentation", "segmentation.catalogue"], allow_failed_imports=False)
metainfo = dict(classes=classes, palette=palette)
model = dict(
    data_preprocessor=dict(size=input_size),
    backbone=dict(
        _delete_=True,
        type="MMSegCatalogueBackbone",
        name="vit_random",
        checkpoint=None,
        out_channels=width,
        # ViTDet-style windows (2x2 of them on the 16x16 tokens), two global blocks; pretrained at 64 px.
        options=dict(arch="vit_toy_patch4", img_size=input_size[0], pretrain_img_size=64, window_size=8,
                     global_blocks=(1, 3)),
        freeze=False,
        features="pyramid",
    ),
    neck=None,
    decode_head=dict(in_channels=[width] * 4, channels=64, num_classes=len(classes),
                     loss_decode=dict(class_weight=class_weight)),
    auxiliary_head=dict(in_channels=width, num_classes=len(classes),
                        loss_decode=dict(class_weight=class_weight)),
    test_cfg=dict(_delete_=True, mode="whole"),
)
demo_dataset = dict(
    type="SegFolderDataset",
    data_root="output/demo/data/ade",
    metainfo=metainfo,
    img_suffix=".png",
    reduce_zero_label=False,
)
# Both splits resized to the input size (the label maps of training with them, nearest); the
# validation label maps stay at 128 px, where the predictions are scaled back to.
train_pipeline = [
    dict(type="LoadScaledImageFromFile"),
    dict(type="LoadCheckedAnnotations"),
    dict(type="Resize", scale=input_size, keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=input_size, keep_ratio=True),
    dict(type="LoadCheckedAnnotations"),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(batch_size=8, dataset=dict(
    demo_dataset, pipeline=train_pipeline,
    data_prefix=dict(img_path="images/training", seg_map_path="annotations/training")))
val_dataloader = dict(dataset=dict(
    demo_dataset, pipeline=test_pipeline,
    data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation")))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=2e-3))
# 1,000 iterations (mae_app.demo.Recipe.seg_iters), the first tenth a linear warm-up (the demo
# overrides all three numbers together).
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=100),
    dict(type="PolyLR", eta_min=0.0, power=1.0, by_epoch=False, begin=100, end=1000),
]
train_cfg = dict(max_iters=1000, val_interval=1000)
default_hooks = dict(checkpoint=dict(interval=1000), logger=dict(interval=20))
randomness = dict(seed=0)
