"""Check a detection or segmentation dataset against a config before a long run: per split, the
image and annotation (or label map) counts; every missing or unreadable image, image of another
size than its annotation says, missing or mis-sized label map and broken annotation; and the
config's class count against the data, refused as training refuses it. Reads image headers only,
so a COCO or ADE20K tree takes seconds. Exits 1 listing every problem.

    python tools/check_data.py detection --config-file configs/detection/mask_rcnn_vit_base_100ep.py
    python tools/check_data.py detection --config-file CFG model.roi_heads.num_classes=2 \\
        dataloader.train.dataset.json_file=my_coco/train.json ...
    python tools/check_data.py segmentation \\
        --config-file configs/segmentation/upernet_vit_base_512x512_160k_ade20k.py \\
        --cfg-options train_dataloader.dataset.data_root=data/ade/ADEChallengeData2016

Detection reads `dataloader.{train,test}.dataset` (Detectron2's `coco_2017_*` from
`$DETECTRON2_DATASETS/coco` unless the config names a json); segmentation reads the train, val and
test dataloaders' datasets. The overrides are those the training tools take."""

from __future__ import annotations

import argparse
import sys

from mmengine.config import DictAction

from mae_app.datacheck import check_data
from mae_core.errors import exit_on_user_error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = parser.add_subparsers(dest="task", required=True)
    det = tasks.add_parser("detection", help="a Detectron2 LazyConfig (tools/train_det.py)")
    det.add_argument("--config-file", required=True, help="detection config file")
    det.add_argument("opts", nargs="*", help="key=value overrides, as tools/train_det.py takes them")
    seg = tasks.add_parser("segmentation", help="an MMSegmentation config (tools/train_seg.py)")
    seg.add_argument("--config-file", required=True, help="segmentation config file")
    seg.add_argument("--cfg-options", nargs="+", action=DictAction, help="key=value overrides")
    args = parser.parse_args(argv)
    with exit_on_user_error("check_data.py"):
        check_data(args.task, args.config_file, args.opts if args.task == "detection" else args.cfg_options)
    print("check_data.py: the data is ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
