"""Label efficiency and frozen backbones (mae_core.transfer and its glue in detection/ and
segmentation/): labelled subsets nested, deterministic and the same for every backbone and seed;
a frozen run leaves the backbone bit-identical while its head trains, in both frameworks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_coco import make_coco
from helpers_seg import make_shapes_dataset

from mae_core.layer_decay import param_groups
from mae_core.transfer import SubsetError, label_subset, subset_size

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


# --- Choosing the subset ------------------------------------------------------------------------------


def test_subsets_are_nested_deterministic_and_independent_of_the_listing_order():
    ids = list(range(1000, 1400))
    small, medium, everything = (label_subset(ids, fraction=f, seed=0) for f in (0.1, 0.25, 1.0))
    assert (len(small), len(medium), everything) == (40, 100, ids)
    assert set(small) < set(medium)
    assert label_subset(reversed(ids), fraction=0.1, seed=0) == small  # order of the listing: no effect
    assert label_subset(ids, count=40, seed=0) == small  # a count is the same prefix
    other = label_subset(ids, fraction=0.1, seed=1)
    assert other != small and len(other) == 40  # the subset seed chooses the images
    assert small != ids[:40]  # a random draw, not the first ids


@pytest.mark.parametrize(
    "fraction, count, message",
    [
        (0.0, None, "(0, 1]"),
        (1.5, None, "(0, 1]"),
        (None, 0, "between 1"),
        (None, 11, "10 training images"),
        (0.5, 3, "not both"),
        (None, None, "neither"),
    ],
)
def test_a_subset_that_selects_nothing_or_too_much_is_refused(fraction, count, message):
    with pytest.raises(SubsetError, match=message.replace("(", r"\(").replace("]", r"\]")):
        subset_size(10, fraction, count)


def test_a_tiny_fraction_keeps_one_image():
    assert subset_size(10, 0.01) == 1


def test_segmentation_dataset_subsets_are_nested(tmp_path):
    from segmentation import SegFolderDataset

    root = make_shapes_dataset(tmp_path, n_train=10, n_val=1)

    def names(**subset):
        dataset = SegFolderDataset(
            data_root=str(root),
            img_suffix=".jpg",
            metainfo=dict(classes=("a", "b", "c")),
            data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"),
            **subset,
        )
        return {Path(dataset.get_data_info(i)["img_path"]).stem for i in range(len(dataset))}

    small, medium = names(label_fraction=0.2), names(label_fraction=0.5)
    assert len(small) == 2 and len(medium) == 5 and small < medium
    assert names(label_fraction=0.2) == small
    assert len(names()) == 10


def test_detection_dataset_subsets_are_nested_and_chosen_before_empty_images_are_dropped(tmp_path):
    from detection.data import coco_dataset

    json_file, images = make_coco(tmp_path, "train", 10, num_empty=3)

    def ids(filter_empty=True, **subset):
        return {
            d["image_id"]
            for d in coco_dataset(
                "subset_test_train", str(json_file), str(images), filter_empty=filter_empty, **subset
            )
        }

    every = ids(filter_empty=False, label_fraction=0.6)
    kept = ids(label_fraction=0.6)
    assert len(every) == 6 and kept <= every  # filtering drops the empty ones of the same subset
    assert ids(filter_empty=False, label_fraction=0.3) < every
    assert ids(filter_empty=False, label_fraction=0.3, subset_seed=0) == ids(
        filter_empty=False, label_count=3
    )


def test_demo_gives_every_backbone_and_seed_the_same_subset_at_a_fraction(tmp_path):
    from mae_app.demo import Demo, DemoOptions

    demo = Demo(DemoOptions(output_dir=tmp_path, label_efficiency=True, frozen=True))
    plan = demo.protocol_plan()
    assert {e["run"]["backbone"] for e in plan} == {"vit_mae", "vit_random", "vit_supervised"}
    for task in ("det", "seg"):
        for fraction in (0.1, 0.25):
            entries = [
                e for e in plan if e["run"]["task"] == task and e["run"].get("label_fraction") == fraction
            ]
            subsets = {
                tuple(a for a in e["command"] if "label_fraction" in a or "subset_seed" in a) for e in entries
            }
            assert len(entries) == 2 * 3 * 3 and len(subsets) == 1  # frozen and not, 3 backbones, 3 seeds
            assert {e["run"]["seed"] for e in entries} == {0, 1, 2}
    assert len({e["output_dir"] for e in plan}) == len(plan)
    # every fraction of the frozen protocol, the fine-tuned one below 100 % (the main runs are its 100 %)
    assert {
        (e["run"].get("label_fraction", 1.0), e["run"].get("frozen", False))
        for e in plan
    } == {(0.1, False), (0.25, False), (0.1, True), (0.25, True), (1.0, True)}
    # segmentation trains a subset for iterations x sqrt(fraction), Mask R-CNN the full schedule
    # (its AP comes after the learning-rate steps; docs/label_efficiency.md)
    assert {(e["run"]["task"], e["run"].get("label_fraction", 1.0), e["run"]["iters"]) for e in plan} == {
        ("seg", 0.1, 316), ("seg", 0.25, 500), ("seg", 1.0, 1000),
        ("det", 0.1, 500), ("det", 0.25, 500), ("det", 1.0, 500),
    }


# --- Freezing ---------------------------------------------------------------------------------------------


def test_a_frozen_backbone_stays_in_eval_mode_and_out_of_the_optimizer():
    from segmentation.backbone import MAEViT

    vit = MAEViT(arch="vit_toy_patch4", img_size=32, out_indices=(3,), drop_path_rate=0.5, freeze=True)
    head = torch.nn.Conv2d(96, 3, 1)
    model = torch.nn.ModuleDict({"backbone": vit, "head": head}).train()
    assert not vit.training and not any(m.training for m in vit.modules())
    assert head.training
    grouped = {name for group in param_groups(model, 0.05, 0.75) for name in group["param_names"]}
    assert grouped == {"head.weight", "head.bias"}
    image = torch.randn(2, 3, 32, 32)
    assert torch.equal(vit(image)[-1], vit(image)[-1])  # no drop path in a training model


def run_tool(*args) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout + proc.stderr


def split_changes(before: dict, after: dict, frozen_prefix: str) -> tuple[list[str], list[str]]:
    """Names of the tensors under `frozen_prefix` that changed, and of the others that changed."""
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    return [k for k in changed if k.startswith(frozen_prefix)], [
        k for k in changed if not k.startswith(frozen_prefix)
    ]


@pytest.mark.slow
def test_frozen_linear_segmentation_keeps_the_backbone_bit_identical_while_the_head_trains(tmp_path):
    """The demo's linear config on a labelled subset: every backbone tensor of the checkpoint after
    the last iteration equals the one after the first; the linear head's changed."""
    import segmentation  # noqa: F401  (mmengine's checkpoint types become safe to load)

    root, work = make_shapes_dataset(tmp_path / "data", n_train=6, n_val=1, size=(64, 64)), tmp_path / "work"
    log = run_tool(
        "tools/train_seg.py",
        CONFIGS / "segmentation/demo_linear_vit_toy_frozen.py",
        "--work-dir",
        work,
        "--cfg-options",
        *(
            f"{s}_dataloader.dataset.{k}={v}"
            for s in ("train", "val", "test")
            for k, v in (("data_root", root), ("img_suffix", ".jpg"))
        ),
        "train_dataloader.dataset.label_fraction=0.5",
        "train_dataloader.batch_size=2",
        "train_cfg.max_iters=3",
        "train_cfg.val_interval=3",
        "default_hooks.checkpoint.interval=1",
        "param_scheduler.0.end=1",
        "param_scheduler.1.begin=1",
        "param_scheduler.1.end=3",
    )
    assert "trainable parameters: 1,259 of" in log  # BatchNorm (2 x 96) and the 1x1 classifier (96 x 11 + 11)
    assert "labelled subset of 3 of 6 images" in log
    first, last = (torch.load(work / f"iter_{i}.pth", weights_only=True)["state_dict"] for i in (1, 3))
    frozen, trained = split_changes(first, last, "backbone.")
    assert frozen == [] and any(k.startswith("backbone.trunk.") for k in first)
    assert "decode_head.conv_seg.weight" in trained


@pytest.mark.slow
def test_frozen_mask_rcnn_keeps_the_vit_bit_identical_while_pyramid_and_heads_train(tmp_path):
    train_json, images = make_coco(tmp_path, "train", 4)
    val_json, _ = make_coco(tmp_path, "val", 1, seed=1)
    out = tmp_path / "out"
    log = run_tool(
        "tools/train_det.py",
        "--config-file",
        CONFIGS / "detection/demo_mask_rcnn_vit_toy_frozen.py",
        f"dataloader.train.dataset.json_file={train_json}",
        f"dataloader.train.dataset.image_root={images}",
        f"dataloader.test.dataset.json_file={val_json}",
        f"dataloader.test.dataset.image_root={images}",
        "dataloader.train.dataset.name=frozen_train",
        "dataloader.test.dataset.name=frozen_val",
        "model.roi_heads.num_classes=2",
        "dataloader.train.dataset.label_count=2",
        "train.max_iter=3",
        "train.eval_period=0",
        "train.checkpointer.period=1",
        f"train.output_dir={out}",
    )
    assert "(476,736 frozen)" in log  # vit_toy_patch4 without its cls token and norm
    assert "labelled subset: 2 of 4 images" in log
    first, last = (
        torch.load(out / name, weights_only=True)["model"]
        for name in ("model_0000000.pth", "model_final.pth")
    )
    frozen, trained = split_changes(first, last, "backbone.body.trunk.")
    assert frozen == [] and any(k.startswith("backbone.body.trunk.") for k in first)
    assert any(k.startswith("backbone.body.neck.") for k in trained)  # the simple feature pyramid trains
    assert any(k.startswith("roi_heads.") for k in trained)


def test_real_size_frozen_configs_freeze_the_vit_and_keep_drop_path_off():
    from detectron2.config import LazyConfig
    from mmengine.config import Config

    det = LazyConfig.load(str(CONFIGS / "detection/mask_rcnn_vit_base_100ep_frozen.py"))
    assert det.model.backbone.freeze is True and det.model.backbone.net.drop_path_rate == 0.0
    seg = Config.fromfile(str(CONFIGS / "segmentation/linear_vit_base_512x512_ade20k_frozen.py"))
    assert seg.model.backbone["freeze"] is True and seg.model.backbone.drop_path_rate == 0.0
    assert seg.model.decode_head.type == "LinearHead" and seg.model.decode_head.in_channels == 768
    assert seg.model.neck is None and seg.model.auxiliary_head is None


# --- The report's curves ----------------------------------------------------------------------------------


def test_report_shows_each_metric_against_the_fraction_with_a_verdict_per_fraction(tmp_path):
    from mae_app.report import write_report

    def run(backbone, seed, miou, fraction=None, frozen=None, count=None):
        protocol = {"label_fraction": fraction} if fraction else {}
        protocol.update({"label_count": count} if count else {})
        if backbone == "vit_mae":  # a pretraining's settings join its row's name
            protocol["mask_ratio"] = 0.75
        return {
            "task": "seg",
            "backbone": backbone,
            "seed": seed,
            "mIoU": miou,
            "source": "x",
            **protocol,
            **({"frozen": frozen} if frozen is not None else {}),
        }

    runs = []
    for seed, noise in enumerate((0.0, 0.4, -0.4)):
        runs += [run("vit_mae", seed, 21 + noise), run("vit_random", seed, 20.8 - noise)]  # the main demo
        runs += [run("vit_mae", seed, 15 + noise, 0.1), run("vit_random", seed, 10 + noise, 0.1)]
        runs += [run("vit_mae", seed, 30 + noise, count=50)]  # by count: a column of its own, not 100 %
        for fraction in (0.1, 1.0):
            runs += [
                run("vit_mae", seed, 12 + noise, fraction, True),
                run("vit_random", seed, 12 - noise, fraction, True),
                run("vit_supervised", seed, 14 + noise, fraction, True),
            ]
    text = write_report(runs, tmp_path).read_text()
    main, curves = text.split("## Label efficiency and frozen backbones")
    assert "(frozen)" not in main.split("## Runs")[0]  # main tables: every label, fine-tuned only
    assert "| vit_mae (mask 75%) | 0, 1, 2 | 21.0 ± 0.4 |" in main
    assert "| backbone | 10 % | 100 % | 50 images |" in curves
    assert "| vit_mae (mask 75%) | 15.0 ± 0.4 (n=3) | 21.0 ± 0.4 (n=3) | 30.0 ± 0.4 (n=3) |" in curves
    assert "| vit_mae (mask 75%) (frozen) | 12.0 ± 0.4 (n=3) | 12.0 ± 0.4 (n=3) | — |" in curves
    assert (
        "| vit_mae (mask 75%) vs vit_random | +5.0 (2 SE 0.7): **ahead** "
        "| +0.2 (2 SE 0.7): does not separate |"
        in curves
    )
    assert (
        "| vit_mae (mask 75%) (frozen) vs vit_supervised (frozen) | -2.0 (2 SE 0.7): **behind** |" in curves
    )
    assert (tmp_path / "seg_label_efficiency.png").is_file()
