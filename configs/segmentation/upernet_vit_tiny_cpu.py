# A toy UperNet-ViT that trains on two CPU cores in about a minute: the full pipeline of the real
# configs (backbone, pyramid neck, UPerHead + FCN auxiliary head, layer decay, sliding-window test,
# IoU) at 64-pixel crops, on any dataset in the ADE20K folder layout with its own classes.
# Point it at data with --cfg-options train_dataloader.dataset.data_root=... (and val/test).
_base_ = ["./_base_upernet_vit.py"]

crop_size = (64, 64)
embed_dim = 96
norm_cfg = dict(type="BN", requires_grad=True)
metainfo = dict(
    classes=("background", "square", "disc"),
    palette=[[0, 0, 0], [220, 20, 60], [0, 128, 255]],
)
num_classes = 3

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch="vit_toy_patch4", patch_size=8, img_size=crop_size, out_indices=(0, 1, 2, 3)),
    neck=dict(embed_dim=embed_dim, norm_cfg=norm_cfg),
    decode_head=dict(
        in_channels=[embed_dim] * 4,
        channels=32,
        pool_scales=(1, 2),
        dropout_ratio=0.0,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
    ),
    auxiliary_head=dict(
        in_channels=embed_dim, channels=16, dropout_ratio=0.0, num_classes=num_classes, norm_cfg=norm_cfg
    ),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(48, 48)),
)

train_pipeline = [
    dict(type="LoadScaledImageFromFile"),
    dict(type="LoadCheckedAnnotations"),
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadScaledImageFromFile"),
    dict(type="LoadCheckedAnnotations"),
    dict(type="PackSegInputs"),
]
data_root = "data/tiny_seg"
tiny_dataset = dict(
    type="SegFolderDataset",
    data_root=data_root,
    metainfo=metainfo,
    img_suffix=".jpg",
    reduce_zero_label=False,
)
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(tiny_dataset, pipeline=train_pipeline)
)
val_dataloader = dict(
    num_workers=0, persistent_workers=False, dataset=dict(tiny_dataset, pipeline=test_pipeline)
)
test_dataloader = val_dataloader

optim_wrapper = dict(
    type="OptimWrapper",
    _delete_=True,
    optimizer=dict(type="AdamW", lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    constructor="LayerDecayOptimWrapperConstructor",
    paramwise_cfg=dict(layer_decay_rate=0.75),
)
max_iters = 60
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=10),
    dict(type="PolyLR", eta_min=0.0, power=1.0, by_epoch=False, begin=10, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_iters),
)
randomness = dict(seed=0)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
