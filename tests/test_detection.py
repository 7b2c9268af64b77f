"""Detectron2 glue: the backbone against Detectron2's own ViTDet, layer-decay groups under
Detectron2's scheduler, configs, COCO data checks, and the train / evaluate / resume / infer tools."""

import json
import math
import os
import subprocess
import sys
from collections import Counter
from functools import partial
from pathlib import Path

import helpers_tools
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import SimpleFeaturePyramid, ViT
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.solver import LRMultiplier
from detectron2.structures import ImageList
from helpers_coco import make_coco, to_sixteen_bit_grey
from torch import nn

from detection.backbone import ViTDetBackbone, from_detectron2_vitdet, to_detectron2_vitdet
from detection.data import (
    CategoryMismatchError,
    CocoDatasetError,
    ScaleAwareDatasetMapper,
    categories,
    check_categories,
    check_coco_json,
    coco_dataset,
)
from detection.engine import AtomicCheckpointer, build_optimizer
from detection.optim import step_lr_schedule
from detection.overrides import load_lazy_config
from mae_core.backbone import ViTBackbone
from mae_core.checkpoint import CheckpointError, load_pretrained, save_checkpoint
from mae_core.data import ImageReadError
from mae_core.mae import create_mae

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "detection"
TINY_CONFIG = CONFIGS / "mask_rcnn_vit_tiny_cpu.py"


# --- The backbone against Detectron2's ViT + SimpleFeaturePyramid ----------------------------------


def test_backbone_and_pyramid_equal_detectron2_vitdet_given_the_same_weights():
    # Windowed blocks 0, 2 and global blocks 1, 3, relative positions on, position table
    # pretrained on another grid, a non-square input whose grid is not a multiple of the window.
    dim, depth, heads, patch, img, window = 64, 4, 4, 16, 128, 3
    theirs = SimpleFeaturePyramid(
        ViT(
            img_size=img,
            patch_size=patch,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            window_size=window,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            window_block_indexes=[0, 2],
            use_rel_pos=True,
            pretrain_img_size=64,
        ),
        in_feature="last_feat",
        out_channels=32,
        scale_factors=(4.0, 2.0, 1.0, 0.5),
        top_block=LastLevelMaxPool(),
        norm="LN",
    ).eval()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            p.normal_(0, 0.2 if "rel_pos" in name or "norm" in name else 0.1)
    ours = ViTDetBackbone(
        ViTBackbone(
            img_size=img,
            pretrain_img_size=64,
            patch_size=patch,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            window_size=window,
            global_blocks=(1, 3),
            use_rel_pos=True,
        ),
        out_channels=32,
    ).eval()
    ours.load_state_dict(from_detectron2_vitdet(theirs.state_dict()), strict=True)
    assert to_detectron2_vitdet(ours.state_dict()).keys() == theirs.state_dict().keys()

    x = torch.randn(2, 3, img, img - 16)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert list(got) == list(expected) == ["p2", "p3", "p4", "p5", "p6"]
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-4, rtol=1e-4, msg=name)
    assert {k: (s.channels, s.stride) for k, s in ours.output_shape().items()} == {
        k: (s.channels, s.stride) for k, s in theirs.output_shape().items()
    }


def test_backbone_padding_constraints_give_square_inputs():
    backbone = ViTDetBackbone(
        ViTBackbone(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2),
        out_channels=16,
        square_pad=128,
    )
    assert backbone.size_divisibility == 32
    assert backbone.padding_constraints == {"size_divisibility": 32, "square_size": 128}
    images = ImageList.from_tensors(
        [torch.zeros(3, 70, 100), torch.zeros(3, 90, 50)],
        backbone.size_divisibility,
        padding_constraints=backbone.padding_constraints,
    )
    assert images.tensor.shape == (2, 3, 128, 128)


# --- Optimizer groups and schedule ------------------------------------------------------------------


def tiny_config(*overrides):
    return LazyConfig.apply_overrides(LazyConfig.load(str(TINY_CONFIG)), list(overrides))


def test_layer_decay_groups_under_detectron2_scheduler():
    cfg = tiny_config("optimizer.params.layer_decay=0.5", "train.max_iter=100")
    model = instantiate(cfg.model)
    optimizer = build_optimizer(model, cfg)
    scheduler = LRMultiplier(optimizer, instantiate(cfg.lr_multiplier), max_iter=100)
    for _ in range(30):  # past warmup
        optimizer.step()
        scheduler.step()
    multiplier = instantiate(cfg.lr_multiplier)(30 / 100)
    assert 0.5 < multiplier <= 1.0
    base_lr, depth = cfg.optimizer.lr, 4

    def expected_layer(name):
        if name.startswith(("backbone.net.patch_embed", "backbone.net.pos_embed")):
            return 0
        if name.startswith("backbone.net.blocks."):
            return int(name.split(".")[3]) + 1
        return depth + 1  # pyramid, RPN, ROI heads

    seen = {}
    for group in optimizer.param_groups:
        for name in group["param_names"]:
            scale = 0.5 ** (depth + 1 - expected_layer(name))
            assert group["lr"] == pytest.approx(base_lr * multiplier * scale, rel=1e-6), name
            seen[name] = group["weight_decay"]
    assert seen.keys() == {n for n, p in model.named_parameters() if p.requires_grad}
    no_decay = [
        n for n in seen if n.endswith((".bias", "pos_embed", "rel_pos_h", "rel_pos_w")) or ".norm" in n
    ]
    assert {
        "backbone.net.pos_embed",
        "backbone.net.blocks.1.attn.rel_pos_h",
        "backbone.net.blocks.0.norm1.weight",
        "backbone.pyramid.stages.p2.4.norm.weight",
        "roi_heads.box_head.conv1.norm.weight",
    } <= set(no_decay)
    assert all(seen[n] == 0.0 for n in no_decay)
    decayed = [
        "backbone.net.blocks.0.attn.qkv.weight",
        "backbone.net.patch_embed.proj.weight",
        "backbone.pyramid.stages.p3.0.weight",
        "roi_heads.box_head.conv1.weight",
    ]
    assert all(seen[n] == pytest.approx(0.1) for n in decayed)


def test_step_schedule_keeps_vitdet_shape_at_any_length():
    sched = step_lr_schedule(max_iter=1000, warmup_iters=250)
    assert sched(0.0) == pytest.approx(0.001)
    assert sched(0.1) == pytest.approx(0.001 + 0.999 * 0.4)
    assert sched(0.5) == pytest.approx(1.0)
    assert sched(0.88) == pytest.approx(1.0) and sched(0.9) == pytest.approx(0.1)
    assert sched(0.97) == pytest.approx(0.01)
    # Runs shorter than the schedule's milestones (tests) keep those that fall inside.
    short = step_lr_schedule(max_iter=10, warmup_iters=0)  # milestones 9 and 10 -> only 9
    assert (short(0.0), short(0.85), short(0.9), short(0.99)) == pytest.approx((1.0, 1.0, 0.1, 0.1))
    for tiny in (1, 2, 3):
        assert step_lr_schedule(max_iter=tiny, warmup_iters=0)(0.0) == pytest.approx(1.0)


# --- Configs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, arch, drop_path, layer_decay",
    [
        ("base", "vit_base_patch16", 0.1, 0.7),
        ("large", "vit_large_patch16", 0.4, 0.8),
        ("huge", "vit_huge_patch14", 0.5, 0.9),
    ],
)
def test_paper_configs(name, arch, drop_path, layer_decay):
    cfg = LazyConfig.load(str(CONFIGS / f"mask_rcnn_vit_{name}_100ep.py"))
    net = cfg.model.backbone.net
    assert (net.arch, net.drop_path_rate, net.vitdet_windows, net.use_rel_pos) == (
        arch,
        drop_path,
        True,
        True,
    )
    assert net.get("patch_size", 16) == 16
    assert cfg.optimizer.params.layer_decay == layer_decay
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (1e-4, 0.1)
    assert cfg.train.max_iter == 184375 and cfg.dataloader.train.total_batch_size == 64
    assert cfg.train.amp.enabled
    assert cfg.dataloader.train.mapper.augmentations.image_size == 1024
    assert (
        cfg.dataloader.train.mapper.augmentations.min_scale,
        cfg.dataloader.train.mapper.augmentations.max_scale,
    ) == (0.1, 2.0)
    assert cfg.model.backbone.square_pad == 1024
    heads = cfg.model.roi_heads
    assert heads.box_head.conv_norm == heads.mask_head.conv_norm == "LN"
    assert list(heads.box_head.conv_dims) == [256] * 4 and list(heads.box_head.fc_dims) == [1024]
    assert list(cfg.model.proposal_generator.head.conv_dims) == [-1, -1]
    schedule = instantiate(cfg.lr_multiplier)
    assert schedule(163000 / 184375) == pytest.approx(1.0) and schedule(170000 / 184375) == pytest.approx(0.1)


def test_huge_config_loads_a_patch14_mae_checkpoint_through_the_14_to_16_conversion():
    # ViT-H's layout at a width and depth that fit a test.
    cfg = LazyConfig.load(str(CONFIGS / "mask_rcnn_vit_huge_100ep.py"))
    cfg.model.backbone.net.update(
        embed_dim=64, depth=4, num_heads=2, global_blocks=(1, 3), img_size=128, window_size=4
    )
    net = instantiate(cfg.model.backbone.net)
    mae = create_mae(
        "vit_huge_patch14",
        embed_dim=64,
        depth=4,
        num_heads=2,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    report = load_pretrained(net, mae.state_dict())
    assert report.encoder_problems == [], str(report)
    resized = {key: (old, new) for key, old, new in report.resized}
    assert resized["patch_embed.proj.weight"] == ((64, 3, 14, 14), (64, 3, 16, 16))
    assert resized["pos_embed"] == ((1, 1 + 16 * 16, 64), (1, 1 + 14 * 14, 64))
    torch.testing.assert_close(net.blocks[2].mlp.fc1.weight, mae.blocks[2].mlp.fc1.weight)


# --- COCO data --------------------------------------------------------------------------------------


@pytest.fixture
def coco(tmp_path):
    json_file, image_root = make_coco(tmp_path, "val", 3, size=(64, 80), num_empty=1)
    return json_file, image_root, json.loads(json_file.read_text())


def write(coco_dict, path):
    path.write_text(json.dumps(coco_dict))
    return path


def test_coco_json_naming_a_missing_image(coco, tmp_path):
    json_file, image_root, data = coco
    data["images"][1]["file_name"] = "nowhere.png"
    with pytest.raises(CocoDatasetError, match=r"image id 2 names 'nowhere.png'.*does not exist"):
        check_coco_json(write(data, tmp_path / "bad.json"), image_root)


def test_coco_polygon_with_fewer_than_three_points(coco, tmp_path):
    json_file, image_root, data = coco
    data["annotations"][0]["segmentation"] = [[1.0, 1.0, 5.0, 5.0]]
    with pytest.raises(
        CocoDatasetError, match=r"annotation id 1 \(image id 1, val_000.png\) has a polygon with 4 coord"
    ):
        check_coco_json(write(data, tmp_path / "bad.json"), image_root)


def test_coco_annotation_with_unknown_category(coco, tmp_path):
    json_file, image_root, data = coco
    data["annotations"][-1]["category_id"] = 7
    ann = data["annotations"][-1]
    with pytest.raises(
        CocoDatasetError, match=rf"annotation id {ann['id']} .* category_id 7.*known ids: \[1, 2\]"
    ):
        check_coco_json(write(data, tmp_path / "bad.json"), image_root)


def test_coco_errors_surface_when_a_registered_dataset_loads(coco, tmp_path):
    json_file, image_root, data = coco
    data["images"][0]["file_name"] = "gone.png"
    with pytest.raises(CocoDatasetError, match="gone.png"):
        coco_dataset(f"bad_{tmp_path.name}", str(write(data, tmp_path / "bad.json")), str(image_root))


def test_image_without_annotations_kept_for_evaluation_dropped_for_training(coco, tmp_path):
    json_file, image_root, data = coco
    empty_id = data["images"][-1]["id"]
    assert not [a for a in data["annotations"] if a["image_id"] == empty_id]
    evaluation = coco_dataset(f"eval_{tmp_path.name}", str(json_file), str(image_root), filter_empty=False)
    training = coco_dataset(f"eval_{tmp_path.name}", str(json_file), str(image_root), filter_empty=True)
    assert [d["image_id"] for d in evaluation] == [1, 2, 3]
    assert [d["image_id"] for d in training] == [1, 2]
    assert categories(f"eval_{tmp_path.name}", json_file) == [(1, "square"), (2, "disc")]
    with pytest.raises(ValueError, match="already registered"):
        coco_dataset(f"eval_{tmp_path.name}", str(tmp_path / "other.json"), str(image_root))


# --- The data contract: one category list, one image reader ----------------------------------------


def split_overrides(split, json_file, image_root, name):
    return [f"dataloader.{split}.dataset.name={name}", f"dataloader.{split}.dataset.json_file={json_file}",
            f"dataloader.{split}.dataset.image_root={image_root}"]


def categories_config(tmp_path, edit_train=None, edit_val=None, *overrides):
    """The tiny config on a generated set (2 categories) whose jsons `edit_*` may change first."""
    paths = {}
    for split, n, edit in (("train", 2, edit_train), ("val", 1, edit_val)):
        json_file, images = make_coco(tmp_path, split, n, seed=len(split))
        if edit is not None:
            data = json.loads(json_file.read_text())
            edit(data)
            write(data, json_file)
        paths[split] = (json_file, images)
    return tiny_config(*split_overrides("train", *paths["train"], f"cats_train_{tmp_path.name}"),
                       *split_overrides("test", *paths["val"], f"cats_val_{tmp_path.name}"), *overrides)


def add_triangle(data):
    data["categories"].append({"id": 3, "name": "triangle"})
    data["annotations"][0]["category_id"] = 3


def test_categories_that_agree_with_the_model_give_the_class_names(tmp_path):
    assert check_categories(categories_config(tmp_path), training=True) == ["square", "disc"]


def test_more_training_categories_than_the_model_has_classes_is_refused(tmp_path):
    cfg = categories_config(tmp_path, add_triangle, add_triangle)
    with pytest.raises(CategoryMismatchError, match=r"model.roi_heads.num_classes is 2, but the training set "
                       r".*train.json has 3 categories \(1: square, 2: disc, 3: triangle\); set "
                       r"model.roi_heads.num_classes=3"):
        check_categories(cfg, training=True)
    check_categories(categories_config(tmp_path / "b", add_triangle, add_triangle,
                                       "model.roi_heads.num_classes=3"), training=True)


def test_evaluation_checks_the_test_sets_categories_against_the_model(tmp_path):
    cfg = categories_config(tmp_path, None, add_triangle)
    with pytest.raises(CategoryMismatchError, match=r"the test set .*val.json has 3 categories"):
        check_categories(cfg, training=False)


def swap_names(data):
    data["categories"] = [{"id": 1, "name": "disc"}, {"id": 2, "name": "square"}]


def shift_ids(data):
    for item in data["categories"]:
        item["id"] += 10
    for ann in data["annotations"]:
        ann["category_id"] += 10


def squares_only(data):
    data["categories"] = data["categories"][:1]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] == 1]


@pytest.mark.parametrize("edit, names", [
    (swap_names, "class 0 .* is id 1 'square' in training and id 1 'disc' in the test set"),
    (shift_ids, "class 0 .* is id 1 'square' in training and id 11 'square' in the test set"),
    (squares_only, "class 1 .* is id 2 'disc' in training and absent in the test set"),
])
def test_a_test_set_whose_categories_differ_from_training_is_refused(tmp_path, edit, names):
    cfg = categories_config(tmp_path, None, edit)
    with pytest.raises(CategoryMismatchError, match=names):
        check_categories(cfg, training=True)


def test_the_registered_coco_sets_categories_match_the_base_config():
    """Detectron2's coco_2017_* metadata (80 thing classes under COCO's sparse ids, no files read)."""
    cfg = load_lazy_config(str(REPO / "configs/detection/mask_rcnn_vit_base_100ep.py"), [])
    names = check_categories(cfg, training=True)
    assert len(names) == 80 and names[0] == "person" and names[-1] == "toothbrush"
    assert categories("coco_2017_val")[-1] == (90, "toothbrush")


def test_custom_data_on_the_base_config_with_plain_overrides(tmp_path):
    """`dataloader.*.dataset.{name,json_file,image_root}` exist on the ViT-B config (no `+`) and land
    in the dataset it builds; the same json under Detectron2's own name is refused naming the key."""
    train_json, images = make_coco(tmp_path, "train", 2)
    val_json, _ = make_coco(tmp_path, "val", 1, seed=1)
    base = str(REPO / "configs/detection/mask_rcnn_vit_base_100ep.py")
    cfg = load_lazy_config(base, ["model.roi_heads.num_classes=2",
                                  *split_overrides("train", train_json, images, f"mine_{tmp_path.name}"),
                                  *split_overrides("test", val_json, images, f"mine_val_{tmp_path.name}")])
    assert check_categories(cfg, training=True) == ["square", "disc"]
    dicts = instantiate(cfg.dataloader.train.dataset)
    assert [Path(d["file_name"]) for d in dicts] == [images / "train_000.png", images / "train_001.png"]
    unnamed = load_lazy_config(base, [f"dataloader.test.dataset.json_file={val_json}",
                                      f"dataloader.test.dataset.image_root={images}"])
    with pytest.raises(CocoDatasetError, match=r"'coco_2017_val' is already registered.*test.dataset.name"):
        instantiate(unnamed.dataloader.test.dataset)


def test_mapper_reads_16_bit_images_at_their_scale(tmp_path):
    """A real 16-bit PNG: Detectron2's DatasetMapper turns every pixel white (PIL's convert); the
    toolkit's mapper keeps the picture, its mean within one level of the 8-bit picture's."""
    from detectron2.data import DatasetMapper

    json_file, images = make_coco(tmp_path, "val", 1)
    record = coco_dataset(f"sixteen_{tmp_path.name}", str(json_file), str(images), filter_empty=False)[0]
    mean8 = to_sixteen_bit_grey(record["file_name"])
    ours = ScaleAwareDatasetMapper(is_train=False, augmentations=[], image_format="BGR")(record)["image"]
    assert ours.dtype == torch.float32 and ours.shape == (3, 128, 128)
    assert abs(ours.mean().item() - mean8) < 1.0, (ours.mean().item(), mean8)
    upstream = DatasetMapper(is_train=False, augmentations=[], image_format="BGR")(record)["image"]
    assert upstream.float().mean().item() == 255.0  # the bug this mapper exists for


def test_mapper_gives_8_bit_images_exactly_as_detectron2_with_exif_orientation(tmp_path):
    """8-bit RGB: the same uint8 tensor as Detectron2's mapper, for a JPEG stored sideways with an
    EXIF orientation (both turn it upright), and the same transformed annotations."""
    from detectron2.data import DatasetMapper
    from PIL import Image

    json_file, images = make_coco(tmp_path, "train", 1, size=(96, 128))
    record = coco_dataset(f"exif_{tmp_path.name}", str(json_file), str(images))[0]
    upright = Image.open(record["file_name"])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; turn 90 degrees clockwise to view
    jpeg = images / "train_000.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(jpeg, exif=exif, quality=95)
    record["file_name"] = str(jpeg)
    kwargs = dict(is_train=True, augmentations=[], image_format="RGB", use_instance_mask=True)
    ours, upstream = ScaleAwareDatasetMapper(**kwargs)(record), DatasetMapper(**kwargs)(record)
    assert ours["image"].dtype == torch.uint8 and ours["image"].shape == (3, 96, 128)
    assert torch.equal(ours["image"], upstream["image"])
    assert torch.equal(ours["instances"].gt_boxes.tensor, upstream["instances"].gt_boxes.tensor)


def test_mapper_refuses_a_32_bit_image_by_name(tmp_path):
    import numpy as np
    from PIL import Image

    json_file, images = make_coco(tmp_path, "val", 1)
    record = coco_dataset(f"f32_{tmp_path.name}", str(json_file), str(images), filter_empty=False)[0]
    depth = images / "depth.tif"
    Image.fromarray(np.linspace(0, 40, 128 * 128, dtype=np.float32).reshape(128, 128), "F").save(depth)
    record["file_name"] = str(depth)
    with pytest.raises(ImageReadError, match=rf"{depth}: mode 'F' \(32-bit float grey\) has no standard"):
        ScaleAwareDatasetMapper(is_train=False, augmentations=[], image_format="RGB")(record)


# --- The command-line tools, end to end (tiny model, CPU) -----------------------------------------


def run_tool(script, *args, timeout=600):
    proc = helpers_tools.run_tool(script, *args, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-6000:]}"
    return proc.stdout


def test_train_det_help_shows_the_toolkits_usage_with_detectron2s_flags():
    """LazyConfig `key=value` examples, not Detectron2's yacs ones (`MODEL.WEIGHTS ...`), which
    the key check would refuse; Detectron2's launcher flags and the toolkit's own are all there."""
    out = run_tool("train_det.py", "--help")
    assert "train.mae_checkpoint=" in out and "train.output_dir=" in out and "MODEL.WEIGHTS" not in out
    for flag in ("--num-gpus", "--num-machines", "--machine-rank", "--dist-url", "--resume", "--eval-only",
                 "--overwrite", "--allow-pickle"):
        assert flag in out, flag


def data_overrides(train_json, val_json, image_root):
    return [
        f"dataloader.train.dataset.json_file={train_json}",
        f"dataloader.train.dataset.image_root={image_root}",
        f"dataloader.test.dataset.json_file={val_json}",
        f"dataloader.test.dataset.image_root={image_root}",
        # An untrained model scores below Detectron2's 0.05 default: keep every box so AP is defined.
        "model.roi_heads.box_predictor.test_score_thresh=0.0",
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """4 iterations of the tiny config, initialised from a toolkit MAE checkpoint."""
    root = tmp_path_factory.mktemp("det")
    train_json, image_root = make_coco(root, "train", 6)
    val_json, _ = make_coco(root, "val", 3, seed=1, num_empty=1)
    mae = create_mae(
        "vit_base_patch16",
        embed_dim=96,
        depth=4,
        num_heads=3,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    mae_path = save_checkpoint({"model": mae.state_dict()}, root / "mae.pth")
    overrides = data_overrides(train_json, val_json, image_root)
    out = root / "train"
    log = run_tool(
        "train_det.py",
        "--config-file",
        TINY_CONFIG,
        *overrides,
        f"train.output_dir={out}",
        "train.max_iter=4",
        "train.eval_period=4",
        "train.log_period=2",
        "train.checkpointer.period=2",
        f"train.mae_checkpoint={mae_path}",
    )
    return {
        "root": root,
        "out": out,
        "log": log,
        "overrides": overrides,
        "image_root": image_root,
        "mae": mae,
    }


def read_ap(path):
    # Strict JSON: metrics COCO cannot compute (APl here: no large objects) are null, not NaN.
    results = json.loads(Path(path).read_text(), parse_constant=lambda c: pytest.fail(f"{path} holds {c}"))
    assert results["bbox"]["APl"] is None
    return {task: results[task]["AP"] for task in ("bbox", "segm")}, results["iteration"]


def training_iterations(out_dir):
    """Iterations logged with a training loss in metrics.json (evaluation lines have none)."""
    lines = [json.loads(line) for line in (out_dir / "metrics.json").read_text().splitlines()]
    return [line["iteration"] for line in lines if "total_loss" in line]


@pytest.mark.slow
def test_train_reports_ap_eval_only_reproduces_it_and_resume_continues(trained):
    out, log = trained["out"], trained["log"]
    assert "Backbone initialised from MAE checkpoint" in log
    ckpt = torch.load(out / "model_final.pth", weights_only=True)
    torch.testing.assert_close(  # the MAE weights were loaded before training moved them a little
        ckpt["model"]["backbone.net.blocks.0.attn.qkv.weight"],
        trained["mae"].blocks[0].attn.qkv.weight,
        atol=1e-3,
        rtol=0,
    )
    ap, iteration = read_ap(out / "eval_results.json")
    assert iteration == 4 and all(math.isfinite(v) and 0 <= v <= 100 for v in ap.values()), ap
    assert "Task: segm" in log and "Task: bbox" in log
    assert (out / "metrics.json").is_file() and list(out.glob("events.out.tfevents.*"))
    assert {"model_0000001.pth", "model_final.pth", "last_checkpoint"} <= {p.name for p in out.iterdir()}

    eval_out = trained["root"] / "eval"
    run_tool(
        "train_det.py",
        "--config-file",
        TINY_CONFIG,
        "--eval-only",
        *trained["overrides"],
        f"train.output_dir={eval_out}",
        f"train.init_checkpoint={out / 'model_final.pth'}",
    )
    again, iteration = read_ap(eval_out / "eval_results.json")
    assert iteration == 4
    assert again == pytest.approx(ap, abs=1e-6)
    # The runs' records for tools/compare.py: the evaluation is the trained run's setting, on val.
    record = json.loads((out / "run.json").read_text())
    assert record["task"] == "det" and record["checkpoint"] == str(trained["root"] / "mae.pth")
    assert record["backbone"] == "ViTDetBackbone(vit_base_patch16, embed_dim=96, depth=4, num_heads=3)"
    assert (record["seed"], record["img_size"], record["batch_size"], record["split"]) == (-1, 128, 2, "val")
    evaluation = json.loads((eval_out / "run.json").read_text())
    assert evaluation == {**record, "weights": str(out / "model_final.pth"), "trained_in": str(out)}

    log = run_tool(
        "train_det.py",
        "--config-file",
        TINY_CONFIG,
        "--resume",
        *trained["overrides"],
        f"train.output_dir={out}",
        "train.max_iter=6",
        "train.eval_period=6",
        "train.log_period=1",
        "train.checkpointer.period=100",
    )
    assert "Starting training from iteration 4" in log
    assert training_iterations(out)[-3:] == [3, 4, 5]
    assert read_ap(out / "eval_results.json")[1] == 6


@pytest.mark.slow
def test_infer_writes_overlays_for_files_and_folders(trained, tmp_path):
    images = sorted(trained["image_root"].glob("val_*.png"))
    run_tool(
        "infer_det.py",
        "--config-file",
        TINY_CONFIG,
        "--weights",
        trained["out"] / "model_final.pth",
        "--input",
        images[0],
        trained["image_root"],
        "--output-dir",
        tmp_path / "overlays",
        "--confidence",
        "0.5",
        *trained["overrides"][2:4],
    )
    written = sorted(p.name for p in (tmp_path / "overlays").iterdir())
    assert written == sorted(p.stem + ".png" for p in trained["image_root"].glob("*.png"))
    from PIL import Image

    with Image.open(tmp_path / "overlays" / images[0].name) as overlay:
        assert overlay.size == (128, 128)


# The tiny config made deterministic for the comparison below: no random augmentation (the
# evaluation resize only), every anchor and proposal kept (no random subsampling), and only the
# ground-truth boxes positive for the box and mask heads (IoU >= 0.99), so that with the same
# number of objects in every image each process normalises its losses by the same counts and the
# mean of the processes' losses is the loss of the whole batch.
DETERMINISTIC_CONFIG = f"""
from detectron2.config import LazyCall as L, LazyConfig
from detection.data import eval_augmentations
_tiny = LazyConfig.load({str(TINY_CONFIG)!r})
model, dataloader, optimizer, lr_multiplier, train = (
    _tiny[key] for key in ("model", "dataloader", "optimizer", "lr_multiplier", "train"))
dataloader.train.mapper.augmentations = L(eval_augmentations)(image_size=128)
model.proposal_generator.batch_size_per_image = 100000
model.proposal_generator.post_nms_topk = (50, 50)
model.roi_heads.batch_size_per_image = 100000
model.roi_heads.proposal_matcher.thresholds = [0.99]
"""


def logged_losses(out_dir: Path) -> list[dict]:
    """Every training record of metrics.json, its losses only (Detectron2 logs each loss averaged
    over the processes)."""
    lines = [json.loads(line) for line in (out_dir / "metrics.json").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k.startswith("loss") or k in ("iteration", "total_loss")}
            for line in lines if "total_loss" in line]


@pytest.mark.slow
def test_two_gloo_processes_give_the_losses_of_one_process_with_the_same_total_batch(tmp_path):
    """Detectron2's `launch` with --num-gpus 2 on the CPU (gloo): total batch 4 as 2 x 2 images gives,
    iteration by iteration, the losses of one process with 4 images. Detectron2's sampler deals
    rank r the positions r, r + 2, ... of one shuffled stream, so both runs see the same images in
    each step, and DDP's averaged gradient is the one-process gradient (no batch norm)."""
    train_json, image_root = make_coco(tmp_path, "train", 8, seed=4, objects=(2, 2))  # 2 in each
    val_json, _ = make_coco(tmp_path, "val", 2, seed=1)
    per_image = Counter(a["image_id"] for a in json.loads(train_json.read_text())["annotations"])
    assert sorted(per_image.values()) == [2] * 8
    config = tmp_path / "deterministic.py"
    config.write_text(DETERMINISTIC_CONFIG)
    common = [*data_overrides(train_json, val_json, image_root), "train.seed=0", "train.max_iter=3",
              "train.eval_period=3", "train.log_period=1", "train.checkpointer.period=100",
              "dataloader.train.total_batch_size=4"]
    runs = {}
    for gpus in (1, 2):
        out = tmp_path / f"gpus{gpus}"
        log = run_tool("train_det.py", "--config-file", config, "--num-gpus", gpus, *common,
                       f"train.output_dir={out}")
        assert "Starting training from iteration 0" in log
        runs[gpus] = logged_losses(out)
    assert [r["iteration"] for r in runs[2]] == [0, 1, 2]
    for one, two in zip(runs[1], runs[2], strict=True):
        assert one.keys() == two.keys() and len(one) > 5
        for key in one:
            assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-8), (one["iteration"], key)
    assert read_ap(tmp_path / "gpus2" / "eval_results.json")[1] == 3  # evaluation under 2 processes


@pytest.mark.slow
def test_evaluating_during_training_leaves_the_training_unchanged(tmp_path):
    """An evaluation draws from torch's generator (each DataLoader iterator takes a seed from it);
    the evaluation hook restores the generators, so a run that evaluates every 2 iterations logs
    the losses of one that evaluates only at its end (the ROI heads sample with that generator)."""
    train_json, image_root = make_coco(tmp_path, "train", 4, seed=4, objects=(2, 2))
    val_json, _ = make_coco(tmp_path, "val", 2, seed=1)
    common = [*data_overrides(train_json, val_json, image_root), "train.seed=0", "train.max_iter=5",
              "train.log_period=1", "train.checkpointer.period=100"]
    losses = {}
    for period in (2, 5):
        out = tmp_path / f"eval_every_{period}"
        run_tool("train_det.py", "--config-file", TINY_CONFIG, *common, f"train.eval_period={period}",
                 f"train.output_dir={out}")
        losses[period] = logged_losses(out)
    assert [r["iteration"] for r in losses[2]] == [0, 1, 2, 3, 4]
    assert losses[2] == losses[5]


def test_checkpointer_loads_detectron2_vitdet_layout_and_refuses_pickles(tmp_path):
    cfg = tiny_config()
    trained, fresh = instantiate(cfg.model), instantiate(cfg.model)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    d2_layout = to_detectron2_vitdet(trained.state_dict())
    assert any(".simfp_2." in k for k in d2_layout) and not any("pyramid" in k for k in d2_layout)
    save_checkpoint({"model": d2_layout}, tmp_path / "vitdet.pth")
    AtomicCheckpointer(fresh).load(str(tmp_path / "vitdet.pth"))
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], value, rtol=0, atol=0, msg=name)

    (tmp_path / "zoo.pkl").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match=r"zoo.pkl is a pickle.*train.allow_pickle=True"):
        AtomicCheckpointer(fresh).load(str(tmp_path / "zoo.pkl"))


def test_base_config_builds_vitdet_base_backbone():
    net = instantiate(LazyConfig.load(str(CONFIGS / "mask_rcnn_vit_base_100ep.py")).model.backbone.net)
    assert (net.embed_dim, net.depth, net.patch_size) == (768, 12, 16)
    assert [i for i, blk in enumerate(net.blocks) if blk.window_size == 0] == [2, 5, 8, 11]
    assert all(blk.window_size == 14 for i, blk in enumerate(net.blocks) if i not in (2, 5, 8, 11))
    # Relative-position tables: 2 * 64 - 1 rows for global blocks at 1024 px, 2 * 14 - 1 in windows.
    assert net.blocks[2].attn.rel_pos_h.shape[0] == 127 and net.blocks[0].attn.rel_pos_h.shape[0] == 27
    assert net.pos_embed.shape == (1, 1 + 14 * 14, 768)  # MAE's 224 px table, resampled per input
    assert net.blocks[-1].drop_path.drop_prob == pytest.approx(0.1)


def test_large_scale_jitter_mapper(tmp_path):
    json_file, image_root = make_coco(tmp_path, "train", 2, size=(96, 160))
    cfg = tiny_config()
    mapper = instantiate(cfg.dataloader.train.mapper)
    record = coco_dataset(f"lsj_{tmp_path.name}", str(json_file), str(image_root))[0]
    sizes = set()
    for _ in range(10):
        out = mapper(dict(record))
        _, h, w = out["image"].shape
        sizes.add((h, w))
        assert max(h, w) <= 128  # cropped to the 128 x 128 target, never padded here
        inst = out["instances"]
        if len(inst):
            boxes = inst.gt_boxes.tensor
            assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
            # recompute_boxes: boxes are the tight boxes of the (cropped) masks
            torch.testing.assert_close(boxes, inst.gt_masks.get_bounding_boxes().tensor)
    assert len(sizes) > 1  # random scales


@pytest.mark.slow
def test_standard_coco_layout_under_detectron2_datasets(tmp_path):
    """`$DETECTRON2_DATASETS/coco/annotations/instances_val2017.json` + `coco/val2017/` is what the
    paper configs read as `coco_2017_val` (Detectron2 registers it at import)."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    coco_root = tmp_path / "coco"
    json_file, _ = make_coco(coco_root, "val", 2, image_dir="val2017")
    data = json.loads(json_file.read_text())
    data["categories"] = [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"]]
    (coco_root / "annotations").mkdir()
    (coco_root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    script = (
        "from detection.data import coco_dataset; "
        "d = coco_dataset('coco_2017_val', filter_empty=False); "
        "print(len(d), sorted({a['category_id'] for r in d for a in r['annotations']}))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "DETECTRON2_DATASETS": str(tmp_path),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # COCO ids 1 (person) and 2 (bicycle) are contiguous ids 0 and 1.
    contiguous = sorted({a["category_id"] - 1 for a in data["annotations"]})
    assert proc.stdout.strip().splitlines()[-1] == f"2 {contiguous}"


# --- Bad input and divergence (issue 11) -----------------------------------------------------------


def test_override_of_a_missing_key_is_refused_naming_the_closest_keys():
    from detection.overrides import OverrideError, apply_overrides

    cfg = LazyConfig.load(str(TINY_CONFIG))
    with pytest.raises(OverrideError, match=r"train\.max_itr: .*closest existing keys: train\.max_iter"):
        apply_overrides(cfg, ["train.max_itr=5"])
    with pytest.raises(OverrideError, match=r"\+train\.max_iter: the config already has"):
        apply_overrides(cfg, ["+train.max_iter=5"])
    cfg = apply_overrides(cfg, ["train.max_iter=7", "+train.note=x", "++train.other=1", "optimizer.lr=0.5"])
    assert (cfg.train.max_iter, cfg.train.note, cfg.train.other, cfg.optimizer.lr) == (7, "x", 1, 0.5)


def test_train_det_takes_options_after_the_overrides():
    from detection.train import parse_args

    args = parse_args(["--config-file", "c.py", "train.max_iter=3", "--resume", "+a.b=1", "--eval-only"])
    assert (args.resume, args.eval_only, args.opts) == (True, True, ["train.max_iter=3", "+a.b=1"])


@pytest.mark.parametrize("segmentation", [[], None, {}, [[]], {"counts": "", "size": [64, 80]}])
def test_coco_annotation_without_a_mask_is_named_with_its_image(coco, tmp_path, segmentation):
    json_file, image_root, data = coco
    data["annotations"][1]["segmentation"] = segmentation
    ann = data["annotations"][1]
    image = next(img["file_name"] for img in data["images"] if img["id"] == ann["image_id"])
    with pytest.raises(CocoDatasetError, match=rf"annotation id {ann['id']} \(image id \d+, {image}\)"):
        check_coco_json(write(data, tmp_path / "bad.json"), image_root)


def test_checkpointer_never_writes_a_non_finite_state_and_strict_load_wants_every_weight(tmp_path):
    from detection.engine import NonFiniteError

    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    optimizer = torch.optim.AdamW(model.parameters())
    checkpointer = AtomicCheckpointer(model, str(tmp_path), optimizer=optimizer)
    checkpointer.save("model_0000000")
    with torch.no_grad():
        model[1].bias.fill_(float("inf"))
    with pytest.raises(NonFiniteError, match=r"not saving model_0000001\.pth: 1 of \d+ .*1\.bias.*_0000000"):
        checkpointer.save("model_0000001")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000000.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"

    save_checkpoint({"model": {"0.weight": torch.zeros(2, 2)}}, tmp_path / "part.pth")
    AtomicCheckpointer(model).load(str(tmp_path / "part.pth"))  # Detectron2's way: logged only
    with pytest.raises(CheckpointError, match=r"part\.pth does not hold the whole model.*0\.bias"):
        AtomicCheckpointer(model, strict=True).load(str(tmp_path / "part.pth"))


def test_training_state_restores_every_generator():
    import random

    import numpy as np

    from detection.hooks import TrainingState

    state = TrainingState(sampler_seed=5).state_dict()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    restored = TrainingState()
    restored.load_state_dict(state)
    assert restored.sampler_seed == 5
    got = (torch.rand(3), np.random.rand(3), random.random())
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    assert got[1].tolist() == expected[1].tolist() and got[2] == expected[2]


def test_a_non_finite_loss_with_finite_gradients_is_stopped_and_logged_naming_the_iteration(tmp_path):
    """Detectron2's own check (a `FloatingPointError`) fires when the loss is not finite but the
    gradient norm is, which `NonFiniteGuard` lets through. `run_training` names the iteration in
    the error and in the run's log.txt, as the guard's message is."""
    from detectron2.engine import SimpleTrainer
    from detectron2.utils.logger import setup_logger

    from detection.engine import NonFiniteError
    from detection.hooks import run_training

    class LossTurnsNaN(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(2))
            self.calls = 0

        def forward(self, batch):
            self.calls += 1
            offset = float("nan") if self.calls == 3 else 0.0
            return {"loss": (self.weight * batch).sum() + offset}  # the gradient stays finite

    model = LossTurnsNaN()
    trainer = SimpleTrainer(model, iter([torch.ones(2)] * 5), torch.optim.SGD(model.parameters(), lr=0.1))
    setup_logger(str(tmp_path), name="detection")
    with pytest.raises(NonFiniteError, match=r"training stopped at iteration 2: the loss is not finite"):
        run_training(trainer, 0, 5, checkpointer=None)
    assert "training stopped at iteration 2" in (tmp_path / "log.txt").read_text()


def train_det_command(*args):
    return [sys.executable, REPO / "tools" / "train_det.py", "--config-file", TINY_CONFIG, *args]


@pytest.mark.slow
def test_resume_after_kill_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    """Killed (SIGKILL) after its first checkpoint and resumed, a run ends with exactly the weights
    and optimizer state of the same run uninterrupted: the sampler continues, the generators are
    restored, the schedule and iteration come back."""
    import time

    train_json, image_root = make_coco(tmp_path, "train", 6)
    val_json, _ = make_coco(tmp_path, "val", 2, seed=1)
    common = [
        *data_overrides(train_json, val_json, image_root),
        "train.max_iter=8",
        "train.checkpointer.period=3",
        "train.eval_period=0",
        "train.log_period=1",
        "train.seed=3",
    ]
    run_tool("train_det.py", "--config-file", TINY_CONFIG, *common, f"train.output_dir={tmp_path / 'whole'}")

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(train_det_command(*common, f"train.output_dir={out}"), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (out / "last_checkpoint").exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    assert proc.wait() == -9 and not (out / "model_final.pth").exists(), "the run ended before it was killed"
    log = run_tool("train_det.py", "--config-file", TINY_CONFIG, *common, f"train.output_dir={out}",
                   "--resume")
    assert "Starting training from iteration 3" in log or "Starting training from iteration 6" in log

    whole = torch.load(tmp_path / "whole" / "model_final.pth", weights_only=True)
    resumed = torch.load(out / "model_final.pth", weights_only=True)
    assert whole["model"].keys() == resumed["model"].keys()
    for name, value in whole["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=0, atol=0, msg=name)
    states = [ckpt["trainer"]["optimizer"]["state"] for ckpt in (whole, resumed)]
    assert len(states[0]) == len(states[1]) > 0
    for a, b in zip(*(s.values() for s in states), strict=True):
        torch.testing.assert_close(b["exp_avg_sq"], a["exp_avg_sq"], rtol=0, atol=0)
