"""tools/demo.py: the plan covers every cell with every seed (and the sweep when asked), and the
configs it generates build the catalogue backbone inside Detectron2's Mask R-CNN and MMSeg's UperNet."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import demo  # noqa: E402


def plan_of(tmp_path, *argv):
    return demo.Demo(demo.parse_args(["--out", str(tmp_path), *argv])).plan()


def test_plan_has_every_cell_for_every_seed(tmp_path):
    plan = plan_of(tmp_path, "--seeds", "0", "1", "2")
    cells = {(e["run"]["task"], e["run"]["backbone"], e["run"]["seed"]) for e in plan}
    assert cells == {(task, backbone, seed) for task in ("cls", "det", "seg")
                     for backbone in ("vit_mae", "vit_random") for seed in (0, 1, 2)}
    assert len({e["output_dir"] for e in plan}) == len(plan)
    mae_det = next(e for e in plan if e["run"]["task"] == "det" and e["run"]["backbone"] == "vit_mae")
    assert mae_det["run"]["checkpoint"].endswith("pretrain/mask75/last.pth")


def test_more_backbones_join_detection_and_segmentation(tmp_path):
    plan = plan_of(tmp_path, "--seeds", "0", "--also", "vit_supervised", "resnet50_fpn", "timm:convnext_atto")
    dense = {(e["run"]["task"], e["run"]["backbone"]): e for e in plan if e["run"]["task"] != "cls"}
    assert set(dense) == {(t, b) for t in ("det", "seg") for b in
                          ("vit_mae", "vit_random", "vit_supervised", "resnet50_fpn", "timm:convnext_atto")}
    assert dense["det", "vit_supervised"]["run"]["checkpoint"].endswith("supervised/backbone.pth")
    assert "arch" not in dense["seg", "resnet50_fpn"]["run"]["backbone_kwargs"]
    with pytest.raises(SystemExit):
        demo.parse_args(["--also", "no_such_backbone"])


def test_mask_ratio_sweep_probes_each_pretraining(tmp_path):
    plan = plan_of(tmp_path, "--mask-ratio-sweep", "--skip", "det", "seg")
    ratios = sorted({e["run"].get("mask_ratio") for e in plan if e["run"]["backbone"] == "vit_mae"})
    assert ratios == [0.25, 0.5, 0.75, 0.9]
    assert all(e["run"]["task"] == "cls" for e in plan)
    with pytest.raises(SystemExit):
        demo.parse_args(["--mask-ratio-sweep", "--mask-ratio", "0.6"])


@pytest.mark.slow
def test_generated_detection_config_builds_mask_rcnn_with_the_mae_backbone(tmp_path):
    import torch
    from detectron2.config import LazyConfig, instantiate

    from mae_core.mae import create_mae

    args = demo.parse_args(["--out", str(tmp_path), "--quick"])
    run = demo.Demo(args)
    checkpoint = run.checkpoint(0.75)
    checkpoint.parent.mkdir(parents=True)
    torch.save({"model": create_mae("vit_toy_patch4", img_size=64).state_dict()}, checkpoint)
    entry = next(e for e in run.plan() if e["run"]["task"] == "det" and e["run"]["backbone"] == "vit_mae")
    cfg = LazyConfig.load(entry["command"][-1])
    assert cfg.train.seed == 0 and cfg.dataloader.train.mapper.instance_mask_format == "bitmask"
    model = instantiate(cfg.model)
    assert model.roi_heads.num_classes == 10
    recipe = demo.Recipe()  # the light heads the demo's iteration budget relies on
    assert len(model.roi_heads.box_head.conv_norm_relus) == recipe.box_head_convs
    assert len(model.roi_heads.mask_head.conv_norm_relus) == recipe.mask_head_convs
    assert {k: v.stride for k, v in model.backbone.output_shape().items()} == {
        "p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    state = torch.load(checkpoint, weights_only=True)["model"]
    torch.testing.assert_close(model.backbone.net.blocks[1].mlp.fc1.weight, state["blocks.1.mlp.fc1.weight"])


def test_generated_segmentation_config_builds_upernet(tmp_path):
    import torch
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import segmentation.catalogue  # noqa: F401

    register_all_modules(init_default_scope=True)
    run = demo.Demo(demo.parse_args(["--out", str(tmp_path), "--quick"]))
    entry = next(e for e in run.plan() if e["run"]["task"] == "seg" and e["run"]["backbone"] == "vit_random")
    cfg = Config.fromfile(entry["command"][2])
    assert cfg.model.neck is None and cfg.randomness.seed == 0
    assert cfg.train_dataloader.dataset.img_suffix == ".png"
    crop = cfg.train_dataloader.dataset.pipeline[2].crop_size
    assert tuple(crop) == tuple(cfg.model.data_preprocessor.size) == (128, 128)
    model = MODELS.build(cfg.model)
    assert model.backbone.strides == (4, 8, 16, 32)
    assert model.decode_head.num_classes == 11
    # A background pixel pulls on the logits with Recipe.seg_background_weight of an item pixel's force.
    labels = torch.tensor([[[0, 3]]])  # one background pixel, one item pixel
    for loss in (model.decode_head.loss_decode, model.auxiliary_head.loss_decode):
        logits = torch.zeros(1, 11, 1, 2, requires_grad=True)
        loss(logits, labels).backward()
        force = logits.grad[0, :, 0].norm(dim=0)
        assert (force[0] / force[1]).item() == pytest.approx(demo.Recipe().seg_background_weight)
