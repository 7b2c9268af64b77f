# What every UperNet-ViT config shares: the MAE segmentation recipe (BEiT's UperNet set-up) on
# MMSegmentation's ADE20K folder layout. Size-specific fields (backbone size, channels, layer decay)
# live in the configs that inherit this one. Runs under tools/train_seg.py and under
# MMSegmentation's own tools/train.py (the custom import registers the toolkit's modules).
custom_imports = dict(imports=["segmentation"], allow_failed_imports=False)
default_scope = "mmseg"

crop_size = (512, 512)
num_classes = 150
# SyncBN across GPUs; tools/train_seg.py turns it into BN on a machine without CUDA.
norm_cfg = dict(type="SyncBN", requires_grad=True)

data_preprocessor = dict(
    type="SegDataPreProcessor",
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size,
)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=data_preprocessor,
    # An MAE checkpoint (toolkit, official, timm or HF layout); None trains from scratch. It loads
    # completely or the run stops naming the keys that do not fit, unless
    # model.backbone.allow_partial_load=True. `model.backbone.init_cfg.checkpoint=` names it too.
    pretrained=None,
    # freeze=True: the ViT fixed (no gradients, eval mode), the neck and heads train.
    backbone=dict(type="MAEViT", img_size=crop_size, init_cfg=dict(type="Pretrained", checkpoint=None),
                  freeze=False),
    neck=dict(type="Feature2Pyramid", rescales=[4, 2, 1, 0.5], norm_cfg=norm_cfg),
    decode_head=dict(
        type="UPerHead",
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=dict(
        type="FCNHead",
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(341, 341)),
)

# Data: <data_root>/images/{training,validation}/*.jpg, <data_root>/annotations/{...}/*.png.
dataset_type = "ADE20KFolderDataset"
data_root = "data/ade/ADEChallengeData2016"
train_pipeline = [
    dict(type="LoadScaledImageFromFile"),
    dict(type="LoadCheckedAnnotations"),
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadScaledImageFromFile"),
    dict(type="Resize", scale=(2048, 512), keep_ratio=True),
    # Labels are loaded after the resize: metrics are computed at the original resolution.
    dict(type="LoadCheckedAnnotations"),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=2,  # per GPU: 8 GPUs x 2 = the recipe's batch of 16
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"),
        pipeline=train_pipeline,
        # A labelled subset (nested across fractions, chosen by subset_seed, not randomness.seed).
        label_fraction=None,
        label_count=None,
        subset_seed=0,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation"),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator

# AdamW with layer-wise lr decay; AMP is on in the config itself (no --amp flag needed).
optim_wrapper = dict(
    type="AmpOptimWrapper",
    loss_scale="dynamic",
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor="LayerDecayOptimWrapperConstructor",
    paramwise_cfg=dict(layer_decay_rate=0.65),
)
max_iters = 160000
warmup_iters = 1500
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters),
    dict(type="PolyLR", eta_min=0.0, power=1.0, by_epoch=False, begin=warmup_iters, end=max_iters),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=16000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    # Written through a temporary file and a rename (segmentation.engine.AtomicLocalBackend).
    checkpoint=dict(
        type="CheckpointHook", by_epoch=False, interval=16000, backend_args=dict(backend="atomic_local")
    ),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
# Stops at the first non-finite loss or gradient norm (naming the iteration) and refuses to save,
# validate or test a non-finite model (segmentation.hooks).
custom_hooks = [dict(type="NonFiniteGuardHook")]
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)
# Scalars to <work dir>/<timestamp>/vis_data/: scalars.json and TensorBoard events.
vis_backends = [dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(by_epoch=False)
log_level = "INFO"
load_from = None
resume = False
# mmengine's default, spelled out so that --cfg-options randomness.seed=N names an existing key.
randomness = dict(seed=None)
