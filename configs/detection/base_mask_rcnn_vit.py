"""Shared base of the detection configs: Mask R-CNN with ViTDet's heads on the toolkit's ViT-B
backbone + simple feature pyramid, COCO with large-scale jitter, AdamW with layer-wise lr decay,
ViTDet's 100-epoch step schedule, AMP. Variants override a few fields.

Initialise from an MAE checkpoint (the toolkit's or the official one) with
`train.mae_checkpoint=PATH`; official releases pickle extra objects: add `train.allow_pickle=True`
only for files you trust. A checkpoint that does not fit the backbone completely is refused, naming
the keys, unless `train.allow_partial_load=True`.

Data: Detectron2's registered COCO 2017 (`$DETECTRON2_DATASETS/coco`). A COCO-format set of your own
takes plain overrides per split, and the model's class count:
    dataloader.train.dataset.name=my_train dataloader.train.dataset.json_file=DIR/train.json
    dataloader.train.dataset.image_root=DIR/images (the same three for dataloader.test.dataset)
    model.roi_heads.num_classes=K
The run refuses a class count other than the training set's, and a test set whose categories
(ids and names) differ from the training set's. Images are read by the toolkit's reader
(`detection.data.ScaleAwareDatasetMapper`): 16-bit at their scale, 32-bit refused by name."""

import torch
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import COCOEvaluator
from omegaconf import OmegaConf

from detection.backbone import ViTDetBackbone
from detection.data import (
    ScaleAwareDatasetMapper,
    coco_dataset,
    eval_augmentations,
    lsj_augmentations,
    train_loader,
)
from detection.optim import layer_decay_params, step_lr_schedule
from mae_core.backbone import create_backbone

# Mask R-CNN with ViTDet's heads: LayerNorm in box and mask heads, 2-conv RPN, 4conv1fc box head.
model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
model.backbone = L(ViTDetBackbone)(
    net=L(create_backbone)(
        arch="vit_base_patch16",
        vitdet_windows=True,  # 14x14 windows, global blocks 2, 5, 8, 11
        use_rel_pos=True,
        img_size=1024,
        pretrain_img_size=224,
        drop_path_rate=0.1,
    ),
    out_channels=256,
    square_pad=1024,
    freeze=False,  # True: the ViT fixed (no gradients, eval mode), the pyramid and heads train
)

dataloader = OmegaConf.create()
# train_det.py fills in the sampler's seed and the iteration it starts at (resume).
dataloader.train = L(train_loader)(
    # json_file and image_root None: the registered files of `name`. label_fraction or label_count:
    # a labelled subset (nested across fractions, chosen by subset_seed, not by train.seed).
    dataset=L(coco_dataset)(name="coco_2017_train", json_file=None, image_root=None, label_fraction=None,
                            label_count=None, subset_seed=0),
    mapper=L(ScaleAwareDatasetMapper)(
        is_train=True,
        augmentations=L(lsj_augmentations)(image_size=1024, min_scale=0.1, max_scale=2.0),
        image_format="RGB",
        use_instance_mask=True,
        recompute_boxes=True,  # boxes from the cropped masks
    ),
    total_batch_size=64,
    num_workers=4,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(coco_dataset)(name="coco_2017_val", json_file=None, image_root=None, filter_empty=False),
    mapper=L(ScaleAwareDatasetMapper)(
        is_train=False,
        augmentations=L(eval_augmentations)(image_size="${....train.mapper.augmentations.image_size}"),
        image_format="RGB",
    ),
    num_workers=4,
)
dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.name}", output_dir="${train.output_dir}"
)

optimizer = L(torch.optim.AdamW)(
    params=L(layer_decay_params)(base_lr="${..lr}", weight_decay="${..weight_decay}", layer_decay=0.7),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.1,
)

# 100 epochs = 184,375 iterations x 64 images / 118k images.
lr_multiplier = L(step_lr_schedule)(max_iter="${train.max_iter}", warmup_iters=250)

train = model_zoo.get_config("common/train.py").train
train.max_iter = 184375
train.amp.enabled = True
train.ddp.fp16_compression = True
train.eval_period = 5000
train.checkpointer = dict(period=5000, max_to_keep=100)
train.output_dir = "output/mask_rcnn_vit"
train.seed = -1  # random; the seed used is logged and kept in checkpoints
train.mae_checkpoint = ""
train.allow_pickle = False
train.allow_partial_load = False  # True: a train.mae_checkpoint that fits only partly still loads
