#!/usr/bin/env python
"""`make demo`: the whole pipeline at toy scale on real bundled images, on a CPU.

    build the data -> pretrain a tiny MAE -> reconstruction picture -> k-NN and linear probe of the
    MAE encoder against random initialisation -> Mask R-CNN from MAE init and from random init ->
    UperNet from both -> comparison report (report.md, plots; the table printed at the end)

    python tools/demo.py                                # defaults: seeds 0 1, mask ratio 75%
    python tools/demo.py --seeds 0 1 2 --mask-ratio-sweep   # + pretrainings at 25/50/75/90% (probes)
    python tools/demo.py --quick                        # a smoke run of every step in a few minutes

Every step's files go under --out; a finished step (a `.done` marker) is not run again, so an
interrupted demo continues where it stopped (--fresh starts over). Each run's log is in its
folder. Tools are called by their command lines: tools/make_demo_data.py, tools/pretrain.py,
tools/visualize_mae.py, tools/eval_cls.py, tools/train_det.py, tools/train_seg.py, tools/compare.py."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import compare  # noqa: E402  (tools/compare.py, next to this file)

from mae_core.catalogue import CatalogueError, get_entry  # noqa: E402
from mae_core.data import FASHION_MNIST_INSTALL, DatasetNotFoundError, find_fashion_mnist  # noqa: E402
from mae_app.demo_data import FASHION_CLASSES  # noqa: E402

PYTHON = sys.executable
DET_BASE = REPO / "configs/detection/mask_rcnn_vit_tiny_cpu.py"
SEG_BASE = REPO / "configs/segmentation/upernet_vit_tiny_cpu.py"
PRETRAIN_BASE = REPO / "configs/pretrain/fashion_mnist_toy.py"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SWEEP = (0.25, 0.5, 0.75, 0.9)


def tool(name: str) -> str:
    return str(REPO / "tools" / f"{name}.py")


@dataclass
class Recipe:
    """The toy recipe; --quick shrinks it to a smoke run."""

    arch: str = "vit_toy_patch4"
    image_size: int = 64          # pretraining / classification images
    scene_size: int = 128         # detection / segmentation scenes
    train_scenes: int = 400
    val_scenes: int = 100
    pretrain_images: int = 4000
    cls_per_class: tuple[int, int] = (200, 100)
    pretrain_epochs: int = 15     # about 9 minutes on two cores
    pretrain_batch: int = 128
    knn_every: int = 5
    det_iters: int = 500
    seg_iters: int = 650
    det_lr: float = 2e-4
    seg_lr: float = 2e-3
    # Background is 83% of the scenes' pixels: at full weight a model still unsure of the item's class
    # predicts background everywhere (mIoU stuck at background's 83/11 = 7.6 for any backbone).
    seg_background_weight: float = 0.1
    seg_head_channels: int = 64
    window_size: int = 8          # ViTDet-style windows at 128 px (32x32 tokens), two global blocks
    global_blocks: tuple[int, ...] = (1, 3)
    supervised_epochs: int = 10
    pyramid_channels: int = 128   # pyramid, RPN and box-head input width (the model zoo's 256 is 3x slower)
    # Light Mask R-CNN heads: the model zoo's 4-conv box and mask heads cost about ten times the toy
    # backbone's FLOPs (0.78 s per iteration); one fc box head and a 1-conv mask head take 0.49 s.
    box_head_convs: int = 0
    mask_head_convs: int = 1
    mask_head_width: int = 64
    detections_per_image: int = 20  # scenes hold at most 4 objects; the mask head runs on each detection

    @classmethod
    def quick(cls) -> Recipe:
        return cls(train_scenes=8, val_scenes=4, pretrain_images=128, cls_per_class=(6, 3), pretrain_epochs=1,
                   pretrain_batch=32, knn_every=1, det_iters=4, seg_iters=4, supervised_epochs=1)

    def vit_kwargs(self) -> dict:
        return {"arch": self.arch, "img_size": self.scene_size, "pretrain_img_size": self.image_size,
                "window_size": self.window_size, "global_blocks": self.global_blocks}


class Demo:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = args.out.resolve()
        self.recipe = Recipe.quick() if args.quick else Recipe()
        for key in ("pretrain_epochs", "det_iters", "seg_iters"):
            if getattr(args, key) is not None:
                setattr(self.recipe, key, getattr(args, key))
        self.data = self.out / "data"
        # Every tool (also those compare.py's plan starts) imports the packages from the repository.
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        self.start = time.time()
        self.ratios = SWEEP if args.mask_ratio_sweep else (args.mask_ratio,)

    # -- helpers -----------------------------------------------------------------------------------

    def step(self, title: str) -> None:
        print(f"\n=== [{time.time() - self.start:6.0f} s] {title}", flush=True)

    def run(self, command: list[str], marker: Path, log: Path | None = None, threads: int = 1) -> None:
        """Runs a tool unless `marker` says it finished; its output goes to the terminal (progress
        bars) or to `log`. A failure stops the demo with the command and the log to read. `threads`:
        torch threads for the tool (a step that runs alone may take every core)."""
        if marker.is_file():
            print(f"    done before: {marker.parent}")
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        print("    $ " + " ".join(command), flush=True)
        env = compare.thread_env(threads)
        if log is None:
            code = subprocess.call(command, cwd=REPO, env=env)
        else:
            with open(log, "w") as f:
                code = subprocess.call(command, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        if code != 0:
            where = f"; see {log}" if log else ""
            raise SystemExit(f"error: step failed with exit code {code}: {' '.join(command)}{where}")
        marker.touch()

    # -- steps ---------------------------------------------------------------------------------------

    def ensure_fashion_mnist(self) -> None:
        try:
            find_fashion_mnist()
            return
        except DatasetNotFoundError as exc:
            if os.geteuid() != 0 or not shutil.which("apt-get"):
                raise SystemExit(f"error: {exc}\nRun as root: {FASHION_MNIST_INSTALL}") from exc
        print(f"    Fashion-MNIST is missing; installing it: {FASHION_MNIST_INSTALL}")
        if subprocess.call(FASHION_MNIST_INSTALL.split()) != 0:
            raise SystemExit(f"error: could not install Fashion-MNIST; run as root: {FASHION_MNIST_INSTALL}")
        find_fashion_mnist()

    def build_data(self) -> None:
        self.step("1/7 demo data: Fashion-MNIST items on scikit-image photos")
        self.ensure_fashion_mnist()
        r = self.recipe
        self.run([PYTHON, tool("make_demo_data"), "--out", str(self.data), "--seed", str(self.args.data_seed),
                  "--scene-size", str(r.scene_size), "--image-size", str(r.image_size),
                  "--train-scenes", str(r.train_scenes), "--val-scenes", str(r.val_scenes),
                  "--pretrain-images", str(r.pretrain_images),
                  "--cls-train-per-class", str(r.cls_per_class[0]),
                  "--cls-val-per-class", str(r.cls_per_class[1])], self.data / ".done")

    def pretrain_dir(self, ratio: float) -> Path:
        return self.out / "pretrain" / f"mask{round(100 * ratio)}"

    def checkpoint(self, ratio: float) -> Path:
        return self.pretrain_dir(ratio) / "last.pth"

    def pretrain(self) -> None:
        r = self.recipe
        for i, ratio in enumerate(self.ratios):
            self.step(f"2/7 MAE pretraining ({i + 1}/{len(self.ratios)}): {r.arch}, mask ratio {ratio:.0%}, "
                      f"{r.pretrain_epochs} epochs, k-NN monitor every {r.knn_every}")
            hook = {"target": "mae_app.probe.KNNMonitorHook", "train_root": str(self.data / "cls/train"),
                    "val_root": str(self.data / "cls/val"), "img_size": r.image_size, "every": r.knn_every}
            folder = self.pretrain_dir(ratio)
            self.run([PYTHON, tool("pretrain"), "--config", str(PRETRAIN_BASE), "--output-dir", str(folder),
                      f"model.arch={r.arch}", f"model.img_size={r.image_size}", "model.in_chans=3",
                      "model.norm_pix_loss=True", f"model.mask_ratio={ratio}", "data.dataset=image_folder",
                      f"data.root={self.data / 'pretrain'}", f"data.mean={IMAGENET_MEAN}",
                      f"data.std={IMAGENET_STD}",
                      "data.limit=None", "data.num_workers=0", f"epochs={r.pretrain_epochs}",
                      f"batch_size={r.pretrain_batch}", f"effective_batch={r.pretrain_batch}",
                      f"seed={self.args.pretrain_seed}", f"epoch_hooks=({hook!r},)"], folder / ".done",
                     threads=os.cpu_count() or 1)

    def pictures(self) -> None:
        self.step("3/7 reconstruction pictures")
        folder = self.out / "pictures"
        self.run([PYTHON, tool("visualize_mae"), str(self.checkpoint(self.args.mask_ratio)), "--num-images",
                  "4", "--output-dir", str(folder)], folder / ".done", folder / "log.txt")
        print(f"    pictures in {folder}")

    def plan(self) -> list[dict]:
        """Every probe, detection and segmentation run, as tools/compare.py plan entries."""
        entries = []
        for seed in self.args.seeds:
            for ratio in self.ratios:
                entries.append(self.cls_entry("vit_mae", seed, ratio))
            entries.append(self.cls_entry("vit_random", seed))
        for task in ("det", "seg"):
            if task in self.args.skip:
                continue
            for seed in self.args.seeds:
                for backbone in ("vit_mae", "vit_random", *self.args.also):
                    entries.append(self.dense_entry(task, backbone, seed))
        return entries

    def cls_entry(self, backbone: str, seed: int, ratio: float | None = None) -> dict:
        r = self.recipe
        name = f"{backbone}" + (f"_mask{round(100 * ratio)}" if ratio is not None else "")
        folder = self.out / "runs" / "cls" / f"{name}_s{seed}"
        command = [PYTHON, tool("eval_cls"), "--data", str(self.data / "cls"), "--backbone", backbone,
                   "--arch", r.arch, "--img-size", str(r.image_size), "--mode", "knn", "linear",
                   "--seed", str(seed), "--output", str(folder / "eval_cls.json")]
        run = {"task": "cls", "backbone": backbone, "seed": seed}
        if ratio is not None:
            command += ["--checkpoint", str(self.checkpoint(ratio))]
            run["mask_ratio"] = ratio
        return {"run": run, "output_dir": str(folder), "command": command}

    def dense_entry(self, task: str, backbone: str, seed: int) -> dict:
        r = self.recipe
        folder = self.out / "runs" / task / f"{backbone.replace(':', '_')}_s{seed}"
        checkpoint = {"vit_mae": self.checkpoint(self.args.mask_ratio),
                      "vit_supervised": self.supervised_checkpoint}.get(backbone)
        checkpoint = str(checkpoint) if checkpoint else None
        config = self.out / "configs" / f"{task}_{backbone.replace(':', '_')}_s{seed}.py"
        config.parent.mkdir(parents=True, exist_ok=True)
        vit = r.vit_kwargs() if backbone.startswith("vit_") else {}
        options = {"out_channels": r.pyramid_channels, **vit}
        kwargs = {"name": backbone, "checkpoint": checkpoint, **options}
        if task == "det":
            config.write_text(detection_config(kwargs, self.data, folder, seed, r))
            command = [PYTHON, tool("train_det"), "--config-file", str(config)]
            batch = 2
        else:
            config.write_text(segmentation_config(kwargs, self.data, seed, r))
            command = [PYTHON, tool("train_seg"), str(config), "--work-dir", str(folder)]
            batch = 2
        run = {"task": task, "backbone": backbone, "seed": seed, "img_size": r.scene_size,
               "batch_size": batch,
               "checkpoint": checkpoint, "backbone_kwargs": options}
        return {"run": run, "output_dir": str(folder), "command": command}

    @property
    def supervised_checkpoint(self) -> Path:
        return self.out / "supervised" / "backbone.pth"

    def supervised(self) -> None:
        """The catalogue's "ViT pretrained with labels": the same ViT trained from scratch on the
        demo's classification images, its backbone saved for detection and segmentation."""
        if "vit_supervised" not in self.args.also:
            return
        r = self.recipe
        self.step(f"2b/7 supervised ViT pretraining on the classification images "
                  f"({r.supervised_epochs} epochs)")
        folder = self.supervised_checkpoint.parent
        self.run([PYTHON, tool("eval_cls"), "--data", str(self.data / "cls"), "--backbone", "vit_random",
                  "--arch", r.arch, "--img-size", str(r.image_size), "--mode", "finetune",
                  "--epochs", str(r.supervised_epochs), "--save-backbone", str(self.supervised_checkpoint),
                  "--output", str(folder / "eval_cls.json")], folder / ".done")

    def main(self) -> int:
        if self.args.fresh and self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.build_data()
        self.pretrain()
        self.supervised()
        self.pictures()
        plan = self.plan()
        plan_file = self.out / "plan.json"
        plan_file.write_text(json.dumps(plan, indent=2))
        self.step(f"4-6/7 k-NN and linear probes, Mask R-CNN and UperNet from MAE and random init: "
                  f"{len(plan)} runs "
                  f"(seeds {', '.join(map(str, self.args.seeds))}); logs in {self.out / 'runs'}")
        folders = compare.execute_plan(plan_file, jobs=self.args.jobs)
        self.step("7/7 comparison report")
        measured: dict = {}
        runs = [compare.load_run(folder, cache=measured) for folder in folders]
        title = "MAE toolkit demo: MAE vs random initialisation"
        report = compare.write_report(runs, self.out / "report", title)
        print(report.read_text())
        print(f"report: {report}\npictures: {self.out / 'pictures'}\n"
              f"total time: {(time.time() - self.start) / 60:.1f} min")
        return 0


def detection_config(backbone: dict, data: Path, output_dir: Path, seed: int, r: Recipe) -> str:
    """A LazyConfig: the tiny CPU Mask R-CNN with the catalogue backbone and the demo's COCO scenes."""
    return f'''# Generated by tools/demo.py: {DET_BASE.name} with a catalogue backbone on the demo scenes.
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.layers import ShapeSpec

from detection.catalogue import CatalogueBackbone

_base = LazyConfig.load({str(DET_BASE)!r})
model, dataloader, optimizer, lr_multiplier, train = (
    _base.model, _base.dataloader, _base.optimizer, _base.lr_multiplier, _base.train)

model.backbone = L(CatalogueBackbone)(**{backbone!r})
model.roi_heads.num_classes = {len(FASHION_CLASSES)}
# Light heads on a pyramid narrower than the model zoo's 256 channels (see Recipe in tools/demo.py).
width = {r.pyramid_channels}
model.proposal_generator.head.in_channels = width
model.roi_heads.box_head.input_shape = ShapeSpec(channels=width, height=7, width=7)
model.roi_heads.box_head.conv_dims = [width] * {r.box_head_convs}
model.roi_heads.box_head.fc_dims = [4 * width]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=4 * width)
model.roi_heads.box_predictor.test_topk_per_image = {r.detections_per_image}
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=width, width=14, height=14)
model.roi_heads.mask_head.conv_dims = [{r.mask_head_width}] * {r.mask_head_convs + 1}  # convs + deconv
dataloader.train.dataset.update(
    name="demo_scenes_train",
    json_file={str(data / "coco/annotations/instances_train.json")!r},
    image_root={str(data / "coco/train")!r},
)
dataloader.test.dataset.update(
    name="demo_scenes_val",
    json_file={str(data / "coco/annotations/instances_val.json")!r},
    image_root={str(data / "coco/val")!r},
)
dataloader.train.mapper.instance_mask_format = "bitmask"  # the demo's masks are RLE
dataloader.train.mapper.augmentations.update(image_size={r.scene_size})
model.backbone.square_pad = {r.scene_size}
optimizer.lr = {r.det_lr}
train.max_iter = {r.det_iters}
train.eval_period = {r.det_iters}
train.checkpointer.period = {r.det_iters}
train.log_period = {max(1, min(20, r.det_iters))}
train.seed = {seed}
train.output_dir = {str(output_dir)!r}
'''


def segmentation_config(backbone: dict, data: Path, seed: int, r: Recipe) -> str:
    """An mmengine config: the tiny CPU UperNet with the catalogue backbone and the demo's ADE layout."""
    classes = ("background", *FASHION_CLASSES)
    palette = [[0, 0, 0]] + [[(37 * k) % 256, (91 * k) % 256, (151 * k) % 256]
                             for k in range(1, len(classes))]
    crop = r.scene_size
    class_weight = [r.seg_background_weight] + [1.0] * len(FASHION_CLASSES)
    return f'''# Generated by tools/demo.py: {SEG_BASE.name} with a catalogue backbone on the demo scenes.
_base_ = [{str(SEG_BASE)!r}]
custom_imports = dict(imports=["segmentation", "segmentation.catalogue"], allow_failed_imports=False)
crop_size = ({crop}, {crop})
metainfo = dict(classes={classes!r}, palette={palette!r})
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(_delete_=True, type="CatalogueBackbone", **{backbone!r}),
    neck=None,
    decode_head=dict(in_channels=[{r.pyramid_channels}] * 4, channels={r.seg_head_channels},
                     num_classes={len(classes)}, loss_decode=dict(class_weight={class_weight!r})),
    auxiliary_head=dict(in_channels={r.pyramid_channels}, num_classes={len(classes)},
                        loss_decode=dict(class_weight={class_weight!r})),
    test_cfg=dict(_delete_=True, mode="whole"),
)
demo_dataset = dict(
    type="SegFolderDataset",
    data_root={str(data / "ade")!r},
    metainfo=metainfo,
    img_suffix=".png",
    reduce_zero_label=False,
)
# The base pipeline was written for its own crop size; the scenes are crop-sized already.
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadCheckedAnnotations"),
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(dataset=dict(demo_dataset, pipeline=train_pipeline,
                                     data_prefix=dict(img_path="images/training",
                                                      seg_map_path="annotations/training")))
val_dataloader = dict(dataset=dict(demo_dataset, data_prefix=dict(img_path="images/validation",
                                                                    seg_map_path="annotations/validation")))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr={r.seg_lr}))
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end={max(1, r.seg_iters // 10)}),
    dict(type="PolyLR", eta_min=0.0, power=1.0, by_epoch=False, begin={max(1, r.seg_iters // 10)},
         end={r.seg_iters}),
]
train_cfg = dict(max_iters={r.seg_iters}, val_interval={r.seg_iters})
default_hooks = dict(
    checkpoint=dict(interval={r.seg_iters}),
    logger=dict(interval={max(1, min(20, r.seg_iters))}),
)
randomness = dict(seed={seed})
'''


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "output/demo", help="where everything goes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="fine-tuning / probe seeds (>= 2 "
                   "for a spread)")
    p.add_argument("--mask-ratio", type=float, default=0.75, help="the MAE used for detection / segmentation")
    p.add_argument("--mask-ratio-sweep", action="store_true",
                   help=f"also pretrain at {', '.join(f'{x * 100:.0f}%%' for x in SWEEP)} and probe each")
    p.add_argument("--jobs", type=int, default=2, help="probe / fine-tuning runs at a time, one core each")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--pretrain-seed", type=int, default=0)
    p.add_argument("--pretrain-epochs", type=int)
    p.add_argument("--det-iters", type=int)
    p.add_argument("--seg-iters", type=int)
    p.add_argument("--skip", nargs="*", choices=["det", "seg"], default=[], help="leave out a task")
    p.add_argument("--also", nargs="*", default=[], metavar="BACKBONE",
                   help="more catalogue backbones for detection and segmentation: vit_supervised (trained "
                        "here with labels), resnet50_fpn, convnext_atto, timm:<name>")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run of every step (minutes, meaningless numbers)")
    p.add_argument("--fresh", action="store_true", help="delete --out first")
    args = p.parse_args(argv)
    for name in args.also:
        try:
            get_entry(name)
        except CatalogueError as exc:
            p.error(f"--also: {exc}")
        if name in ("vit_mae", "vit_random"):
            p.error(f"--also: {name} is always compared")
    if args.mask_ratio_sweep and args.mask_ratio not in SWEEP:
        p.error(f"--mask-ratio must be one of the sweep's ratios {SWEEP} with --mask-ratio-sweep")
    return args


if __name__ == "__main__":
    sys.exit(Demo(parse_args()).main())
