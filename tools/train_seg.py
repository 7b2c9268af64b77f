"""Train a segmentor from an mmengine config: MMSegmentation's tools/train.py flags, and also on a
machine without CUDA (BN for SyncBN, float32 for AMP, gloo for `--launcher pytorch` under torchrun).

    python tools/train_seg.py configs/segmentation/upernet_vit_tiny_cpu.py --work-dir work_dirs/tiny
    torchrun --nproc-per-node 8 tools/train_seg.py \
        configs/segmentation/upernet_vit_base_512x512_160k_ade20k.py \
        --launcher pytorch --cfg-options model.pretrained=mae_pretrain_vit_base.pth
"""

from __future__ import annotations

import argparse

from mmengine.runner import Runner

from segmentation.runtime import (
    exit_on_error,
    init_cpu_distributed,
    load_mmseg_config,
    parse_with_launcher_args,
)


def parse_args(argv=None) -> argparse.Namespace:
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
    return parse_with_launcher_args(parser, argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    with exit_on_error("train_seg"):
        cfg = load_mmseg_config(args.config, args.launcher, args.work_dir, args.cfg_options, amp=args.amp)
        init_cpu_distributed(args.launcher)
        cfg.resume = args.resume
        Runner.from_cfg(cfg).train()


if __name__ == "__main__":
    main()
