"""COCO-format data for Detectron2: the standard layout, any json + image folder, and ViTDet's
large-scale-jitter augmentation.

The standard layout is Detectron2's own: `$DETECTRON2_DATASETS/coco/annotations/instances_{train,
val}2017.json` with images in `coco/{train,val}2017/`, registered at import as `coco_2017_train` /
`coco_2017_val`. Any other COCO json is registered by `coco_dataset(name, json_file, image_root)`,
which first checks the file, so that a broken dataset fails at start naming the bad item instead
of deep inside a data-loader worker.

Handling of awkward but valid input: an image without annotations is kept; training drops it
(Detectron2's `filter_empty`, which logs how many), evaluation keeps it (it still counts for
false positives). Crowd annotations are kept and ignored by training as usual."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import detectron2.data.transforms as T
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.datasets import load_coco_json
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm


class CocoDatasetError(ValueError):
    """A COCO json that cannot be used; the message names the file and the bad item."""


def check_coco_json(json_file: str | os.PathLike, image_root: str | os.PathLike) -> dict:
    """Reads and checks a COCO instances json; returns it. Raises `CocoDatasetError` naming the
    image or annotation at fault: a missing image file, an annotation of an unknown image or
    category, a polygon with fewer than three points, an empty or missing segmentation (Detectron2
    drops it and the mask head then fails in a data-loader worker), a box that is not [x, y, w, h]."""
    json_file, image_root = Path(json_file), Path(image_root)
    if not json_file.is_file():
        raise CocoDatasetError(f"COCO annotation file {json_file} does not exist")
    try:
        coco = json.loads(json_file.read_text())
    except json.JSONDecodeError as exc:
        raise CocoDatasetError(f"{json_file} is not valid JSON: {exc}") from exc
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise CocoDatasetError(f"{json_file}: expected a list under {key!r} (COCO instances format)")
    if not coco["categories"]:
        raise CocoDatasetError(f"{json_file}: 'categories' is empty")

    image_files = {}
    for img in coco["images"]:
        path = image_root / img["file_name"]
        if not path.is_file():
            raise CocoDatasetError(
                f"{json_file}: image id {img['id']} names {img['file_name']!r}, but {path} does not exist"
            )
        image_files[img["id"]] = img["file_name"]
    category_ids = {c["id"] for c in coco["categories"]}
    for ann in coco["annotations"]:
        where = (
            f"{json_file}: annotation id {ann.get('id')} (image id {ann.get('image_id')}, "
            f"{image_files.get(ann.get('image_id'), 'unknown file')})"
        )
        if ann.get("image_id") not in image_files:
            raise CocoDatasetError(f"{where} refers to an image that is not listed in 'images'")
        if ann.get("category_id") not in category_ids:
            raise CocoDatasetError(
                f"{where} has category_id {ann.get('category_id')}, which is not in 'categories' "
                f"(known ids: {sorted(category_ids)})"
            )
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and bbox[2] >= 0 and bbox[3] >= 0):
            raise CocoDatasetError(
                f"{where} has bbox {bbox}; expected [x, y, width, height] with width, height >= 0"
            )
        segm = ann.get("segmentation")
        if not segm or not isinstance(segm, (list, dict)):
            raise CocoDatasetError(
                f"{where} has segmentation {segm!r}; expected polygons [[x1, y1, x2, y2, ...], ...] or "
                "an RLE {'counts': ..., 'size': [h, w]} (remove the annotation if the object has no mask)"
            )
        if isinstance(segm, dict) and not (segm.get("counts") and segm.get("size")):
            raise CocoDatasetError(f"{where} has an RLE segmentation without 'counts' or 'size'")
        if isinstance(segm, list):
            for poly in segm:
                if not isinstance(poly, list):
                    raise CocoDatasetError(
                        f"{where} has segmentation {segm!r}; a polygon is a list of numbers"
                    )
                if len(poly) % 2 or len(poly) < 6:
                    raise CocoDatasetError(
                        f"{where} has a polygon with {len(poly)} coordinates; a polygon needs an even "
                        "number of coordinates and at least three points (6 numbers)"
                    )
    return coco


def register_coco(name: str, json_file: str | os.PathLike, image_root: str | os.PathLike) -> None:
    """Registers a COCO-format dataset under `name` (checked when first loaded). Registering the
    same name again with the same files is a no-op; with other files it is an error."""
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if (meta.get("json_file"), meta.get("image_root")) != (json_file, image_root):
            raise ValueError(
                f"dataset {name!r} is already registered with json {meta.get('json_file')} and images "
                f"{meta.get('image_root')}; choose another name for {json_file}"
            )
        return

    def load() -> list[dict]:
        check_coco_json(json_file, image_root)
        return load_coco_json(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")


def coco_dataset(
    name: str,
    json_file: str | None = None,
    image_root: str | None = None,
    filter_empty: bool = True,
) -> list[dict]:
    """Dataset dicts for a config: registers `name` first when files are given, else `name` must
    be registered already (e.g. Detectron2's `coco_2017_train`)."""
    if (json_file is None) != (image_root is None):
        raise ValueError(f"dataset {name!r}: give both json_file and image_root, or neither")
    if json_file is not None:
        register_coco(name, json_file, image_root)
    elif name not in DatasetCatalog.list():
        raise KeyError(f"dataset {name!r} is not registered; give json_file and image_root to register it")
    return get_detection_dataset_dicts(name, filter_empty=filter_empty)


def class_names(name: str, json_file: str | os.PathLike | None = None) -> list[str]:
    """Category names in Detectron2's contiguous-id order (sorted COCO ids), read from the json's
    'categories' when one is given, else from the registered metadata (e.g. `coco_2017_val`)."""
    if json_file is not None:
        categories = json.loads(Path(json_file).read_text())["categories"]
        return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    names = MetadataCatalog.get(name).get("thing_classes")
    if names is None:
        raise KeyError(f"dataset {name!r} has no registered class names; give its json_file")
    return list(names)


class ResumableTrainingSampler(TrainingSampler):
    """Detectron2's `TrainingSampler` (an endless stream of shuffled epochs from `seed`), started
    `skip` indices into this process's share of the stream."""

    def __init__(self, size: int, seed: int | None = None, skip: int = 0):
        super().__init__(size, shuffle=True, seed=seed)
        self.skip = skip

    def __iter__(self):
        yield from itertools.islice(super().__iter__(), self.skip, None)


def train_loader(dataset, *, mapper, total_batch_size: int, seed: int | None = None, start_iter: int = 0,
                 **kwargs):
    """Detectron2's `build_detection_train_loader` whose sampler (seed `seed`) continues where
    iteration `start_iter` starts, so that a resumed run reads the images the uninterrupted run
    would have read. Exact when every batch leaves Detectron2's aspect-ratio groups empty (all
    images of one orientation, or `aspect_ratio_grouping=False`) and `num_workers=0`; otherwise the
    images waiting in a group or prefetched by workers at the checkpoint are skipped."""
    per_process = total_batch_size // comm.get_world_size()
    sampler = ResumableTrainingSampler(len(dataset), seed=seed, skip=start_iter * per_process)
    # A seeded generator for the DataLoader: its worker seeds then come from `seed` and the rank, and
    # starting an iterator does not draw from torch's global generator (which a resume restores).
    return build_detection_train_loader(
        dataset,
        mapper=mapper,
        sampler=sampler,
        total_batch_size=total_batch_size,
        seed=None if seed is None else seed + comm.get_rank(),
        **kwargs,
    )


def lsj_augmentations(image_size: int = 1024, min_scale: float = 0.1, max_scale: float = 2.0) -> list:
    """ViTDet's large-scale jitter: flip, resize the image to a random scale of `image_size`,
    crop (without padding: the model pads to a square) to image_size x image_size."""
    return [
        T.RandomFlip(horizontal=True),
        T.ResizeScale(
            min_scale=min_scale, max_scale=max_scale, target_height=image_size, target_width=image_size
        ),
        T.FixedSizeCrop(crop_size=(image_size, image_size), pad=False),
    ]


def eval_augmentations(image_size: int = 1024) -> list:
    """Evaluation: the longer side resized to `image_size` (ViTDet)."""
    return [T.ResizeShortestEdge(short_edge_length=image_size, max_size=image_size)]


__all__ = [
    "CocoDatasetError",
    "check_coco_json",
    "class_names",
    "coco_dataset",
    "lsj_augmentations",
    "register_coco",
    "ResumableTrainingSampler",
    "train_loader",
    "eval_augmentations",
]
