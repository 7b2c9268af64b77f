"""Train a segmentor from an mmengine config: MMSegmentation's tools/train.py flags, and also on a
machine without CUDA (BN for SyncBN, float32 for AMP, gloo for `--launcher pytorch` under torchrun).
The run is segmentation.train.train.

    python tools/train_seg.py configs/segmentation/upernet_vit_tiny_cpu.py --work-dir work_dirs/tiny
    torchrun --nproc-per-node 8 tools/train_seg.py \
        configs/segmentation/upernet_vit_base_512x512_160k_ade20k.py \
        --launcher pytorch --cfg-options model.pretrained=mae_pretrain_vit_base.pth
"""

from __future__ import annotations

import argparse
import sys

from segmentation.train import exit_on_error, parse_with_launcher_args, train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="train config file")
    parser.add_argument("--work-dir", help="where logs and checkpoints go (default: work_dirs/<config name>)")
    parser.add_argument(
        "--resume", action="store_true", help="resume from the latest checkpoint in the work dir"
    )
    parser.add_argument(
        "--amp", action="store_true", help="mixed precision (GPU only; the ViT configs have it on)"
    )
    args = parse_with_launcher_args(parser, argv)
    with exit_on_error("train_seg"):
        train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
