"""Run a trained detector on image files or folders and write overlay PNGs.

    python tools/infer_det.py --config-file configs/detection/mask_rcnn_vit_tiny_cpu.py \
        --weights output/mask_rcnn_vit_tiny_cpu/model_final.pth --input photo.jpg images/ \
        --output-dir overlays/ [--confidence 0.5] [--allow-pickle] [key=value ...]

Folders are searched for images at any depth. Images are preprocessed as the config's test loader
does; boxes, masks, class names and scores are drawn with Detectron2's `Visualizer`. Class names come
from the config's test dataset, whose category count must be the model's class count. Images are
read as training reads them (16-bit at its scale). The predictor and the drawing are
detection/predict.py.
An image that cannot be read is named and skipped; the others are still drawn, and the tool then
exits with status 1 listing the skipped files. A checkpoint that cannot be read, or that does not
hold every weight of the config's model, stops the tool naming the file."""

from __future__ import annotations

import argparse
import sys

from detectron2.utils.logger import setup_logger

from detection.overrides import load_lazy_config, trust_pickles
from detection.predict import draw_predictions
from mae_core.errors import UserError, exit_on_user_error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", help="checkpoint to load (default: train.init_checkpoint of the config)")
    parser.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    parser.add_argument("--output-dir", required=True, help="folder for the overlay PNGs")
    parser.add_argument("--confidence", type=float, default=0.5, help="minimum score drawn")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="trust a pickled checkpoint (train.allow_pickle=True), e.g. a model-zoo .pkl")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    setup_logger(name="detection")
    with exit_on_user_error("infer_det.py"):
        cfg = load_lazy_config(args.config_file, args.opts)
        if args.allow_pickle:
            trust_pickles(cfg)
        weights = args.weights or cfg.train.init_checkpoint
        if not weights:
            parser.error("no weights: pass --weights or train.init_checkpoint=PATH")
        try:
            skipped = draw_predictions(cfg, weights, args.input, args.output_dir, args.confidence)
        except FileNotFoundError as exc:  # an --input path that does not exist
            raise UserError(str(exc)) from None
        if skipped:
            raise UserError(f"{len(skipped)} unreadable image(s) skipped: {', '.join(map(str, skipped))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
