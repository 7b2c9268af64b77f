"""Classification evaluation of an encoder (tools/eval_cls.py is its command line): k-NN and linear
probe on frozen features, partial and full fine-tuning, for any catalogue backbone, on a folder with
`train/` and `val/` class sub-folders. The protocols themselves are mae_app.probe."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from mae_app.probe import (
    Classifier,
    GlobalPool,
    extract_features,
    fine_tune,
    freeze_all_but_last_blocks,
    knn_accuracy,
    labelled_loader,
    train_linear_probe,
)
from mae_core.catalogue import build_trunk, get_entry, trunk_feature_dim
from mae_core.checkpoint import export_backbone
from mae_core.config import IMAGENET_MEAN, IMAGENET_STD

MODES = ("knn", "linear", "partial", "finetune")


def run_record(ev: ClsEval) -> dict:
    """What an evaluation's run record (mae_core.run_record) says about it."""
    return {"task": "cls", "backbone": ev.backbone, "checkpoint": ev.checkpoint, "seed": ev.seed,
            "img_size": ev.img_size, "backbone_kwargs": {"arch": ev.arch, "patch_size": ev.patch_size},
            "eval_data": str(Path(ev.data) / "val"), "split": "val", "modes": list(ev.mode)}


@dataclass
class ClsEval:
    """One evaluation: the encoder, the data and every protocol's settings (tools/eval_cls.py --help)."""

    data: Path
    backbone: str = "vit_mae"
    checkpoint: str | None = None
    allow_pickle: bool = False
    arch: str = "vit_toy_patch4"
    patch_size: int | None = None
    img_size: int = 64
    mode: list[str] = field(default_factory=lambda: ["knn", "linear"])
    k: int = 20
    temperature: float = 0.07
    probe_epochs: int = 90
    probe_lr: float = 0.1
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    blocks: int = 1
    batch_size: int = 64
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    seed: int = 0
    num_workers: int = 0
    save_backbone: Path | None = None

    def __post_init__(self):
        if self.save_backbone and ("finetune" not in self.mode or get_entry(self.backbone).kind != "vit"):
            raise ValueError("--save-backbone needs --mode finetune and a vit_* backbone")


def make_trunk(ev: ClsEval, final_norm: bool = False) -> torch.nn.Module:
    """`final_norm` (ViTs only) keeps the encoder's last LayerNorm on the output tokens."""
    kwargs = {}
    if get_entry(ev.backbone).kind == "vit":
        kwargs.update(arch=ev.arch, img_size=ev.img_size, final_norm=final_norm)
        if ev.patch_size:
            kwargs["patch_size"] = ev.patch_size
    return build_trunk(ev.backbone, ev.checkpoint, allow_pickle=ev.allow_pickle, **kwargs)


def loaders(ev: ClsEval, train_aug: bool):
    common = dict(img_size=ev.img_size, batch_size=ev.batch_size, mean=ev.mean, std=ev.std,
                  num_workers=ev.num_workers, seed=ev.seed)
    return (labelled_loader(Path(ev.data) / "train", train=train_aug, **common),
            labelled_loader(Path(ev.data) / "val", train=False, **common))


def frozen_protocols(ev: ClsEval, results: dict) -> None:
    """k-NN and linear probe on features computed once (final norm applied for ViTs: MAE trains it)."""
    trunk = make_trunk(ev, final_norm=True).eval()
    train_loader, val_loader = loaders(ev, train_aug=False)
    encode = GlobalPool(trunk)
    train = extract_features(encode, tqdm(train_loader, desc="features train", leave=False))
    val = extract_features(encode, tqdm(val_loader, desc="features val", leave=False))
    num_classes = len(train_loader.dataset.classes)
    results.update(num_classes=num_classes, num_train=len(train[0]), num_val=len(val[0]))
    if "knn" in ev.mode:
        results["knn_acc"] = knn_accuracy(*train, *val, num_classes, ev.k, ev.temperature)
    if "linear" in ev.mode:
        probe = train_linear_probe(*train, *val, num_classes, epochs=ev.probe_epochs, lr=ev.probe_lr,
                                   seed=ev.seed)
        results["linear_acc"] = probe.accuracy


def tuned_protocol(ev: ClsEval, partial: bool, results: dict) -> None:
    """Partial (the last `blocks` blocks) or full fine-tuning; full fine-tuning of a ViT may keep its
    trained backbone (`save_backbone`, the encoder-only export of mae_core.checkpoint)."""
    torch.manual_seed(ev.seed)
    trunk = make_trunk(ev)
    train_loader, val_loader = loaders(ev, train_aug=True)
    model = Classifier(trunk, trunk_feature_dim(trunk), len(train_loader.dataset.classes))
    if partial:
        freeze_all_but_last_blocks(model, ev.blocks)
    desc = "partial fine-tuning" if partial else "fine-tuning"
    result = fine_tune(model, train_loader, val_loader, ev.epochs, lr=ev.lr,
                       weight_decay=ev.weight_decay, layer_decay=ev.layer_decay,
                       progress=lambda epochs: tqdm(epochs, desc=desc, unit="epoch"))
    results["partial_acc" if partial else "finetune_acc"] = result.accuracy
    results["partial_history" if partial else "finetune_history"] = result.history
    if not partial and ev.save_backbone:
        net = trunk.net
        heads = {"num_heads": net.blocks[0].attn.num_heads}
        export_backbone(net.state_dict(), ev.save_backbone, arch_record=heads)
        results["saved_backbone"] = str(ev.save_backbone)


def evaluate(ev: ClsEval) -> dict:
    """Every protocol of `ev.mode`; the results (accuracies in [0, 1]) with what produced them."""
    torch.manual_seed(ev.seed)
    results = {"backbone": ev.backbone, "checkpoint": ev.checkpoint, "data": str(ev.data), "seed": ev.seed,
               "img_size": ev.img_size}
    start = time.time()
    if {"knn", "linear"} & set(ev.mode):
        frozen_protocols(ev, results)
    if "partial" in ev.mode:
        tuned_protocol(ev, partial=True, results=results)
    if "finetune" in ev.mode:
        tuned_protocol(ev, partial=False, results=results)
    results["seconds"] = round(time.time() - start, 1)
    return results
