"""Run a trained detector on image files or folders and write overlay PNGs.

    python tools/infer_det.py --config-file configs/detection/mask_rcnn_vit_tiny_cpu.py \
        --weights output/mask_rcnn_vit_tiny_cpu/model_final.pth --input photo.jpg images/ \
        --output overlays/ [--confidence 0.5] [key=value ...]

Folders are searched for images at any depth. Images are preprocessed as the config's test loader
does; boxes, masks, class names and scores are drawn with Detectron2's `Visualizer`. Class names come
from the config's test dataset, whose category count must be the model's class count. Images are
read as training reads them (16-bit at its scale).
An image that cannot be read is named and skipped; the others are still drawn, and the tool then
exits with status 1 listing the skipped files. A checkpoint that cannot be read, or that does not
hold every weight of the config's model, stops the tool naming the file."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer

from detection.data import CocoDatasetError, check_categories, read_detection_image
from detection.engine import AtomicCheckpointer
from detection.overrides import OverrideError, load_lazy_config
from mae_core.checkpoint import CheckpointError, NonFiniteError
from mae_core.data import ImageReadError, list_images_recursively

logger = logging.getLogger("detection")


class Predictor:
    """The config's model with its weights, fed as the test loader feeds it."""

    def __init__(self, cfg, weights: str):
        self.model = instantiate(cfg.model).to(cfg.train.device).eval()
        allow_pickle = cfg.train.get("allow_pickle", False)
        AtomicCheckpointer(self.model, allow_pickle=allow_pickle, strict=True).load(weights)
        self.augment = T.AugmentationList(instantiate(cfg.dataloader.test.mapper.augmentations))
        self.image_format = cfg.dataloader.test.mapper.image_format
        self.device = cfg.train.device

    @torch.no_grad()
    def __call__(self, image):
        h, w = image.shape[:2]
        aug = T.AugInput(image)
        self.augment(aug)
        tensor = torch.as_tensor(aug.image.transpose(2, 0, 1).copy()).to(self.device)
        return self.model([{"image": tensor, "height": h, "width": w}])[0]["instances"].to("cpu")


def main(argv=None) -> None:
    try:
        skipped = run(argv)
    except (CheckpointError, CocoDatasetError, NonFiniteError, OverrideError, FileNotFoundError) as exc:
        sys.exit(f"infer_det.py: error: {exc}")
    if skipped:
        sys.exit(f"infer_det.py: {len(skipped)} unreadable image(s) skipped: {', '.join(map(str, skipped))}")


def run(argv=None) -> list[Path]:
    """Draws every readable image; returns the images that could not be read."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", help="checkpoint to load (default: train.init_checkpoint of the config)")
    parser.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    parser.add_argument("--output", required=True, help="folder for the overlay PNGs")
    parser.add_argument("--confidence", type=float, default=0.5, help="minimum score drawn")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    setup_logger(name="detection")

    cfg = load_lazy_config(args.config_file, args.opts)
    weights = args.weights or cfg.train.init_checkpoint
    if not weights:
        parser.error("no weights: pass --weights or train.init_checkpoint=PATH")
    images = list_images_recursively(args.input)
    thing_classes = check_categories(cfg, training=False)
    predictor = Predictor(cfg, weights)
    metadata = MetadataCatalog.get(f"{cfg.dataloader.test.dataset.name}_inference")
    metadata.set(thing_classes=thing_classes)

    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped = []
    for path in images:
        try:
            image = read_detection_image(path, predictor.image_format)
        except ImageReadError as exc:  # unknown format, truncated data, 32-bit pixels
            logger.error(f"{path}: cannot read this image, skipped ({exc})")
            skipped.append(path)
            continue
        instances = predictor(image)
        instances = instances[instances.scores >= args.confidence]
        rgb = image if predictor.image_format == "RGB" else image[:, :, ::-1]
        overlay = Visualizer(rgb, metadata).draw_instance_predictions(instances)
        target = out_dir / f"{path.stem}.png"
        overlay.save(str(target))
        logger.info(f"{path}: {len(instances)} detections >= {args.confidence} -> {target}")
    return skipped


if __name__ == "__main__":
    main()
