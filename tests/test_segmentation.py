"""The MMSegmentation glue: backbone through the registry, layer decay, datasets and their checks,
IoU, checkpoint safety, and the train / test tools end to end on generated data."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

import helpers_tools
import numpy as np
import pytest
import torch
from helpers_seg import make_shapes_dataset, shapes_label, write_sample
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.structures import PixelData
from mmseg.evaluation import IoUMetric
from mmseg.registry import DATASETS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from mmseg.structures import SegDataSample
from mmseg.utils import register_all_modules
from PIL import Image
from torch import nn

import segmentation
from mae_core.backbone import ViTBackbone
from mae_core.checkpoint import CheckpointError, CheckpointWriteError, IncompleteLoadError, save_checkpoint
from mae_core.mae import create_mae
from mae_core.vit import get_arch
from segmentation import (
    ConfigOverrideError,
    DatasetError,
    NonFiniteError,
    NonFiniteGuardHook,
    SegFolderDataset,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "segmentation"
TINY = CONFIGS / "upernet_vit_tiny_cpu.py"

register_all_modules(init_default_scope=True)


def toy_backbone(**kwargs) -> nn.Module:
    cfg = dict(type="MAEViT", arch="vit_toy_patch4", patch_size=8, img_size=64, out_indices=(0, 1, 2, 3))
    return MODELS.build({**cfg, **kwargs})


# --- Backbone and neck ------------------------------------------------------------------------------


def test_backbone_builds_from_registry_and_returns_four_maps_for_non_square_inputs():
    backbone = toy_backbone(patch_size=16)
    assert isinstance(backbone, ViTBackbone)
    maps = backbone(torch.randn(2, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(2, 96, 4, 6)] * 4
    # Sizes that are not multiples of the patch (border crops) are padded, not refused.
    assert [tuple(m.shape) for m in backbone(torch.randn(1, 3, 50, 90))] == [(1, 96, 4, 6)] * 4
    neck = MODELS.build(
        dict(
            type="Feature2Pyramid",
            embed_dim=96,
            rescales=[4, 2, 1, 0.5],
            norm_cfg=dict(type="BN", requires_grad=True),
        )
    )
    strides = [64 // p.shape[-2] for p in neck(maps)]
    assert strides == [4, 8, 16, 32]
    assert [p.shape[-1] for p in neck(maps)] == [24, 12, 6, 3]


def test_backbone_options_global_attention_rel_pos_and_layer_scale():
    plain = toy_backbone()
    assert all(blk.window_size == 0 for blk in plain.blocks)  # global attention by default
    options = toy_backbone(use_rel_pos=True, init_values=0.1)
    assert all(torch.count_nonzero(blk.attn.rel_pos_h) == 0 for blk in options.blocks)
    assert torch.allclose(options.blocks[0].ls1.gamma, torch.full((96,), 0.1))
    # Zero-initialised relative positions and a layer scale of 1 change nothing at the start.
    scaled = toy_backbone(use_rel_pos=True, init_values=1.0)
    missing, unexpected = scaled.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all("rel_pos" in k or ".ls" in k for k in missing)
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(plain.eval()(x), scaled.eval()(x), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="distinct"):
        toy_backbone(out_indices=(1, 1, 2, 3))


class RecordingHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_backbone_initialises_from_mae_checkpoint_with_report(tmp_path):
    mae = create_mae("vit_toy_patch4", img_size=32, patch_size=8)
    path = save_checkpoint({"model": mae.state_dict()}, tmp_path / "mae.pth")
    backbone = toy_backbone(pretrained=str(path), use_rel_pos=True)
    logger, handler = MMLogger.get_current_instance(), RecordingHandler()
    logger.addHandler(handler)
    try:
        backbone.init_weights()
    finally:
        logger.removeHandler(handler)
    torch.testing.assert_close(backbone.blocks[2].mlp.fc1.weight, mae.blocks[2].mlp.fc1.weight)
    torch.testing.assert_close(backbone.patch_embed.proj.weight, mae.patch_embed.proj.weight)
    report = "\n".join(handler.messages)
    # Every key not loaded is named: the relative positions this backbone adds are reported as new
    # (no MAE checkpoint has them), the position table of the 32-pixel MAE as resized.
    assert str(path) in report and "new in this model" in report and "blocks.0.attn.rel_pos_h" in report
    assert "resized" in report and "MISSING" not in report


# --- Layer decay ------------------------------------------------------------------------------------


def build_tiny_model():
    cfg = Config.fromfile(TINY)
    return MODELS.build(cfg.model), cfg


def test_layer_decay_groups_scale_lr_per_layer_and_skip_decay_on_norms_biases_pos():
    model, cfg = build_tiny_model()
    wrapper = OPTIM_WRAPPER_CONSTRUCTORS.build(
        dict(
            type="LayerDecayOptimWrapperConstructor",
            optim_wrapper_cfg=dict(
                type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05)
            ),
            paramwise_cfg=dict(layer_decay_rate=0.5),
        )
    )(model)
    depth = model.backbone.depth
    lr_of, wd_of = {}, {}
    for group in wrapper.optimizer.param_groups:
        for name in group["param_names"]:
            lr_of[name], wd_of[name] = group["lr"], group["weight_decay"]
    assert len(lr_of) == sum(1 for p in model.parameters() if p.requires_grad)
    assert lr_of["backbone.patch_embed.proj.weight"] == pytest.approx(1e-3 * 0.5 ** (depth + 1))
    for i in range(depth):
        assert lr_of[f"backbone.blocks.{i}.attn.qkv.weight"] == pytest.approx(1e-3 * 0.5 ** (depth - i))
    assert lr_of["decode_head.conv_seg.weight"] == pytest.approx(1e-3)
    assert lr_of["neck.upsample_2x.0.weight"] == pytest.approx(1e-3)
    assert wd_of["backbone.blocks.0.attn.qkv.weight"] == 0.05
    assert wd_of["decode_head.fpn_bottleneck.conv.weight"] == 0.05
    for name in (
        "backbone.pos_embed",
        "backbone.blocks.0.norm1.weight",
        "backbone.blocks.0.attn.qkv.bias",
        "decode_head.fpn_bottleneck.bn.weight",
        "decode_head.conv_seg.bias",
    ):
        assert wd_of[name] == 0.0, name


class LayeredConvNet(nn.Module):
    """Not a ViT: any backbone that reports layer ids gets layer decay."""

    num_layers = 2

    def __init__(self):
        super().__init__()
        self.stem, self.stage = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)

    def layer_id(self, name: str) -> int:
        return 0 if name.startswith("stem") else 2


def test_layer_decay_works_for_any_backbone_reporting_layer_ids_and_refuses_none():
    model = nn.ModuleDict(dict(backbone=LayeredConvNet(), head=nn.Conv2d(4, 2, 1)))
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(
        dict(
            type="LayerDecayOptimWrapperConstructor",
            optim_wrapper_cfg=dict(optimizer=dict(type="SGD", lr=1.0, weight_decay=0.1)),
            paramwise_cfg=dict(layer_decay_rate=0.5),
        )
    )
    lrs = {n: g["lr"] for g in constructor(model).optimizer.param_groups for n in g["param_names"]}
    assert lrs == {
        "backbone.stem.weight": 0.125,
        "backbone.stem.bias": 0.125,
        "backbone.stage.weight": 0.5,
        "backbone.stage.bias": 0.5,
        "head.weight": 1.0,
        "head.bias": 1.0,
    }
    with pytest.raises(ValueError, match="reports"):
        constructor(nn.Sequential(nn.Conv2d(3, 4, 3)))


# --- Data -------------------------------------------------------------------------------------------

CHECKED_PIPELINE = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadCheckedAnnotations"),
    dict(type="PackSegInputs"),
]
CLASSES = dict(classes=("background", "square", "disc"), palette=[[0, 0, 0], [255, 0, 0], [0, 0, 255]])


def folder_dataset(root: Path, **kwargs) -> SegFolderDataset:
    return SegFolderDataset(
        data_root=str(root),
        metainfo=CLASSES,
        pipeline=CHECKED_PIPELINE,
        data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation"),
        **kwargs,
    )


def test_custom_dataset_keeps_its_own_classes_palette_and_labels(tmp_path):
    make_shapes_dataset(tmp_path, n_train=0, n_val=2)
    dataset = folder_dataset(tmp_path)
    assert dataset.metainfo["classes"] == CLASSES["classes"]
    assert dataset.metainfo["palette"] == CLASSES["palette"]
    sample = dataset[0]
    label = np.array(Image.open(tmp_path / "annotations/validation/validation_000.png"))
    np.testing.assert_array_equal(sample["data_samples"].gt_sem_seg.data[0].numpy(), label)


def test_ade_layout_reduce_zero_label(tmp_path):
    make_shapes_dataset(tmp_path, n_train=0, n_val=1, label_offset=1)
    dataset = folder_dataset(tmp_path, reduce_zero_label=True)
    stored = np.array(Image.open(tmp_path / "annotations/validation/validation_000.png"))
    np.testing.assert_array_equal(dataset[0]["data_samples"].gt_sem_seg.data[0].numpy(), stored - 1)


def test_paper_config_reads_the_ade20k_layout_with_its_150_classes(tmp_path):
    make_shapes_dataset(tmp_path, n_train=1, n_val=1, label_offset=1)
    cfg = Config.fromfile(CONFIGS / "upernet_vit_base_512x512_160k_ade20k.py")
    val = DATASETS.build({**cfg.val_dataloader.dataset, "data_root": str(tmp_path)})
    train = DATASETS.build({**cfg.train_dataloader.dataset, "data_root": str(tmp_path)})
    assert len(val.metainfo["classes"]) == 150 and len(train) == len(val) == 1
    sample = val[0]
    stored = np.array(Image.open(tmp_path / "annotations/validation/validation_000.png"))
    np.testing.assert_array_equal(sample["data_samples"].gt_sem_seg.data[0].numpy(), stored - 1)
    assert min(sample["inputs"].shape[-2:]) == 512  # resized for the sliding window, labels kept
    crop = train[0]  # random scale in [0.5, 2] of 512, then a crop of at most 512 x 512
    assert crop["inputs"].shape[-2:] == crop["data_samples"].gt_sem_seg.shape
    assert max(crop["inputs"].shape[-2:]) <= 512


def test_label_value_outside_the_classes_names_the_file(tmp_path):
    rng = np.random.default_rng(0)
    label = shapes_label((48, 64), rng)
    write_sample(tmp_path, "validation", "good", label)
    label[0, 0] = 7
    write_sample(tmp_path, "validation", "bad", label)
    dataset = folder_dataset(tmp_path)
    names = [Path(dataset.get_data_info(i)["seg_map_path"]).name for i in range(len(dataset))]
    with pytest.raises(DatasetError, match=r"bad\.png holds values \[7\] outside the 3 classes"):
        dataset[names.index("bad.png")]
    label[0, 0] = 255  # the ignore index is allowed
    write_sample(tmp_path, "validation", "bad", label)
    assert dataset[names.index("bad.png")]["data_samples"].gt_sem_seg.data.max() == 255


def test_label_of_another_size_than_its_image_names_the_file(tmp_path):
    write_sample(
        tmp_path, "validation", "pair", shapes_label((48, 64), np.random.default_rng(0)), image_size=(48, 60)
    )
    with pytest.raises(DatasetError, match=r"pair\.png is 48x64 but its image .*pair\.jpg is 48x60"):
        folder_dataset(tmp_path)[0]


def test_colour_label_png_names_the_file(tmp_path):
    make_shapes_dataset(tmp_path, n_train=0, n_val=1)
    path = tmp_path / "annotations/validation/validation_000.png"
    label = np.array(Image.open(path))
    Image.fromarray(np.stack([label] * 3, axis=-1)).save(path)
    with pytest.raises(DatasetError, match=r"validation_000\.png has shape .* expected one channel"):
        folder_dataset(tmp_path)[0]


def test_missing_annotation_file_names_the_file(tmp_path):
    make_shapes_dataset(tmp_path, n_train=0, n_val=2)
    (tmp_path / "annotations/validation/validation_001.png").unlink()
    with pytest.raises(DatasetError, match=r"annotation file .*validation_001\.png .* does not exist"):
        folder_dataset(tmp_path)


# --- IoU ----------------------------------------------------------------------------------------------


def iou(pairs: list[tuple[np.ndarray, np.ndarray]], num_classes: int) -> dict:
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = dict(classes=[f"c{i}" for i in range(num_classes)])
    samples = []
    for pred, gt in pairs:
        sample = SegDataSample(
            pred_sem_seg=PixelData(data=torch.from_numpy(pred)[None]),
            gt_sem_seg=PixelData(data=torch.from_numpy(gt)[None]),
        )
        samples.append(sample.to_dict())
    metric.process({}, samples)
    return metric.compute_metrics(metric.results)


def test_iou_is_100_for_a_perfect_prediction_and_known_on_a_hand_built_case():
    gt = shapes_label((32, 40), np.random.default_rng(1)).astype(np.int64)
    assert iou([(gt, gt)], 3)["mIoU"] == 100.0
    gt = np.array([[0, 0, 1, 255], [1, 1, 2, 2]])
    pred = np.array([[0, 1, 1, 0], [1, 1, 2, 0]])
    # class 0: 1 / (2 + 2 - 1); class 1: 3 / (3 + 4 - 3); class 2: 1 / (2 + 1 - 1)  (255 ignored)
    expected = 100 * np.mean([1 / 3, 3 / 4, 1 / 2])
    assert iou([(pred, gt)], 3)["mIoU"] == pytest.approx(expected, abs=0.01)


# --- Runtime glue ---------------------------------------------------------------------------------------


def test_cpu_adaptation_turns_syncbn_amp_and_ddp_into_what_a_cpu_can_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = Config.fromfile(CONFIGS / "upernet_vit_base_512x512_160k_ade20k.py")
    assert cfg.optim_wrapper.type == "AmpOptimWrapper" and cfg.model.decode_head.norm_cfg.type == "SyncBN"
    segmentation.adapt_config_to_device(cfg)
    assert cfg.optim_wrapper.type == "OptimWrapper" and "loss_scale" not in cfg.optim_wrapper
    assert {
        cfg.model.neck.norm_cfg.type,
        cfg.model.decode_head.norm_cfg.type,
        cfg.model.auxiliary_head.norm_cfg.type,
    } == {"BN"}
    assert cfg.model_wrapper_cfg.type == "DeviceAgnosticDDP" and cfg.env_cfg.dist_cfg.backend == "gloo"


def test_atomic_backend_never_leaves_a_partial_file(tmp_path, monkeypatch):
    backend = segmentation.AtomicLocalBackend()
    target = tmp_path / "iter_1.pth"
    backend.put(b"old", target)

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    (tmp_path / "last_checkpoint").write_text(str(target))  # CheckpointHook's record of the last save
    with pytest.raises(CheckpointWriteError, match=f"could not write {target}: disk full") as err:
        backend.put(b"new", target)
    assert f"The last good checkpoint is {target}" in str(err.value)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_1.pth", "last_checkpoint"]


@pytest.mark.parametrize(
    "name, arch, out_indices, decay",
    [
        ("upernet_vit_base_512x512_160k_ade20k.py", "vit_base_patch16", (3, 5, 7, 11), 0.65),
        ("upernet_vit_large_512x512_160k_ade20k.py", "vit_large_patch16", (7, 11, 15, 23), 0.75),
    ],
)
def test_paper_configs_follow_the_mae_recipe(name, arch, out_indices, decay):
    cfg = Config.fromfile(CONFIGS / name)
    assert cfg.custom_imports.imports == ["segmentation"]
    assert (cfg.model.backbone.arch, tuple(cfg.model.backbone.out_indices)) == (arch, out_indices)
    assert cfg.optim_wrapper.type == "AmpOptimWrapper"
    assert cfg.optim_wrapper.optimizer == dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert cfg.optim_wrapper.paramwise_cfg.layer_decay_rate == decay
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.end, poly.type, poly.begin, poly.end) == (
        "LinearLR",
        1500,
        "PolyLR",
        1500,
        160000,
    )
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_dataloader.batch_size * 8 == 16
    assert cfg.model.test_cfg == dict(mode="slide", crop_size=(512, 512), stride=(341, 341))
    assert cfg.model.auxiliary_head.type == "FCNHead" and cfg.model.decode_head.type == "UPerHead"
    size = get_arch(arch)
    assert cfg.model.neck.embed_dim == cfg.model.auxiliary_head.in_channels == size.embed_dim
    assert cfg.model.decode_head.in_channels == [size.embed_dim] * 4 and out_indices[-1] == size.depth - 1


# --- Tools end to end ---------------------------------------------------------------------------------


def run_tool(*args: str, cwd: Path, module: str | None = None) -> str:
    cmd = [sys.executable, *(("-m", module) if module else ()), *args]
    proc = helpers_tools.run(cmd, cwd, helpers_tools.base_env())
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-8000:]}"
    return proc.stdout


def data_options(root: Path, iters: int) -> list[str]:
    return [
        "--cfg-options",
        *(
            f"{loader}.dataset.data_root={root}"
            for loader in ("train_dataloader", "val_dataloader", "test_dataloader")
        ),
        f"train_cfg.max_iters={iters}",
        f"train_cfg.val_interval={iters}",
        f"default_hooks.checkpoint.interval={iters}",
        "default_hooks.logger.interval=1",
    ]


def logged_miou(work_dir: Path) -> list[float]:
    values = []
    for scalars in sorted(work_dir.glob("*/vis_data/scalars.json")):
        for line in scalars.read_text().splitlines():
            record = json.loads(line)
            if "mIoU" in record:
                values.append(record["mIoU"])
    return values


@pytest.mark.slow
def test_validating_during_training_leaves_the_training_unchanged(tmp_path):
    """Validation draws from torch's generator (its DataLoader iterator takes a seed from it); the
    training hook puts the generators back, so a run validated every 2 iterations logs the losses
    of one validated only at its end (the head's dropout samples with that generator)."""
    data = make_shapes_dataset(tmp_path / "data")
    losses = {}
    for interval in (2, 5):
        work = tmp_path / f"val_every_{interval}"
        options = [*data_options(data, 5), f"train_cfg.val_interval={interval}",
                   "model.decode_head.dropout_ratio=0.5"]
        run_tool(str(ROOT / "tools/train_seg.py"), str(TINY), "--work-dir", str(work), *options, cwd=tmp_path)
        [scalars] = work.glob("*/vis_data/scalars.json")
        losses[interval] = [json.loads(line)["loss"] for line in scalars.read_text().splitlines()
                            if "loss" in json.loads(line)]
    assert len(losses[2]) == 5
    assert losses[2] == losses[5]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """tools/train_seg.py, 4 iterations of the tiny config on a generated dataset, starting from
    an MAE checkpoint of the same toy size."""
    tmp = tmp_path_factory.mktemp("seg_train")
    data = make_shapes_dataset(tmp / "data")
    work = tmp / "work"
    mae = save_checkpoint({"model": create_mae("vit_toy_patch4", patch_size=8).state_dict()}, tmp / "mae.pth")
    options = [*data_options(data, 4), f"model.pretrained={mae}"]
    log = run_tool(str(ROOT / "tools/train_seg.py"), str(TINY), "--work-dir", str(work), *options, cwd=tmp)
    return data, work, log


@pytest.mark.slow
def test_train_tool_trains_validates_and_saves_a_safely_loadable_checkpoint(trained):
    data, work, log = trained
    assert "MAEViT initialised from" in log and "mae.pth" in log and "tensors loaded" in log
    [miou] = logged_miou(work)
    assert 0.0 <= miou <= 100.0
    checkpoint = torch.load(work / "iter_4.pth", weights_only=True)
    assert checkpoint["meta"]["iter"] == 4 and "backbone.blocks.0.attn.qkv.weight" in checkpoint["state_dict"]
    assert not list(work.glob(".*.tmp"))


@pytest.mark.slow
def test_train_tool_writes_tensorboard_scalars_and_its_run_record(trained):
    """TensorBoard beside MMEngine's scalars.json (the configs' TensorboardVisBackend), holding the
    same losses and mIoU; run.json describes the run for tools/compare.py."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data, work, _ = trained
    [events] = work.glob("*/vis_data/events.out.tfevents.*")
    accumulator = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
    accumulator.Reload()
    assert {"loss", "lr", "mIoU"} <= set(accumulator.Tags()["scalars"])
    [miou] = logged_miou(work)
    assert [e.value for e in accumulator.Scalars("mIoU")] == pytest.approx([miou])
    record = json.loads((work / "run.json").read_text())
    assert record["task"] == "seg" and record["backbone"] == "MAEViT(vit_toy_patch4, patch_size=8)"
    assert record["checkpoint"].endswith("mae.pth") and record["seed"] == 0 and record["img_size"] == 64
    assert record["eval_data"] == str(data / "images/validation") and record["split"] == "val"
    assert not (work / "run.lock").exists()


@pytest.mark.slow
def test_test_tool_reproduces_the_validation_miou_and_writes_predictions(trained, tmp_path):
    data, work, _ = trained
    [miou] = logged_miou(work)
    out = run_tool(
        str(ROOT / "tools/test_seg.py"),
        str(TINY),
        str(work / "iter_4.pth"),
        "--work-dir",
        str(tmp_path / "test"),
        "--output-dir",
        str(tmp_path / "preds"),
        "--show-dir",
        str(tmp_path / "vis"),
        *data_options(data, 4),
        cwd=tmp_path,
    )
    metrics = json.loads(next(line for line in out.splitlines() if line.startswith('{"metrics"')))["metrics"]
    assert metrics["mIoU"] == pytest.approx(miou, abs=1e-4)  # both rounded to 0.01 by IoUMetric
    preds = sorted(p.name for p in (tmp_path / "preds").glob("*.png"))
    assert preds == ["validation_000.png", "validation_001.png"]
    pred = np.array(Image.open(tmp_path / "preds" / preds[0]))
    assert pred.shape == (72, 96) and set(np.unique(pred)) <= {0, 1, 2}
    assert len(list((tmp_path / "vis").rglob("*.png"))) == 2


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(trained, tmp_path):
    data, work, _ = trained
    resumed = tmp_path / "work"
    resumed.mkdir()
    (resumed / "iter_4.pth").write_bytes((work / "iter_4.pth").read_bytes())
    (resumed / "last_checkpoint").write_text(str(resumed / "iter_4.pth"))
    log = run_tool(
        str(ROOT / "tools/train_seg.py"),
        str(TINY),
        "--work-dir",
        str(resumed),
        "--resume",
        *data_options(data, 6),
        cwd=tmp_path,
    )
    assert "resumed" in log.lower() and "Iter(train) [5/6]" in log
    assert "Iter(train) [1/6]" not in log
    assert torch.load(resumed / "iter_6.pth", weights_only=True)["meta"]["iter"] == 6


@pytest.mark.slow
def test_two_process_torchrun_on_cpu(tmp_path):
    data = make_shapes_dataset(tmp_path / "data", n_train=4, n_val=2)
    log = run_tool(
        "--standalone",  # a free port, so parallel test workers never collide
        "--nproc-per-node",
        "2",
        str(ROOT / "tools/train_seg.py"),
        str(TINY),
        "--launcher",
        "pytorch",
        "--work-dir",
        str(tmp_path / "work"),
        *data_options(data, 2),
        cwd=tmp_path,
        module="torch.distributed.run",
    )
    assert "Distributed launcher: pytorch" in log and "GPU number: 2" in log
    assert logged_miou(tmp_path / "work") and (tmp_path / "work" / "iter_2.pth").is_file()


# --- Stopping loudly: overrides, pretrained weights, checkpoints, non-finite runs --------------------


def test_cfg_options_must_name_existing_keys_and_new_ones_take_a_plus():
    from segmentation.train import load_mmseg_config

    options = {"optim_wrapper.optimizer.lr": 0.5, "param_scheduler.1.end": 7,
               "+model.backbone.drop_path_rate": 0.1, "++train_cfg.val_interval": 5}
    cfg = load_mmseg_config(str(TINY), cfg_options=options)
    assert (cfg.optim_wrapper.optimizer.lr, cfg.param_scheduler[1].end) == (0.5, 7)
    assert (cfg.model.backbone.drop_path_rate, cfg.train_cfg.val_interval) == (0.1, 5)
    with pytest.raises(ConfigOverrideError, match=r"'optim_wrapper\.optimizer\.lrr'.*closest existing keys: "
                       r"optim_wrapper\.optimizer\.lr\b.*\+optim_wrapper\.optimizer\.lrr="):
        load_mmseg_config(str(TINY), cfg_options={"optim_wrapper.optimizer.lrr": 1.0})
    with pytest.raises(ConfigOverrideError, match="exists already"):
        load_mmseg_config(str(TINY), cfg_options={"+train_cfg.max_iters": 3})
    # A variable of the file: the keys that took its value are named, where the override belongs.
    with pytest.raises(ConfigOverrideError, match="max_iters.*change nothing") as refused:
        load_mmseg_config(str(TINY), cfg_options={"max_iters": 3})
    held_by = str(refused.value).split("hold its value instead: ")[1].split(", ")
    assert held_by == ["param_scheduler.1.end", "train_cfg.max_iters", "train_cfg.val_interval",
                       "default_hooks.checkpoint.interval"]
    with pytest.raises(ConfigOverrideError, match="not read by the Runner.*Top-level keys that are read"):
        load_mmseg_config(str(TINY), cfg_options={"+max_iter": 3})


def test_every_config_gets_the_non_finite_guard_once():
    from segmentation.train import load_mmseg_config

    for config in (TINY, CONFIGS / "upernet_vit_base_512x512_160k_ade20k.py"):
        hooks = load_mmseg_config(str(config)).custom_hooks
        assert [h["type"] for h in hooks].count("NonFiniteGuardHook") == 1


def test_backbone_init_cfg_pretrained_loads_like_pretrained(tmp_path):
    mae = create_mae("vit_toy_patch4", patch_size=8)
    path = save_checkpoint({"model": mae.state_dict()}, tmp_path / "mae.pth")
    backbone = toy_backbone(init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    backbone.init_weights()
    torch.testing.assert_close(backbone.blocks[3].attn.qkv.weight, mae.blocks[3].attn.qkv.weight)
    with pytest.raises(ValueError, match="only dict\\(type='Pretrained'"):
        toy_backbone(init_cfg=dict(type="Kaiming"))
    with pytest.raises(ValueError, match="two checkpoints"):
        toy_backbone(pretrained="a.pth", init_cfg=dict(type="Pretrained", checkpoint="b.pth"))


def test_backbone_refuses_a_checkpoint_of_another_size_unless_partial_load_is_allowed(tmp_path):
    path = save_checkpoint({"model": create_mae("vit_mini_patch4").state_dict()}, tmp_path / "mini.pth")
    with pytest.raises(IncompleteLoadError, match=r"(?s)mini\.pth.*blocks\.0\.attn\.qkv\.weight.*partial"):
        toy_backbone(pretrained=str(path)).init_weights()
    partial = toy_backbone(pretrained=str(path), allow_partial_load=True)
    partial.init_weights()  # the opt-in: loads what fits (nothing of another width), says so, trains on
    assert torch.isfinite(partial.blocks[0].attn.qkv.weight).all()


def test_mmengine_checkpoint_loads_name_a_damaged_file(tmp_path):
    from mmengine.runner import CheckpointLoader

    path = tmp_path / "iter_4.pth"
    torch.save({"state_dict": {"w": torch.zeros(100)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=re.escape(f"{path} is not a readable torch checkpoint")):
        CheckpointLoader.load_checkpoint(str(path))
    with pytest.raises(CheckpointError, match="does not exist"):
        CheckpointLoader.load_checkpoint(str(tmp_path / "none.pth"))


class FakeRunner:
    """What NonFiniteGuardHook reads of mmengine's Runner."""

    def __init__(self, model: nn.Module, iteration: int = 2, work_dir: Path | None = None):
        from mmengine.logging import MessageHub

        self.model, self.iter, self.max_iters, self.work_dir = model, iteration, 60, work_dir
        self.message_hub = MessageHub.get_instance(f"guard_test_{id(self)}")
        self.optim_wrapper = None
        self.cfg = Config(dict(load_from="weights.pth"))


def test_guard_stops_at_the_first_non_finite_loss_naming_the_logged_iteration(tmp_path):
    hook, runner = NonFiniteGuardHook(), FakeRunner(nn.Linear(2, 2), iteration=2, work_dir=tmp_path)
    (tmp_path / "last_checkpoint").write_text("work/iter_2.pth")  # CheckpointHook's record
    hook.after_train_iter(runner, 2, outputs={"loss": torch.tensor(1.5), "decode.acc_seg": torch.tensor(50.)})
    with pytest.raises(NonFiniteError, match=r"iteration 3 \(Iter\(train\) \[3/60\]\): decode\.loss_ce=nan.*"
                       r"last checkpoint written is work/iter_2\.pth"):
        outputs = {"loss": torch.tensor(1.0), "decode.loss_ce": torch.tensor(torch.nan)}
        hook.after_train_iter(runner, 2, outputs=outputs)


def test_guard_checks_the_gradient_norm_when_the_optim_wrapper_records_one(tmp_path):
    from mmengine.optim import OptimWrapper

    model = nn.Linear(2, 2)
    runner = FakeRunner(model, work_dir=tmp_path)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    runner.optim_wrapper = OptimWrapper(optimizer, clip_grad=dict(max_norm=1.0))
    runner.optim_wrapper.message_hub = runner.message_hub
    model(torch.tensor([[float("inf"), 1.0]])).sum().backward()
    runner.optim_wrapper.step()  # clips, and records train/grad_norm
    with pytest.raises(NonFiniteError, match="grad_norm="):
        NonFiniteGuardHook().after_train_iter(runner, 2, outputs={"loss": torch.tensor(1.0)})


def test_guard_refuses_to_save_or_evaluate_a_non_finite_model(tmp_path):
    model = nn.Linear(2, 2)
    hook, runner = NonFiniteGuardHook(), FakeRunner(model, work_dir=tmp_path)
    good = {"meta": {"iter": 3}, "state_dict": model.state_dict(), "optimizer": {"state": {}}}
    hook.before_save_checkpoint(runner, good)
    hook.before_val(runner)
    bad = {**good, "optimizer": {"state": {0: {"exp_avg": torch.tensor([float("inf")])}}}}
    non_finite = r"1 of \d+ floating-point tensors are non-finite"
    saving = rf"iteration 3: {non_finite}.*optimizer\.state\.0\.exp_avg\b.*none"
    with pytest.raises(NonFiniteError, match=saving):
        hook.before_save_checkpoint(runner, bad)
    with torch.no_grad():
        model.bias[0] = float("nan")
    runner.iter = 0  # before training or testing: the loaded file is named
    for check, says in ((hook.before_test, "no test metric"), (hook.before_train, "training would start")):
        with pytest.raises(NonFiniteError, match=rf"from weights\.pth: {non_finite}.*\bbias\b.*{says}"):
            check(runner)
    runner.iter = 7  # validation during training: the iteration is named
    with pytest.raises(NonFiniteError, match=r"at training iteration 7: .*no validation metric"):
        hook.before_val(runner)



def test_image_loader_reads_16_bit_at_its_scale_and_refuses_32_bit_by_name(tmp_path):
    """The configs' `LoadScaledImageFromFile`: a real 16-bit PNG comes out as its 8-bit picture
    (OpenCV's scaling; mean within one level), a 32-bit float TIFF is refused naming file and mode."""
    from helpers_coco import to_sixteen_bit_grey

    from mae_core.data import ImageReadError
    from segmentation.data import LoadScaledImageFromFile

    path = tmp_path / "sixteen.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(40, 200, (32, 48, 3), dtype=np.uint8)).save(path)
    mean8 = to_sixteen_bit_grey(path)
    image = LoadScaledImageFromFile()(dict(img_path=str(path)))["img"]
    assert image.shape == (32, 48, 3) and abs(image.mean() - mean8) < 1.0, (image.mean(), mean8)
    depth = tmp_path / "depth.tif"
    Image.fromarray(np.linspace(0, 40, 32 * 48, dtype=np.float32).reshape(32, 48), "F").save(depth)
    with pytest.raises(ImageReadError, match=rf"{depth}: mode 'F' \(32-bit float grey\)"):
        LoadScaledImageFromFile()(dict(img_path=str(depth)))
