"""mae_app.demo: the plan covers every cell with every seed (three by default; the sweep when asked),
every trained model is evaluated on the held-out scenes with its own final weights, and the demo's
config files, with the overrides a run gives them, build the catalogue backbone inside Detectron2's
Mask R-CNN and MMSeg's UperNet and test on the held-out scenes when told to."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mae_app.demo import (
    DET_CONFIG,
    PYRAMID_CHANNELS,
    SEG_CONFIG,
    Demo,
    DemoOptions,
    Recipe,
    detection_overrides,
    segmentation_overrides,
)


def plain(options) -> dict:
    """A config's backbone options with its sequences as tuples (OmegaConf and mmengine make lists)."""
    return {k: v if isinstance(v, (str, int, float)) else tuple(v) for k, v in options.items()}


def plan_of(tmp_path, **options):
    return Demo(DemoOptions(output_dir=tmp_path, **options)).plan()


def test_plan_has_every_cell_for_every_seed(tmp_path):
    plan = plan_of(tmp_path)  # the default seeds: 0 1 2
    cells = {(e["run"]["task"], e["run"]["backbone"], e["run"]["seed"]) for e in plan}
    assert cells == {(task, backbone, seed) for task in ("cls", "det", "seg")
                     for backbone in ("vit_mae", "vit_random") for seed in (0, 1, 2)}
    assert len({e["output_dir"] for e in plan}) == len(plan)
    mae_det = next(e for e in plan if e["run"]["task"] == "det" and e["run"]["backbone"] == "vit_mae")
    assert mae_det["run"]["checkpoint"].endswith("pretrain/mask75/last.pth")


def test_pretrain_seeds_pretrain_one_mae_per_seed_each_probed_and_fine_tuned(tmp_path):
    demo = Demo(DemoOptions(output_dir=tmp_path, seeds=[0], pretrain_seeds=[0, 1]))
    assert [demo.pretrain_dir(p).name for p in demo.pretrainings] == ["mask75", "mask75_seed1"]
    mae = [e for e in demo.plan() if e["run"]["backbone"] == "vit_mae"]
    assert sorted((e["run"]["task"], e["adds"]["pretrain_seed"]) for e in mae) == [
        (task, seed) for task in ("cls", "det", "seg") for seed in (0, 1)]
    assert len({e["output_dir"] for e in mae}) == len(mae)


def test_every_trained_model_is_evaluated_on_the_heldout_scenes(tmp_path):
    demo = Demo(DemoOptions(output_dir=tmp_path, seeds=[0, 1], also=["resnet50_fpn"]))
    plan = demo.plan()
    heldout = demo.heldout_plan(plan)
    trained = [e for e in plan if e["run"]["task"] in ("det", "seg")]
    assert len(heldout) == len(trained) == 2 * 2 * 3
    assert len({e["output_dir"] for e in plan + heldout}) == len(plan) + len(heldout)
    data = demo.data
    for source, entry in zip(trained, heldout, strict=True):
        run, command = entry["run"], entry["command"]
        assert run == {**source["run"], "split": "heldout", "trained_in": source["output_dir"]}
        assert Path(entry["output_dir"]).parent.name == f"{run['task']}_heldout"
        if run["task"] == "det":
            assert command[1].endswith("tools/train_det.py") and "--eval-only" in command
            assert f"train.init_checkpoint='{source['output_dir']}/model_final.pth'" in command
            coco = data / "coco"
            assert f"dataloader.test.dataset.json_file='{coco}/annotations/instances_heldout.json'" in command
            assert f"dataloader.test.dataset.image_root='{coco}/heldout'" in command
            assert f"train.output_dir='{entry['output_dir']}'" in command
        else:
            assert command[1].endswith("tools/test_seg.py")
            assert command[3] == f"{source['output_dir']}/iter_{demo.recipe.seg_iters}.pth"
            assert command[4:6] == ["--work-dir", entry["output_dir"]]
            assert "test_dataloader.dataset.data_prefix.img_path=images/heldout" in command
        # the same model as the trained run: its backbone, pretrained checkpoint and seed
        assert [a for a in command if "backbone" in a] == [a for a in source["command"] if "backbone" in a]


def test_more_backbones_join_detection_and_segmentation(tmp_path):
    plan = plan_of(tmp_path, seeds=[0], also=["vit_supervised", "resnet50_fpn", "timm:convnext_atto"])
    dense = {(e["run"]["task"], e["run"]["backbone"]): e for e in plan if e["run"]["task"] != "cls"}
    assert set(dense) == {(t, b) for t in ("det", "seg") for b in
                          ("vit_mae", "vit_random", "vit_supervised", "resnet50_fpn", "timm:convnext_atto")}
    assert dense["det", "vit_supervised"]["run"]["checkpoint"].endswith("supervised/backbone.pth")
    assert "arch" not in dense["seg", "resnet50_fpn"]["run"]["backbone_kwargs"]
    assert "model.backbone.options=None" in dense["seg", "resnet50_fpn"]["command"]
    assert "model.backbone.options=null" in dense["det", "resnet50_fpn"]["command"]
    with pytest.raises(ValueError, match="no_such_backbone"):
        DemoOptions(output_dir=tmp_path, also=["no_such_backbone"])


def test_an_interrupted_pretraining_step_continues_when_the_demo_runs_again(tmp_path, capfd):
    """A demo stopped inside its pretraining step (here: after the last checkpoint, before the
    step's `.done` marker) continues that run when started again: the step passes --resume, so the
    folder is not refused as another run's and nothing is trained twice."""
    from mae_core.checkpoint import load_checkpoint_file

    demo = Demo(DemoOptions(output_dir=tmp_path, quick=True))
    demo.build_data()
    demo.pretrain()
    folder = demo.pretrain_dir(demo.main_pretraining)
    trained = load_checkpoint_file(folder / "last.pth")
    (folder / ".done").unlink()
    capfd.readouterr()
    demo.pretrain()
    rerun = capfd.readouterr()
    assert (folder / ".done").is_file(), rerun.out + rerun.err
    assert "starting a fresh run" not in rerun.out + rerun.err
    again = load_checkpoint_file(folder / "last.pth")
    assert again["iteration"] == trained["iteration"] > 0
    assert all(again["model"][k].equal(v) for k, v in trained["model"].items())


def test_mask_ratio_sweep_probes_each_pretraining(tmp_path):
    plan = plan_of(tmp_path, mask_ratio_sweep=True, skip=["det", "seg"])
    ratios = sorted({e["run"].get("mask_ratio") for e in plan if e["run"]["backbone"] == "vit_mae"})
    assert ratios == [0.25, 0.5, 0.75, 0.9]
    assert all(e["run"]["task"] == "cls" for e in plan)
    with pytest.raises(ValueError, match="sweep"):
        DemoOptions(output_dir=tmp_path, mask_ratio_sweep=True, mask_ratio=0.6)


@pytest.mark.slow
def test_detection_config_builds_mask_rcnn_with_the_mae_backbone(tmp_path):
    import torch
    from detectron2.config import LazyConfig, instantiate

    from mae_core.mae import create_mae

    checkpoint = tmp_path / "last.pth"
    torch.save({"model": create_mae("vit_toy_patch4", img_size=64).state_dict()}, checkpoint)
    overrides = detection_overrides("vit_mae", str(checkpoint), tmp_path / "data", tmp_path / "out", seed=3,
                                    iters=4)
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(DET_CONFIG)), overrides)
    assert cfg.train.seed == 3 and cfg.train.max_iter == 4 and cfg.train.output_dir == str(tmp_path / "out")
    assert cfg.dataloader.train.mapper.instance_mask_format == "bitmask"
    assert cfg.dataloader.test.dataset.image_root == str(tmp_path / "data/coco/val")
    held = detection_overrides("vit_mae", str(checkpoint), tmp_path / "data", tmp_path / "out", seed=3,
                               iters=4, test_split="heldout")
    held = LazyConfig.apply_overrides(LazyConfig.load(str(DET_CONFIG)), held)
    coco = tmp_path / "data/coco"
    assert held.dataloader.test.dataset.json_file == str(coco / "annotations/instances_heldout.json")
    assert held.dataloader.train.dataset.image_root == str(coco / "train")
    # The run record's backbone (measured by the report) is the one the config builds.
    recipe = Recipe()
    assert plain(cfg.model.backbone.options) == recipe.vit_options()
    assert cfg.model.backbone.out_channels == PYRAMID_CHANNELS
    assert cfg.dataloader.train.mapper.augmentations.image_size == recipe.data.scene_size
    model = instantiate(cfg.model)
    assert model.roi_heads.num_classes == 10
    # The light heads the demo's iteration budget relies on: one fc box head, a 1-conv mask head.
    assert len(model.roi_heads.box_head.conv_norm_relus) == 0
    assert len(model.roi_heads.mask_head.conv_norm_relus) == 1
    assert {k: v.stride for k, v in model.backbone.output_shape().items()} == {
        "p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    state = torch.load(checkpoint, weights_only=True)["model"]
    torch.testing.assert_close(model.backbone.net.blocks[1].mlp.fc1.weight, state["blocks.1.mlp.fc1.weight"])


def test_segmentation_config_builds_upernet(tmp_path):
    import torch
    from mmengine.config import Config, DictAction
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import segmentation.catalogue  # noqa: F401

    register_all_modules(init_default_scope=True)
    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    overrides = segmentation_overrides("vit_random", None, tmp_path / "data", seed=2, iters=4)
    cfg = Config.fromfile(str(SEG_CONFIG))
    cfg.merge_from_dict(parser.parse_args(["--cfg-options", *overrides]).cfg_options)
    assert cfg.model.neck is None and cfg.randomness.seed == 2 and cfg.train_cfg.max_iters == 4
    assert [(s.begin, s.end) for s in cfg.param_scheduler] == [(0, 1), (1, 4)]
    assert cfg.test_dataloader.dataset.data_root == str(Path(tmp_path / "data/ade"))
    assert cfg.train_dataloader.dataset.img_suffix == ".png"
    assert cfg.test_dataloader.dataset.data_prefix.img_path == "images/validation"
    held = Config.fromfile(str(SEG_CONFIG))
    options = segmentation_overrides("vit_random", None, tmp_path / "data", 2, 4, test_split="heldout")
    held.merge_from_dict(parser.parse_args(["--cfg-options", *options]).cfg_options)
    assert dict(held.test_dataloader.dataset.data_prefix) == {"img_path": "images/heldout",
                                                             "seg_map_path": "annotations/heldout"}
    assert held.val_dataloader.dataset.data_prefix.img_path == "images/validation"
    recipe = Recipe()
    size = recipe.data.image_size  # the scenes resized to the pretraining size, in both splits
    assert plain(cfg.model.backbone.options) == {**recipe.vit_options(), "img_size": size}
    assert cfg.model.backbone.out_channels == PYRAMID_CHANNELS
    resizes = [[tuple(t.scale) for t in loader.dataset.pipeline if t.type == "Resize"]
               for loader in (cfg.train_dataloader, cfg.val_dataloader)]
    assert resizes == [[(size, size)]] * 2 and tuple(cfg.model.data_preprocessor.size) == (size, size)
    # What the demo records of a segmentation run (the report's FLOPs and throughput) is what it runs.
    entry = Demo(DemoOptions(output_dir=tmp_path / "demo")).dense_entry("seg", "vit_random", seed=2)
    assert entry["run"]["img_size"] == size and entry["run"]["batch_size"] == cfg.train_dataloader.batch_size
    options = {"out_channels": PYRAMID_CHANNELS, **plain(cfg.model.backbone.options)}
    assert entry["run"]["backbone_kwargs"] == options
    model = MODELS.build(cfg.model)
    assert model.backbone.strides == (4, 8, 16, 32)
    assert model.decode_head.num_classes == 11
    # A background pixel pulls on the logits with a tenth of an item pixel's force (see the config).
    labels = torch.tensor([[[0, 3]]])  # one background pixel, one item pixel
    for loss in (model.decode_head.loss_decode, model.auxiliary_head.loss_decode):
        logits = torch.zeros(1, 11, 1, 2, requires_grad=True)
        loss(logits, labels).backward()
        force = logits.grad[0, :, 0].norm(dim=0)
        assert (force[0] / force[1]).item() == pytest.approx(0.1)
