#!/usr/bin/env python
"""Classification evaluation of an encoder: k-NN, linear probe, partial and full fine-tuning.

    # MAE encoder vs the same ViT at random initialisation, on the demo's classification folders
    python tools/eval_cls.py --data data/demo/cls --backbone vit_mae --checkpoint out/pretrain/ckpt.pth \\
        --arch vit_toy_patch4 --img-size 64 --mode knn linear --output out/eval/mae.json
    python tools/eval_cls.py --data data/demo/cls --backbone vit_random --arch vit_toy_patch4 --img-size 64 \\
        --mode knn linear --output out/eval/random.json
    # a ViT pretrained with labels (the catalogue's vit_supervised): fine-tune from scratch, keep the backbone
    python tools/eval_cls.py --data data/demo/cls --backbone vit_random --mode finetune --epochs 30 \\
        --save-backbone out/supervised/backbone.pth

`--data` holds `train/` and `val/`, each with one sub-folder per class. Any catalogue backbone
(mae_core/catalogue.py) works; partial fine-tuning needs one that reports layer ids (the ViTs).
Results go to stdout and, with --output, to a JSON file."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from mae_core.catalogue import CATALOGUE, build_trunk, get_entry, trunk_feature_dim  # noqa: E402
from mae_core.checkpoint import save_checkpoint  # noqa: E402
from mae_core.config import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from mae_app.probe import (  # noqa: E402
    Classifier,
    GlobalPool,
    extract_features,
    fine_tune,
    freeze_all_but_last_blocks,
    knn_accuracy,
    labelled_loader,
    train_linear_probe,
)

MODES = ("knn", "linear", "partial", "finetune")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with train/ and val/ class folders")
    p.add_argument("--backbone", default="vit_mae",
                   help=f"catalogue name: {', '.join(CATALOGUE)}, timm:<name>")
    p.add_argument("--checkpoint", default=None, help="weights for the backbone (required by vit_mae)")
    p.add_argument("--allow-pickle", action="store_true", help="load pickled checkpoints you trust")
    p.add_argument("--arch", default="vit_toy_patch4", help="ViT size for vit_* backbones")
    p.add_argument("--patch-size", type=int, default=None, help="override the ViT size's patch size")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--mode", nargs="+", choices=MODES, default=["knn", "linear"])
    p.add_argument("--k", type=int, default=20, help="k-NN neighbours")
    p.add_argument("--temperature", type=float, default=0.07, help="k-NN vote temperature")
    p.add_argument("--probe-epochs", type=int, default=90)
    p.add_argument("--probe-lr", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (partial and full)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--layer-decay", type=float, default=0.75)
    p.add_argument("--blocks", type=int, default=1, help="partial fine-tuning: train the last k blocks")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--mean", type=float, nargs="+", default=list(IMAGENET_MEAN))
    p.add_argument("--std", type=float, nargs="+", default=list(IMAGENET_STD))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--save-backbone", type=Path, default=None,
                   help="after full fine-tuning, write the trained ViT backbone here (official layout)")
    p.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def make_trunk(args: argparse.Namespace, final_norm: bool = False) -> torch.nn.Module:
    """`final_norm` (ViTs only) keeps the encoder's last LayerNorm on the output tokens."""
    kwargs = {}
    if get_entry(args.backbone).kind == "vit":
        kwargs.update(arch=args.arch, img_size=args.img_size, final_norm=final_norm)
        if args.patch_size:
            kwargs["patch_size"] = args.patch_size
    return build_trunk(args.backbone, args.checkpoint, allow_pickle=args.allow_pickle, **kwargs)


def loaders(args: argparse.Namespace, train_aug: bool):
    common = dict(img_size=args.img_size, batch_size=args.batch_size, mean=args.mean, std=args.std,
                  num_workers=args.num_workers, seed=args.seed)
    return (labelled_loader(args.data / "train", train=train_aug, **common),
            labelled_loader(args.data / "val", train=False, **common))


def frozen_protocols(args: argparse.Namespace, results: dict) -> None:
    """k-NN and linear probe on features computed once (final norm applied for ViTs: MAE trains it)."""
    trunk = make_trunk(args, final_norm=True).eval()
    train_loader, val_loader = loaders(args, train_aug=False)
    encode = GlobalPool(trunk)
    train = extract_features(encode, tqdm(train_loader, desc="features train", leave=False))
    val = extract_features(encode, tqdm(val_loader, desc="features val", leave=False))
    num_classes = len(train_loader.dataset.classes)
    results.update(num_classes=num_classes, num_train=len(train[0]), num_val=len(val[0]))
    if "knn" in args.mode:
        results["knn_acc"] = knn_accuracy(*train, *val, num_classes, args.k, args.temperature)
    if "linear" in args.mode:
        probe = train_linear_probe(*train, *val, num_classes, epochs=args.probe_epochs, lr=args.probe_lr,
                                   seed=args.seed)
        results["linear_acc"] = probe.accuracy


def tuned_protocol(args: argparse.Namespace, partial: bool, results: dict) -> None:
    torch.manual_seed(args.seed)
    trunk = make_trunk(args)
    train_loader, val_loader = loaders(args, train_aug=True)
    model = Classifier(trunk, trunk_feature_dim(trunk), len(train_loader.dataset.classes))
    if partial:
        freeze_all_but_last_blocks(model, args.blocks)
    desc = "partial fine-tuning" if partial else "fine-tuning"
    result = fine_tune(model, train_loader, val_loader, args.epochs, lr=args.lr,
                       weight_decay=args.weight_decay, layer_decay=args.layer_decay,
                       progress=lambda epochs: tqdm(epochs, desc=desc, unit="epoch"))
    results["partial_acc" if partial else "finetune_acc"] = result.accuracy
    results["partial_history" if partial else "finetune_history"] = result.history
    if not partial and args.save_backbone:
        net = trunk.net
        arch = {"embed_dim": net.embed_dim, "depth": net.depth, "num_heads": net.blocks[0].attn.num_heads,
                "patch_size": net.patch_size, "img_size": list(net.img_size), "in_chans": net.in_chans}
        save_checkpoint({"model": net.state_dict(), "arch": arch}, args.save_backbone)
        results["saved_backbone"] = str(args.save_backbone)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.save_backbone and ("finetune" not in args.mode or get_entry(args.backbone).kind != "vit"):
        print("error: --save-backbone needs --mode finetune and a vit_* backbone", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    results = {"backbone": args.backbone, "checkpoint": args.checkpoint, "data": str(args.data),
               "seed": args.seed, "img_size": args.img_size}
    start = time.time()
    if {"knn", "linear"} & set(args.mode):
        frozen_protocols(args, results)
    if "partial" in args.mode:
        tuned_protocol(args, partial=True, results=results)
    if "finetune" in args.mode:
        tuned_protocol(args, partial=False, results=results)
    results["seconds"] = round(time.time() - start, 1)
    for key in ("knn_acc", "linear_acc", "partial_acc", "finetune_acc"):
        if key in results:
            print(f"{key:13s} {100 * results[key]:.2f}%")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
