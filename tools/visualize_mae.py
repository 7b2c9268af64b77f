#!/usr/bin/env python
"""MAE reconstruction pictures: one PNG per image with four panels — original, masked input,
reconstruction, reconstruction with the visible patches pasted back.

    python tools/visualize_mae.py output/pretrain/fashion_mnist_toy/last.pth --num-images 8
    python tools/visualize_mae.py mae_visualize_vit_large.pth --allow-pickle --arch vit_large_patch16 \\
        --images photo.jpg --output-dir pictures

Images come from `--images` (files or folders, searched recursively) or, by default, from the data
set the checkpoint was trained on. A checkpoint without the toolkit's "arch" record (an official MAE
release) needs `--arch`; one without decoder weights cannot reconstruct and is refused."""

from __future__ import annotations

import argparse
import sys

import torch

from mae_app.visualize import load_images, load_mae, reconstruct, save_pictures, training_data_config
from mae_core.errors import UserError, exit_on_user_error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint")
    parser.add_argument("--images", nargs="+", help="image files or folders (default: the training data)")
    parser.add_argument("--num-images", type=int, default=4, help="how many images from the training data")
    parser.add_argument("--output-dir", default="output/mae_pictures")
    parser.add_argument("--mask-ratio", type=float, help="default: the model's")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random masks")
    parser.add_argument("--arch", help="MAE size for checkpoints without an arch record (vit_large_patch16)")
    parser.add_argument("--norm-pix-loss", action=argparse.BooleanOptionalAction, default=None,
                        help="with --arch: whether the checkpoint was trained with norm_pix_loss")
    parser.add_argument("--allow-pickle", action="store_true", help="trust a pickled (official) file")
    args = parser.parse_args(argv)

    with exit_on_user_error("visualize_mae.py"):
        try:  # a mask ratio or an --arch the model cannot take
            model, ckpt = load_mae(args.checkpoint, args.arch, args.allow_pickle, args.norm_pix_loss)
            if args.mask_ratio is not None:
                model.check_mask_ratio(args.mask_ratio)  # before reading any image
                model.mask_ratio = args.mask_ratio
            data_cfg = training_data_config(ckpt)
            imgs, names = load_images(model, data_cfg, args.images, args.num_images)
        except ValueError as exc:
            raise UserError(str(exc)) from None

    torch.manual_seed(args.seed)  # the model's own masking strategy draws the masks
    for path in save_pictures(reconstruct(model, imgs), names, args.output_dir, data_cfg):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
