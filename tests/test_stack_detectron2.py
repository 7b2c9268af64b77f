"""The Detectron2 stack works on this machine: the model-zoo ViTDet Mask R-CNN (`mask_rcnn_vitdet`
LazyConfig), with the toolkit's backbone in place of Detectron2's ViT, trains two iterations on a
generated COCO-format dataset and COCOEvaluator returns box and mask AP (pycocotools path when
detectron2._C is absent)."""

import math

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import SimpleTrainer
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from helpers_coco import make_coco

from detection.backbone import ViTDetBackbone
from mae_core.backbone import ViTBackbone


@pytest.mark.slow
def test_model_zoo_vitdet_mask_rcnn_with_toolkit_backbone_trains_and_evaluates(tmp_path):
    train_json, image_root = make_coco(tmp_path, "train", 4, size=(96, 128))
    val_json, _ = make_coco(tmp_path, "val", 2, size=(96, 128), seed=1)
    names = {split: f"stack_{split}_{tmp_path.name}" for split in ("train", "val")}
    register_coco_instances(names["train"], {}, str(train_json), str(image_root))
    register_coco_instances(names["val"], {}, str(val_json), str(image_root))

    model_cfg = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
    model_cfg.backbone = L(ViTDetBackbone)(
        net=L(ViTBackbone)(
            img_size=128,
            patch_size=16,
            embed_dim=64,
            depth=2,
            num_heads=2,
            window_size=4,
            global_blocks=(1,),
            use_rel_pos=True,
        ),
        out_channels=256,  # the model-zoo heads are built for 256 channels
        square_pad=128,
    )
    model_cfg.roi_heads.num_classes = 2
    model_cfg.roi_heads.batch_size_per_image = 32
    model_cfg.roi_heads.box_predictor.test_score_thresh = 0.0  # untrained: keep every box so AP is defined
    model = instantiate(model_cfg)
    assert isinstance(model.backbone.net, ViTBackbone)

    augmentations = [T.ResizeShortestEdge(short_edge_length=96, max_size=128)]
    train_loader = build_detection_train_loader(
        dataset=get_detection_dataset_dicts(names["train"]),
        mapper=DatasetMapper(
            is_train=True, augmentations=augmentations, image_format="RGB", use_instance_mask=True
        ),
        total_batch_size=2,
        num_workers=0,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    trainer = SimpleTrainer(model, train_loader, optimizer)
    before = model.backbone.net.blocks[0].attn.qkv.weight.detach().clone()
    trainer.train(0, 2)
    assert trainer.iter == 2
    assert not torch.equal(before, model.backbone.net.blocks[0].attn.qkv.weight)
    losses = trainer.storage.history("total_loss").values()
    assert len(losses) == 2 and all(math.isfinite(v) for v, _ in losses)

    test_loader = build_detection_test_loader(
        dataset=get_detection_dataset_dicts(names["val"], filter_empty=False),
        mapper=DatasetMapper(is_train=False, augmentations=augmentations, image_format="RGB"),
        num_workers=0,
    )
    results = inference_on_dataset(model, test_loader, COCOEvaluator(names["val"], output_dir=str(tmp_path)))
    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert math.isfinite(results[task]["AP"]) and 0 <= results[task]["AP"] <= 100, results
    for name in names.values():
        DatasetCatalog.remove(name)
