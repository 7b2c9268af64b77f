"""`make demo`: the whole pipeline at toy scale on real bundled images, on a CPU (tools/demo.py is
its command line).

    build the data -> pretrain a tiny MAE -> reconstruction picture -> k-NN and linear probe of the
    MAE encoder against random initialisation -> Mask R-CNN from MAE init and from random init ->
    UperNet from both -> the trained models evaluated on the held-out scenes -> comparison report
    (report.md, plots; the table printed at the end)

Every probe and fine-tuning runs with three seeds, so the report's verdicts (mae_app.report's rule:
a difference of means against twice its standard error) have a spread to judge by.

Sweeps pretrain several MAEs that differ in one setting and probe each: `mask_ratio_sweep` the
mask ratio (beside the main demo), `masking_sweep` the masking strategy (instead of it: every
strategy at the same ratio and epochs, each with two or more pretraining seeds so the spread covers
the pretraining, detection and segmentation with `sweep_transfer`, one picture of every strategy's
masks). Both are a list of `Pretraining`s.

Every step's files go under `out`; a finished step (a `.done` marker) is not run again, so an
interrupted demo continues where it stopped. Each step runs a tool by its command line (its log in
its folder): tools/make_demo_data.py, tools/pretrain.py, tools/visualize_mae.py, tools/eval_cls.py,
and tools/train_det.py / tools/train_seg.py on the demo's config files
(configs/detection/demo_mask_rcnn_vit_toy.py, configs/segmentation/demo_upernet_vit_toy.py), which
take the backbone, checkpoint, seed, iterations, output folder and data paths as overrides; the
held-out evaluations are tools/train_det.py --eval-only and tools/test_seg.py on the same configs
with the trained run's weights and the held-out scenes as the test set."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mae_app.curves import is_default_protocol
from mae_app.demo_data import HELDOUT, DemoDataBuilder, DemoDataSpec
from mae_app.jobs import execute_plan, thread_env
from mae_app.report import stack_pictures, write_report
from mae_app.runs import load_run
from mae_core.catalogue import get_entry
from mae_core.config import IMAGENET_MEAN, IMAGENET_STD
from mae_core.data import FASHION_MNIST_INSTALL, DatasetNotFoundError, find_fashion_mnist
from mae_core.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PRETRAIN_CONFIG = REPO / "configs/pretrain/fashion_mnist_toy.py"
DET_CONFIG = REPO / "configs/detection/demo_mask_rcnn_vit_toy.py"
SEG_CONFIG = REPO / "configs/segmentation/demo_upernet_vit_toy.py"
# --frozen: the backbone fixed; Mask R-CNN's pyramid and heads train, segmentation is a linear head.
FROZEN_CONFIGS = {"det": REPO / "configs/detection/demo_mask_rcnn_vit_toy_frozen.py",
                  "seg": REPO / "configs/segmentation/demo_linear_vit_toy_frozen.py"}
RATIO_SWEEP = (0.25, 0.5, 0.75, 0.9)
# The masking sweep: each strategy of mae_core.masking with its parameters for the demo's 16x16
# patch grid (64 px images, patch 4).
MASKING_SWEEP = {
    "random": {},
    "block": {},  # BEiT's blocks, at least 16 patches each
    # ColorMAE's green noise: masked blobs of about 3 patches, 6.5 patches apart (2.5 periods across)
    "filtered_noise": {"sigma": 1.0, "band": "band"},
    "hard_patches": {},  # HPM: up to half of the masked patches the hardest predicted, loss head of 64
    "salience": {"measure": "contrast"},  # the item's patches masked first (see docs/masking.md)
}
PYRAMID_CHANNELS = 128  # the demo configs' pyramid width (their heads are sized for it)


def tool(name: str) -> str:
    return str(REPO / "tools" / f"{name}.py")


@dataclass
class Recipe:
    """The toy recipe: the data (one DemoDataSpec, the single place of the data's sizes), the
    pretraining and the fine-tuning budgets. Heads, learning rates and the segmentation class
    weights live in the demo's config files. `quick()` shrinks it to a smoke run."""

    data: DemoDataSpec = field(default_factory=DemoDataSpec)
    arch: str = "vit_toy_patch4"
    pretrain_epochs: int = 15     # its time on two cores: docs/results.md
    # Each of the masking sweep's pretrainings: the main demo's length, at which random masking is
    # ahead of random initialisation on the probes (shorter ones were not; docs/masking.md).
    sweep_epochs: int = 15
    pretrain_batch: int = 128
    knn_every: int = 5
    det_iters: int = 500
    seg_iters: int = 1000         # at batch 8 and 64 px (SEG_CONFIG says why)
    supervised_epochs: int = 10
    # --label-efficiency: the labelled fractions (nested subsets of one seeded permutation of the
    # training scenes, the same for every backbone and seed).
    label_fractions: tuple[float, ...] = (0.1, 0.25, 1.0)
    subset_seed: int = 0

    @classmethod
    def quick(cls) -> Recipe:
        data = DemoDataSpec(train_scenes=8, val_scenes=4, heldout_scenes=4, pretrain_images=128,
                            cls_train_per_class=6, cls_val_per_class=3)
        return cls(data=data, pretrain_epochs=1, sweep_epochs=1, pretrain_batch=32, knn_every=1, det_iters=4,
                   seg_iters=4, supervised_epochs=1)

    def transfer_iters(self, task: str, fraction: float) -> int:
        """The schedule of a run on `fraction` of the labels. Segmentation: the full recipe's
        iterations times sqrt(fraction), so a small subset is seen for more epochs than the full set
        (10 %: 3.2x as many passes in 0.32x the steps) without the full schedule's cost. Detection:
        the full iterations, as Mask R-CNN's AP comes after its learning-rate steps, in the last
        quarter of the schedule (docs/label_efficiency.md measures both)."""
        if task == "det":
            return self.det_iters
        return max(1, round(self.seg_iters * fraction ** 0.5))

    def vit_options(self) -> dict:
        """The ViT backbone of detection and segmentation, as the demo configs build it: ViTDet-style
        windows at the scene size (32x32 tokens), two global blocks, pretrained at the image size."""
        return {"arch": self.arch, "img_size": self.data.scene_size,
                "pretrain_img_size": self.data.image_size, "window_size": 8, "global_blocks": (1, 3)}


@dataclass
class DemoOptions:
    """What the demo's command line chooses (tools/demo.py --help)."""

    output_dir: Path
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # Detection and segmentation seeds where fewer than the probes' (a run costs minutes, a probe
    # seconds); default: `seeds`.
    transfer_seeds: list[int] | None = None
    mask_ratio: float = 0.75
    mask_ratio_sweep: bool = False
    masking_sweep: bool = False
    sweep_transfer: bool = False
    sweep_epochs: int | None = None
    jobs: int = 2
    data_seed: int = 0
    # Seeds of the MAE pretraining(s): one pretraining per seed (and per swept value); default 0,
    # with the masking sweep 0 1.
    pretrain_seeds: list[int] | None = None
    pretrain_epochs: int | None = None
    det_iters: int | None = None
    seg_iters: int | None = None
    skip: list[str] = field(default_factory=list)
    also: list[str] = field(default_factory=list)
    quick: bool = False
    fresh: bool = False
    # Transfer on labelled fractions (fine-tuned), and with the backbone frozen (at those fractions
    # with label_efficiency, else on every label); both add the supervised ViT to the comparison.
    label_efficiency: bool = False
    frozen: bool = False

    def __post_init__(self):
        for name in self.also:
            get_entry(name)  # CatalogueError (a ValueError) names the unknown backbone
            if name in ("vit_mae", "vit_random"):
                raise ValueError(f"--also: {name} is always compared")
        if self.mask_ratio_sweep and self.mask_ratio not in RATIO_SWEEP:
            raise ValueError(f"--mask-ratio must be one of the sweep's ratios {RATIO_SWEEP} "
                             "with --mask-ratio-sweep")
        if self.mask_ratio_sweep and self.masking_sweep:
            raise ValueError("--mask-ratio-sweep and --masking-sweep: one sweep at a time")
        swept = (self.sweep_transfer, self.sweep_epochs is not None)
        if any(swept) and not self.masking_sweep:
            raise ValueError("--sweep-transfer and --sweep-epochs belong to --masking-sweep")
        if self.pretrain_seeds is None:
            self.pretrain_seeds = [0, 1] if self.masking_sweep else [0]
        if self.transfer_seeds is not None and self.masking_sweep and not self.sweep_transfer:
            raise ValueError("--transfer-seeds: the masking sweep fine-tunes nothing without "
                             "--sweep-transfer")
        if self.transfer_seeds is None:
            self.transfer_seeds = list(self.seeds)
        if self.label_efficiency or self.frozen:
            if self.masking_sweep:
                raise ValueError("--label-efficiency and --frozen compare backbones of the main demo, "
                                 "not the masking sweep's")
            if "vit_supervised" not in self.also:
                self.also.append("vit_supervised")

    def protocols(self, fractions: tuple[float, ...]) -> list[tuple[float, bool]]:
        """(labelled fraction, frozen) of every run beside the main demo's (every label, fine-tuned)."""
        fractions = fractions if self.label_efficiency else (1.0,)
        out = [(f, False) for f in fractions if f < 1 and self.label_efficiency]
        return out + [(f, True) for f in fractions if self.frozen]


@dataclass(frozen=True)
class Pretraining:
    """One MAE pretraining of the demo (tools/pretrain.py overrides); a sweep is a list of them
    differing in one field. Everything else is the recipe's."""

    epochs: int
    mask_ratio: float = 0.75
    masking: str = "random"
    masking_args: dict = field(default_factory=dict)
    seed: int = 0

    def folder_name(self, main_epochs: int) -> str:
        """`mask75` for the main demo's at seed 0; the strategy, the epochs and the seed are added
        where they differ from it, so a finished run of other settings is never taken for this one."""
        strategy = "" if self.masking == "random" else f"_{self.masking}"
        epochs = "" if self.epochs == main_epochs else f"_{self.epochs}ep"
        seed = "" if self.seed == 0 else f"_seed{self.seed}"
        return f"mask{round(100 * self.mask_ratio)}{strategy}{epochs}{seed}"

    def overrides(self) -> list[str]:
        return [f"model.mask_ratio={self.mask_ratio}", f"model.masking={self.masking}",
                f"model.masking_args={self.masking_args!r}", f"epochs={self.epochs}", f"seed={self.seed}"]

    def record(self) -> dict:
        """What the run records of its probes and fine-tunings say about it (the report's sweeps;
        a report row spans the pretraining seeds)."""
        return {"mask_ratio": self.mask_ratio, "masking": self.masking, "pretrain_seed": self.seed}


def spec_argv(spec: DemoDataSpec) -> list[str]:
    """tools/make_demo_data.py's flags for `spec` (one flag per field)."""
    argv = []
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        argv += ["--" + f.name.replace("_", "-"), *map(str, value if isinstance(value, tuple) else (value,))]
    return argv


def detection_overrides(backbone: str, checkpoint: str | None, data: Path, output_dir: Path, seed: int,
                        iters: int, test_split: str = "val") -> list[str]:
    """Detectron2 `key=value` overrides (hydra syntax: strings quoted, null) of DET_CONFIG for one run;
    `test_split` is the scenes it evaluates on (val, or heldout: mae_app.demo_data)."""
    coco = data / "coco"
    out = [f"model.backbone.name='{backbone}'",
           f"model.backbone.checkpoint='{checkpoint}'" if checkpoint else "model.backbone.checkpoint=null"]
    if not backbone.startswith("vit_"):
        out.append("model.backbone.options=null")
    return out + [
        f"dataloader.train.dataset.json_file='{coco / 'annotations/instances_train.json'}'",
        f"dataloader.train.dataset.image_root='{coco / 'train'}'",
        f"dataloader.test.dataset.json_file='{coco / f'annotations/instances_{test_split}.json'}'",
        f"dataloader.test.dataset.image_root='{coco / test_split}'",
        f"train.max_iter={iters}", f"train.eval_period={iters}", f"train.checkpointer.period={iters}",
        f"train.log_period={max(1, min(20, iters))}", f"train.seed={seed}",
        f"train.output_dir='{output_dir}'",
    ]


def segmentation_overrides(backbone: str, checkpoint: str | None, data: Path, seed: int,
                           iters: int, test_split: str = "val") -> list[str]:
    """mmengine `--cfg-options` of SEG_CONFIG for one run: a linear warm-up over the first tenth;
    the test set is the val scenes (SEG_CONFIG's) or, with `test_split="heldout"`, the held-out ones."""
    warmup = max(1, iters // 10)
    out = [f"model.backbone.name={backbone}", f"model.backbone.checkpoint={checkpoint}"]
    if not backbone.startswith("vit_"):
        out.append("model.backbone.options=None")
    if test_split != "val":
        folder = DemoDataBuilder.ADE_SPLITS[test_split]
        out += [f"test_dataloader.dataset.data_prefix.img_path=images/{folder}",
                f"test_dataloader.dataset.data_prefix.seg_map_path=annotations/{folder}"]
    return out + [
        *(f"{split}_dataloader.dataset.data_root={data / 'ade'}" for split in ("train", "val", "test")),
        f"train_cfg.max_iters={iters}", f"train_cfg.val_interval={iters}",
        f"default_hooks.checkpoint.interval={iters}",
        f"default_hooks.logger.interval={max(1, min(20, iters))}",
        f"param_scheduler.0.end={warmup}", f"param_scheduler.1.begin={warmup}",
        f"param_scheduler.1.end={iters}",
        f"randomness.seed={seed}",
    ]


class Demo:
    def __init__(self, options: DemoOptions):
        self.options = options
        self.out = Path(options.output_dir).resolve()
        self.recipe = Recipe.quick() if options.quick else Recipe()
        for key in ("pretrain_epochs", "det_iters", "seg_iters"):
            if getattr(options, key) is not None:
                setattr(self.recipe, key, getattr(options, key))
        self.recipe.data = dataclasses.replace(self.recipe.data, seed=options.data_seed)
        self.data = self.out / "data"
        self.start = time.time()
        if options.sweep_epochs is not None:
            self.recipe.sweep_epochs = options.sweep_epochs
        seeds = options.pretrain_seeds
        main = Pretraining(self.recipe.pretrain_epochs, options.mask_ratio, seed=seeds[0])
        self.main_pretraining = main
        # Every pretraining, and those detection and segmentation start from (at --mask-ratio).
        self.pretrainings = [dataclasses.replace(main, seed=seed) for seed in seeds]
        self.transfer = list(self.pretrainings)
        if options.mask_ratio_sweep:
            self.pretrainings = [dataclasses.replace(main, mask_ratio=r, seed=seed)
                                 for r in RATIO_SWEEP for seed in seeds]
        if options.masking_sweep:
            self.pretrainings = [Pretraining(self.recipe.sweep_epochs, options.mask_ratio, name, args, seed)
                                 for name, args in MASKING_SWEEP.items() for seed in seeds]
            self.transfer = self.pretrainings if options.sweep_transfer else []

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
        env = thread_env(threads)
        if log is None:
            code = subprocess.call(command, cwd=REPO, env=env)
        else:
            with open(log, "w") as f:
                code = subprocess.call(command, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        if code != 0:
            where = f"; see {log}" if log else ""
            raise UserError(f"step failed with exit code {code}: {' '.join(command)}{where}")
        marker.touch()

    # -- steps ---------------------------------------------------------------------------------------

    def ensure_fashion_mnist(self) -> None:
        try:
            find_fashion_mnist()
            return
        except DatasetNotFoundError as exc:
            if os.geteuid() != 0 or not shutil.which("apt-get"):
                raise UserError(f"{exc}\nRun as root: {FASHION_MNIST_INSTALL}") from exc
        print(f"    Fashion-MNIST is missing; installing it: {FASHION_MNIST_INSTALL}")
        if subprocess.call(FASHION_MNIST_INSTALL.split()) != 0:
            raise UserError(f"could not install Fashion-MNIST; run as root: {FASHION_MNIST_INSTALL}")
        find_fashion_mnist()

    def build_data(self) -> None:
        self.step("1/7 demo data: Fashion-MNIST items on scikit-image photos")
        self.ensure_fashion_mnist()
        self.run([PYTHON, tool("make_demo_data"), "--output-dir", str(self.data),
                  *spec_argv(self.recipe.data)], self.data / ".done")

    def pretrain_dir(self, pretraining: Pretraining) -> Path:
        return self.out / "pretrain" / pretraining.folder_name(self.recipe.pretrain_epochs)

    def checkpoint(self, pretraining: Pretraining) -> Path:
        return self.pretrain_dir(pretraining) / "last.pth"

    def pretrain_command(self, p: Pretraining) -> list[str]:
        """tools/pretrain.py on the demo's images; `log_every=2` puts log lines inside every epoch,
        from which the report reads the pretraining's speed. `--resume`: a step stopped before its
        `.done` marker continues its own run when the demo is started again (a fresh folder starts
        fresh)."""
        r, size = self.recipe, self.recipe.data.image_size
        hook = {"target": "mae_app.probe.KNNMonitorHook", "train_root": str(self.data / "cls/train"),
                "val_root": str(self.data / "cls/val"), "img_size": size, "every": r.knn_every}
        return [PYTHON, tool("pretrain"), "--config", str(PRETRAIN_CONFIG), "--output-dir",
                str(self.pretrain_dir(p)), f"model.arch={r.arch}", f"model.img_size={size}",
                "model.in_chans=3", "model.norm_pix_loss=True", *p.overrides(), "data.dataset=image_folder",
                f"data.root={self.data / 'pretrain'}", f"data.mean={IMAGENET_MEAN}",
                f"data.std={IMAGENET_STD}", "data.limit=None", "data.num_workers=0", "log_every=2",
                f"batch_size={r.pretrain_batch}", f"effective_batch={r.pretrain_batch}",
                f"epoch_hooks=({hook!r},)", "--resume"]

    def pretrain(self) -> None:
        for i, p in enumerate(self.pretrainings):
            self.step(f"2/7 MAE pretraining ({i + 1}/{len(self.pretrainings)}): {self.recipe.arch}, "
                      f"mask ratio {p.mask_ratio:.0%}, {p.masking} masking, {p.epochs} epochs, "
                      f"seed {p.seed}, k-NN monitor every {self.recipe.knn_every}")
            self.run(self.pretrain_command(p), self.pretrain_dir(p) / ".done", threads=os.cpu_count() or 1)

    def pictures(self) -> None:
        """tools/visualize_mae.py's pictures of the main MAE; for the masking sweep, of every
        strategy's MAE (its first pretraining seed's) on the same images with the same seed, stacked
        into one figure (a row per strategy: original, its mask, reconstruction)."""
        self.step("3/7 reconstruction pictures")
        folder = self.out / "pictures"
        if not self.options.masking_sweep:
            self.run([PYTHON, tool("visualize_mae"), str(self.checkpoint(self.main_pretraining)),
                      "--num-images", "4", "--output-dir", str(folder)], folder / ".done", folder / "log.txt")
            print(f"    pictures in {folder}")
            return
        rows = {}
        for p in self.pretrainings:
            if p.masking in rows:
                continue
            sub = folder / p.folder_name(self.recipe.pretrain_epochs)
            self.run([PYTHON, tool("visualize_mae"), str(self.checkpoint(p)), "--num-images", "3",
                      "--seed", "0", "--output-dir", str(sub)], sub / ".done", sub / "log.txt")
            rows[p.masking] = sorted(sub.glob("*_mae.png"))
        print(f"    pictures in {stack_pictures(rows, self.masking_figure)}")

    @property
    def masking_figure(self) -> Path:
        return self.out / "pictures" / "masking_sweep.png"

    def plan(self) -> list[dict]:
        """Every probe, detection and segmentation run, as mae_app.jobs plan entries."""
        entries = []
        for seed in self.options.seeds:
            for p in self.pretrainings:
                entries.append(self.cls_entry("vit_mae", seed, p))
            entries.append(self.cls_entry("vit_random", seed))
        if not self.transfer:
            return entries
        for task in ("det", "seg"):
            if task in self.options.skip:
                continue
            for seed in self.options.transfer_seeds:
                for p in self.transfer:
                    entries.append(self.dense_entry(task, "vit_mae", seed, p))
                for backbone in ("vit_random", *self.options.also):
                    entries.append(self.dense_entry(task, backbone, seed))
        return entries + self.protocol_plan()

    def protocol_plan(self) -> list[dict]:
        """The --label-efficiency and --frozen runs: every compared backbone, seed and protocol;
        segmentation first (the cheaper task), frozen runs before fine-tuned ones."""
        protocols = sorted(self.options.protocols(self.recipe.label_fractions), key=lambda p: not p[1])
        mae = self.main_pretraining
        return [self.dense_entry(task, backbone, seed, mae if backbone == "vit_mae" else None,
                                 fraction, frozen)
                for task in ("seg", "det") if task not in self.options.skip
                for fraction, frozen in protocols
                for seed in self.options.transfer_seeds
                for backbone in ("vit_mae", "vit_random", *self.options.also)]

    def heldout_plan(self, plan: list[dict]) -> list[dict]:
        """An evaluation on the held-out scenes of every detection and segmentation run of `plan`,
        with the weights it ends with; to run once those runs have finished."""
        return [self.heldout_entry(entry) for entry in plan
                if entry["run"]["task"] in ("det", "seg") and is_default_protocol(entry["run"])]

    def heldout_entry(self, trained: dict) -> dict:
        """The held-out evaluation of one trained run, in `runs/<task>_heldout/<its folder name>`:
        the tool's record of it is the trained run's with `"split": "heldout"`, as it evaluates
        other data than that run's val (mae_core.run_record; mae_app.report puts its numbers
        beside the val ones)."""
        run, r = trained["run"], self.recipe
        source = Path(trained["output_dir"])
        folder = source.parent.parent / f"{run['task']}_{HELDOUT}" / source.name
        model = (run["backbone"], run["checkpoint"], self.data)
        if run["task"] == "det":
            command = [PYTHON, tool("train_det"), "--config-file", str(DET_CONFIG), "--eval-only",
                       *detection_overrides(*model, folder, run["seed"], r.det_iters, test_split=HELDOUT),
                       f"train.init_checkpoint='{source / 'model_final.pth'}'"]
        else:
            command = [PYTHON, tool("test_seg"), str(SEG_CONFIG), str(source / f"iter_{r.seg_iters}.pth"),
                       "--work-dir", str(folder), "--cfg-options",
                       *segmentation_overrides(*model, run["seed"], r.seg_iters, test_split=HELDOUT)]
        record = {**run, "split": HELDOUT, "trained_in": str(source)}
        return {"run": record, "output_dir": str(folder), "command": command}

    def mae_record(self, pretraining: Pretraining) -> dict:
        return {**pretraining.record(), "pretrain_dir": str(self.pretrain_dir(pretraining))}

    def cls_entry(self, backbone: str, seed: int, pretraining: Pretraining | None = None) -> dict:
        r = self.recipe
        name = backbone + (f"_{pretraining.folder_name(r.pretrain_epochs)}" if pretraining else "")
        folder = self.out / "runs" / "cls" / f"{name}_s{seed}"
        command = [PYTHON, tool("eval_cls"), "--data", str(self.data / "cls"), "--backbone", backbone,
                   "--arch", r.arch, "--img-size", str(r.data.image_size), "--mode", "knn", "linear",
                   "--seed", str(seed), "--output-dir", str(folder)]
        run, adds = {"task": "cls", "backbone": backbone, "seed": seed}, {}
        if pretraining is not None:
            command += ["--checkpoint", str(self.checkpoint(pretraining))]
            adds = self.mae_record(pretraining)
        return {"run": {**run, **adds}, "adds": adds, "output_dir": str(folder), "command": command}

    def dense_entry(self, task: str, backbone: str, seed: int, pretraining: Pretraining | None = None,
                    fraction: float = 1.0, frozen: bool = False) -> dict:
        """One detection or segmentation run; a vit_mae one from `pretraining`'s checkpoint (its
        folder named after it when several pretrainings are fine-tuned). `fraction` < 1 trains on
        that labelled subset for `Recipe.transfer_iters`; `frozen` fixes the backbone
        (FROZEN_CONFIGS)."""
        r = self.recipe
        name = backbone.replace(":", "_")
        if pretraining is not None and len(self.transfer) > 1:
            name += f"_{pretraining.folder_name(r.pretrain_epochs)}"
        name += ("_frozen" if frozen else "") + (f"_labels{100 * fraction:g}" if fraction < 1 else "")
        folder = self.out / "runs" / task / f"{name}_s{seed}"
        iters = r.transfer_iters(task, fraction)
        config = FROZEN_CONFIGS[task] if frozen else {"det": DET_CONFIG, "seg": SEG_CONFIG}[task]
        subset = {"label_fraction": fraction, "subset_seed": r.subset_seed} if fraction < 1 else {}
        dataset = "dataloader.train.dataset" if task == "det" else "train_dataloader.dataset"
        subset_overrides = [f"{dataset}.{key}={value}" for key, value in subset.items()]
        checkpoint = self.checkpoint(pretraining) if pretraining else {
            "vit_supervised": self.supervised_checkpoint}.get(backbone)
        checkpoint = str(checkpoint) if checkpoint else None
        if task == "det":
            command = [PYTHON, tool("train_det"), "--config-file", str(config),
                       *detection_overrides(backbone, checkpoint, self.data, folder, seed, iters),
                       *subset_overrides]
        else:
            command = [PYTHON, tool("train_seg"), str(config), "--work-dir", str(folder), "--cfg-options",
                       *segmentation_overrides(backbone, checkpoint, self.data, seed, iters),
                       *subset_overrides]
        # Detection sees the scenes, batch 2; segmentation resizes them to the pretraining size, batch 8.
        size, batch = (r.data.scene_size, 2) if task == "det" else (r.data.image_size, 8)
        vit = {**r.vit_options(), "img_size": size} if backbone.startswith("vit_") else {}
        options = {"out_channels": PYRAMID_CHANNELS, **vit}
        adds = self.mae_record(pretraining) if pretraining else {}
        run = {"task": task, "backbone": backbone, "seed": seed, "img_size": size,
               "batch_size": batch, "checkpoint": checkpoint, "backbone_kwargs": options, **adds}
        if fraction < 1 or frozen:
            # The protocol is the tool's to record (mae_app.jobs checks it agrees); the schedule the plan's.
            adds["iters"] = iters
            run.update(subset, **({"frozen": True} if frozen else {}), iters=iters)
        return {"run": run, "adds": adds, "output_dir": str(folder), "command": command}

    @property
    def supervised_checkpoint(self) -> Path:
        return self.out / "supervised" / "backbone.pth"

    def supervised(self) -> None:
        """The catalogue's "ViT pretrained with labels": the same ViT trained from scratch on the
        demo's classification images, its backbone saved for detection and segmentation. It runs
        alone (before the plan), so it takes every core, as pretraining does."""
        if "vit_supervised" not in self.options.also or not self.transfer:
            return
        r = self.recipe
        self.step(f"2b/7 supervised ViT pretraining on the classification images "
                  f"({r.supervised_epochs} epochs)")
        folder = self.supervised_checkpoint.parent
        self.run([PYTHON, tool("eval_cls"), "--data", str(self.data / "cls"), "--backbone", "vit_random",
                  "--arch", r.arch, "--img-size", str(r.data.image_size), "--mode", "finetune",
                  "--epochs", str(r.supervised_epochs), "--save-backbone", str(self.supervised_checkpoint),
                  "--output-dir", str(folder)], folder / ".done", threads=os.cpu_count() or 1)

    def main(self) -> int:
        if self.options.fresh and self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.build_data()
        self.pretrain()
        self.supervised()
        self.pictures()
        plan = self.plan()
        plan_file = self.out / "plan.json"
        plan_file.write_text(json.dumps(plan, indent=2))
        tasks = "k-NN and linear probes" + (", Mask R-CNN and UperNet" if self.transfer else "")
        seeds = f"seeds {', '.join(map(str, self.options.seeds))}"
        if self.transfer and self.options.transfer_seeds != self.options.seeds:
            seeds += f"; detection and segmentation {', '.join(map(str, self.options.transfer_seeds))}"
        self.step(f"4-6/7 {tasks} from MAE and random init: {len(plan)} runs ({seeds}); "
                  f"logs in {self.out / 'runs'}")
        folders = execute_plan(plan_file, jobs=self.options.jobs)
        heldout = self.heldout_plan(plan)
        if heldout:
            heldout_file = self.out / "plan_heldout.json"
            heldout_file.write_text(json.dumps(heldout, indent=2))
            self.step(f"6b/7 the {len(heldout)} trained models on the held-out scenes; logs in "
                      f"{self.out / 'runs'}/*_{HELDOUT}")
            folders += execute_plan(heldout_file, jobs=self.options.jobs)
        self.step("7/7 comparison report")
        measured: dict = {}
        runs = [load_run(folder, cache=measured) for folder in folders]
        if self.options.masking_sweep:
            title = "MAE toolkit demo: masking strategies"
            figures = {"Masks and reconstructions, a row per strategy": self.masking_figure}
        else:
            title, figures = "MAE toolkit demo: MAE vs random initialisation", {}
        report = write_report(runs, self.out / "report", title, figures=figures)
        print(report.read_text())
        print(f"report: {report}\npictures: {self.out / 'pictures'}\n"
              f"total time: {(time.time() - self.start) / 60:.1f} min")
        return 0
