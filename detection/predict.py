"""A trained detector on image files: Detectron2's `DefaultPredictor` for LazyConfigs (the config's
model with its weights, fed as the test loader feeds it), and the overlays `tools/infer_det.py`
draws with Detectron2's `Visualizer`. An image that cannot be read is named and skipped, the
others still drawn; a checkpoint that cannot be read, or that does not hold every weight of the
config's model, stops with a `CheckpointError` naming the file."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.utils.visualizer import Visualizer

from mae_core.data import ImageReadError, list_images_recursively

from .data import check_categories, read_detection_image
from .engine import AtomicCheckpointer

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
        """(H, W, 3) array in the config's image format (`read_detection_image`) -> Detectron2
        `Instances` on the CPU, in the image's own coordinates."""
        h, w = image.shape[:2]
        aug = T.AugInput(image)
        self.augment(aug)
        tensor = torch.as_tensor(aug.image.transpose(2, 0, 1).copy()).to(self.device)
        return self.model([{"image": tensor, "height": h, "width": w}])[0]["instances"].to("cpu")


def draw_predictions(cfg, weights: str, inputs: list[str], output: str, confidence: float) -> list[Path]:
    """Every readable image under `inputs` (files, or folders at any depth) drawn with the
    predictions scoring at least `confidence`, one PNG per image in `output`, class names from the
    config's test dataset, whose category count must be the model's (`check_categories`). Images
    are read as training reads them (`read_detection_image`). Returns the images that could not be
    read."""
    images = list_images_recursively(inputs)
    thing_classes = check_categories(cfg, training=False)
    predictor = Predictor(cfg, weights)
    metadata = MetadataCatalog.get(f"{cfg.dataloader.test.dataset.name}_inference")
    metadata.set(thing_classes=thing_classes)
    out_dir = Path(output)
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
        instances = instances[instances.scores >= confidence]
        rgb = image if predictor.image_format == "RGB" else image[:, :, ::-1]
        overlay = Visualizer(rgb, metadata).draw_instance_predictions(instances)
        target = out_dir / f"{path.stem}.png"
        overlay.save(str(target))
        logger.info(f"{path}: {len(instances)} detections >= {confidence} -> {target}")
    return skipped
