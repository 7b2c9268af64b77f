"""Train a segmentor from an mmengine config: MMSegmentation's tools/train.py flags, and also on a
machine without CUDA (BN for SyncBN, float32 for AMP, gloo for `--launcher pytorch` under torchrun).
The run is segmentation.train.train.

    python tools/train_seg.py configs/segmentation/upernet_vit_tiny_cpu.py --work-dir work_dirs/tiny
    torchrun --nproc-per-node 8 tools/train_seg.py \
        configs/segmentation/upernet_vit_base_512x512_160k_ade20k.py \
        --launcher pytorch --cfg-options model.pretrained=mae_pretrain_vit_base.pth
    python tools/train_seg.py CONFIG --work-dir work_dirs/tiny --resume      # continue that run

One run per work dir: a run holds its work dir while it runs (`run.lock`), and a work dir holding
another run's checkpoints or scalars is refused without `--resume` (continue it) or `--overwrite`
(its checkpoints and <timestamp>/ log folders are deleted first). Scalars go to
<work dir>/<timestamp>/vis_data/ (scalars.json and TensorBoard events), the dumped config to
<work dir>/<config name>, checkpoints to <work dir>/iter_N.pth; the run's record (backbone,
checkpoint, seed, data evaluated) to <work dir>/run.json, which tools/compare.py reads.
"""

from __future__ import annotations

import argparse
import sys

from segmentation.train import add_run_flags, exit_on_error, parse_with_launcher_args, train


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
    add_run_flags(parser)
    args = parse_with_launcher_args(parser, argv)
    with exit_on_error("train_seg.py"):
        train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
