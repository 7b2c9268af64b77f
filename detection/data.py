"""COCO-format data for Detectron2: the standard layout, any json + image folder, and ViTDet's
large-scale-jitter augmentation.

The standard layout is Detectron2's own: `$DETECTRON2_DATASETS/coco/annotations/instances_{train,
val}2017.json` with images in `coco/{train,val}2017/`, registered at import as `coco_2017_train` /
`coco_2017_val`. Any other COCO json is registered by `coco_dataset(name, json_file, image_root)`,
which first checks the file, so that a broken dataset fails at start naming the bad item instead
of deep inside a data-loader worker.

One category list per run: `check_categories` refuses a training set whose category count is not
the model's `roi_heads.num_classes` (Detectron2 would train the extra classes as background) and a
test set whose categories differ from the training set's in Detectron2's contiguous order (the
model's class 0 would be scored as another class). One image reader for every path: the mapper
`ScaleAwareDatasetMapper` reads through `mae_core.data.read_image`, as pretraining does (16-bit at
its scale, where PIL's `convert("RGB")` makes every pixel 255; 32-bit refused by name).

Handling of awkward but valid input: an image without annotations is kept; training drops it
(Detectron2's `filter_empty`, which logs how many), evaluation keeps it (it still counts for
false positives). Crowd annotations are kept and ignored by training as usual."""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
from pathlib import Path

import detectron2.data.transforms as T
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_train_loader,
    detection_utils,
    get_detection_dataset_dicts,
)
from detectron2.data.build import filter_images_with_only_crowd_annotations
from detectron2.data.datasets import load_coco_json
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm
from omegaconf import OmegaConf

from mae_core.data import ConversionNotes, read_image
from mae_core.datacheck import SplitReport, image_problems
from mae_core.errors import UserError
from mae_core.transfer import SubsetError, label_subset


class CocoDatasetError(UserError, ValueError):
    """A COCO json that cannot be used; the message names the file and the bad item."""


def check_coco_json(json_file: str | os.PathLike, image_root: str | os.PathLike) -> dict:
    """Reads and checks a COCO instances json; returns it. Raises `CocoDatasetError` naming the
    image or annotation at fault: a missing image file, an annotation of an unknown image or
    category, a polygon with fewer than three points, an empty or missing segmentation (Detectron2
    drops it and the mask head then fails in a data-loader worker), a box that is not [x, y, w, h]."""
    json_file, image_root = Path(json_file), Path(image_root)
    coco = _read_coco_json(json_file)
    for img in _listed_images(coco, json_file):
        path = image_root / img["file_name"]
        if not path.is_file():
            raise CocoDatasetError(
                f"{json_file}: image id {img['id']} names {img['file_name']!r}, but {path} does not exist"
            )
    check_coco_annotations(coco, json_file)
    return coco


def _listed_images(coco: dict, json_file: Path) -> list[dict]:
    for key in ("images", "annotations"):
        if not isinstance(coco.get(key), list):
            raise CocoDatasetError(f"{json_file}: expected a list under {key!r} (COCO instances format)")
    return coco["images"]


def check_coco_annotations(coco: dict, json_file: str | os.PathLike) -> None:
    """The annotation part of `check_coco_json` (the image files aside): each annotation names a
    listed image and category and has a usable box and segmentation."""
    image_files = {img["id"]: img["file_name"] for img in _listed_images(coco, Path(json_file))}
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


def _read_coco_json(json_file: Path) -> dict:
    """The json, with a non-empty 'categories' list of unique ids and names."""
    if not json_file.is_file():
        raise CocoDatasetError(f"COCO annotation file {json_file} does not exist")
    try:
        coco = json.loads(json_file.read_text())
    except json.JSONDecodeError as exc:
        raise CocoDatasetError(f"{json_file} is not valid JSON: {exc}") from exc
    categories = coco.get("categories") if isinstance(coco, dict) else None
    if not isinstance(categories, list):
        raise CocoDatasetError(f"{json_file}: expected a list under 'categories' (COCO instances format)")
    if not categories:
        raise CocoDatasetError(f"{json_file}: 'categories' is empty")
    for key in ("id", "name"):
        values = [c.get(key) for c in categories]
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise CocoDatasetError(f"{json_file}: category {key}s {', '.join(repeated)} appear twice or more")
    return coco


def register_coco(name: str, json_file: str | os.PathLike, image_root: str | os.PathLike) -> None:
    """Registers a COCO-format dataset under `name` (checked when first loaded). Registering the
    same name again with the same files is a no-op; with other files it is an error."""
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if (meta.get("json_file"), meta.get("image_root")) != (json_file, image_root):
            raise CocoDatasetError(
                f"dataset {name!r} is already registered with json {meta.get('json_file')} and images "
                f"{meta.get('image_root')}; give {json_file} a name of its own (in a config: "
                "dataloader.train.dataset.name=... or dataloader.test.dataset.name=...)"
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
    label_fraction: float | None = None,
    label_count: int | None = None,
    subset_seed: int = 0,
) -> list[dict]:
    """Dataset dicts for a config: registers `name` first when files are given, else `name` must
    be registered already (e.g. Detectron2's `coco_2017_train`).

    Args:
        name: the dataset's name in Detectron2's catalogue.
        json_file: a COCO instances json (checked on first load: `check_coco_json`).
        image_root: the folder its `file_name`s are relative to.
        filter_empty: drop images without annotations (training).
        label_fraction, label_count, subset_seed: keep a labelled subset of the images
            (`labelled_subset`: nested across fractions, the same for every backbone and seed), chosen
            before images without annotations are dropped, so it does not depend on `filter_empty`.
    """
    if (json_file is None) != (image_root is None):
        raise CocoDatasetError(f"dataset {name!r}: give both json_file and image_root, or neither")
    if json_file is not None:
        register_coco(name, json_file, image_root)
    elif name not in DatasetCatalog.list():
        raise KeyError(f"dataset {name!r} is not registered; give json_file and image_root to register it")
    if label_fraction is None and label_count is None:
        return get_detection_dataset_dicts(name, filter_empty=filter_empty)
    every_image = get_detection_dataset_dicts(name, filter_empty=False)
    dicts = labelled_subset(every_image, label_fraction, label_count, subset_seed)
    return filter_images_with_only_crowd_annotations(dicts) if filter_empty else dicts


def labelled_subset(dicts: list[dict], fraction: float | None, count: int | None, seed: int) -> list[dict]:
    """The dataset dicts of the images `mae_core.transfer.label_subset` picks by COCO image id
    (nested across fractions, the same for every backbone and training seed), logged with its size."""
    try:
        keep = set(label_subset((d["image_id"] for d in dicts), fraction, count, seed))
    except SubsetError as exc:
        raise CocoDatasetError(f"dataloader.train.dataset: {exc}") from exc
    subset = [d for d in dicts if d["image_id"] in keep]
    logging.getLogger("detection").info(
        f"labelled subset: {len(subset)} of {len(dicts)} images (label_fraction={fraction}, "
        f"label_count={count}, subset_seed={seed})")
    return subset


def categories(name: str, json_file: str | os.PathLike | None = None) -> list[tuple[int, str]]:
    """(COCO category id, name) in Detectron2's contiguous-id order (sorted ids; the model's class k
    is the k-th), read from the json's 'categories' when one is given, else from the registered
    metadata (e.g. `coco_2017_val`)."""
    if json_file is not None:
        listed = _read_coco_json(Path(json_file))["categories"]
        return sorted((c["id"], c["name"]) for c in listed)
    meta = MetadataCatalog.get(name)
    names, to_contiguous = meta.get("thing_classes"), meta.get("thing_dataset_id_to_contiguous_id")
    if names is None or to_contiguous is None:
        raise CocoDatasetError(f"dataset {name!r} has no registered categories; give its json_file")
    return sorted((dataset_id, names[k]) for dataset_id, k in to_contiguous.items())


class CategoryMismatchError(CocoDatasetError):
    """A model and a dataset, or a training and a test set, that disagree on the categories."""


def check_categories(cfg, *, training: bool) -> list[str]:
    """The run's class names, in the model's order, once the data and the model agree: the model's
    `roi_heads.num_classes` is the number of training categories (or of test categories, for a run
    that only evaluates or infers, `training=False`), and the test set lists the same categories
    under the same ids as the training set. A test set with fewer categories is refused too:
    Detectron2's evaluator maps classes by contiguous id, not by name."""
    test = _config_categories(cfg.dataloader.test.dataset)
    reference = _config_categories(cfg.dataloader.train.dataset) if training else test
    key, num_classes = _model_classes(cfg)
    if len(reference[1]) != num_classes:
        raise CategoryMismatchError(
            f"{key} is {num_classes}, but the {'training' if training else 'test'} set {reference[0]} has "
            f"{len(reference[1])} categories ({_listed(reference[1])}); set {key}={len(reference[1])}"
        )
    if training:
        _check_same_categories(reference, test)
    return [name for _, name in reference[1]]


def _config_categories(dataset) -> tuple[str, list[tuple[int, str]]]:
    """(where, categories) of a config's dataset node (`coco_dataset`'s arguments)."""
    json_file = dataset.get("json_file")
    where = json_file or f"{dataset.name!r} (registered)"
    return where, categories(dataset.name, json_file)


def _model_classes(cfg) -> tuple[str, int]:
    key = "model.roi_heads.num_classes"
    value = OmegaConf.select(cfg, key)
    if value is None:
        raise CategoryMismatchError(f"the config has no {key}: the class count to check the data against")
    return key, int(value)


def _check_same_categories(train: tuple[str, list], test: tuple[str, list]) -> None:
    (train_where, train_cats), (test_where, test_cats) = train, test
    for k, (ours, theirs) in enumerate(itertools.zip_longest(train_cats, test_cats)):
        if ours != theirs:
            raise CategoryMismatchError(
                f"the training set {train_where} and the test set {test_where} disagree on the categories: "
                f"class {k} (Detectron2's contiguous order, sorted ids) is {_category(ours)} in training and "
                f"{_category(theirs)} in the test set. Give both jsons the same 'categories' list (a "
                "category without annotations is allowed)"
            )


def _category(category: tuple[int, str] | None) -> str:
    return "absent" if category is None else f"id {category[0]} {category[1]!r}"


def _listed(cats: list[tuple[int, str]], n: int = 10) -> str:
    shown = ", ".join(f"{i}: {name}" for i, name in cats[:n])
    return shown + (f", ... {len(cats) - n} more" if len(cats) > n else "")


def check_data_tree(cfg) -> tuple[list[SplitReport], list[str]]:
    """The data check of `tools/check_data.py` for a detection config: per split (the config's
    `dataloader.{train,test}.dataset`), the image, annotation and category counts and every missing,
    unreadable or wrongly sized image and broken annotation; then, across splits, the refusals
    training would give (`check_categories`: the model's class count, the same categories in both
    jsons). Returns (reports, problems of no one split)."""
    reports = [_check_split(split, cfg.dataloader[split].dataset) for split in ("train", "test")]
    if any(report.classes is None for report in reports):
        return reports, []  # a json that cannot be read is already reported
    try:
        check_categories(cfg, training=True)
    except CocoDatasetError as exc:
        return reports, [str(exc)]
    return reports, []


def _check_split(split: str, dataset) -> SplitReport:
    json_file, image_root = _dataset_files(dataset)
    report = SplitReport(split, json_file)
    try:
        coco = _read_coco_json(Path(json_file))
        images = _listed_images(coco, Path(json_file))
    except CocoDatasetError as exc:
        report.problems.append(str(exc))
        return report
    report.images, report.annotations, report.classes = (
        len(images), len(coco["annotations"]), len(coco["categories"]))
    report.problems += image_problems(
        (Path(image_root) / img["file_name"], (img["height"], img["width"]) if "height" in img else None)
        for img in images
    )
    try:
        check_coco_annotations(coco, json_file)
    except CocoDatasetError as exc:
        report.problems.append(str(exc))
    return report


def _dataset_files(dataset) -> tuple[str, str]:
    """(json, image folder) of a config's dataset node: its own files, or those Detectron2
    registered under its name (`coco_2017_*` under `$DETECTRON2_DATASETS/coco`)."""
    if dataset.get("json_file") is not None:
        return str(dataset.json_file), str(dataset.image_root)
    meta = MetadataCatalog.get(dataset.name)
    if meta.get("json_file") is None:
        raise CocoDatasetError(
            f"dataset {dataset.name!r} is not registered; give its json_file and image_root")
    return meta.json_file, meta.image_root


DETECTION_FORMATS = ("RGB", "BGR")


def read_detection_image(path: str | os.PathLike, image_format: str, notes: ConversionNotes | None = None):
    """(H, W, 3) array in `image_format` on Detectron2's 0-255 scale, read by `mae_core.data.read_image`
    (EXIF orientation applied, as Detectron2's reader does): uint8 for 8-bit files, float32 for 16-bit
    ones (value / 65535 * 255, full precision kept). 32-bit files are refused naming the file
    (`ImageReadError`); lossy conversions go to `notes`."""
    _check_format(image_format)
    image = read_image(path, 3, notes).permute(1, 2, 0).numpy()
    if image.dtype != np.uint8:
        image = image * np.float32(255)
    return np.ascontiguousarray(image[:, :, ::-1] if image_format == "BGR" else image)


def _check_format(image_format: str) -> None:
    if image_format not in DETECTION_FORMATS:
        raise ValueError(f"image_format {image_format!r}: the detection reader gives {DETECTION_FORMATS}")


class ScaleAwareDatasetMapper(DatasetMapper):
    """Detectron2's `DatasetMapper` reading images with `read_detection_image` (the toolkit's one
    reader) instead of PIL's `convert`, which turns a 16-bit image white. Lossy conversions are
    logged once per mapper (one per split and data-loader worker). Precomputed proposals and
    semantic-segmentation files, which no config here uses, are not read."""

    @configurable
    def __init__(self, is_train: bool, **kwargs):
        super().__init__(is_train, **kwargs)
        _check_format(self.image_format)
        self.notes = ConversionNotes(f"detection {'training' if is_train else 'test'} images")

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_detection_image(dataset_dict["file_name"], self.image_format, self.notes)
        detection_utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            dataset_dict.pop("annotations", None)
        elif "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image.shape[:2])
        return dataset_dict


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
    images waiting in a group or prefetched by workers at the checkpoint are skipped.

    Args:
        dataset: dataset dicts (`coco_dataset`).
        mapper: turns a dict into the model's input (`ScaleAwareDatasetMapper`).
        total_batch_size: images per iteration over all processes.
        seed: the sampler's seed; None: Detectron2 draws one.
        start_iter: the iteration the run starts at (0, or a resumed checkpoint's).
        **kwargs: `build_detection_train_loader` arguments (`num_workers`, `aspect_ratio_grouping`).
    """
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
    "CategoryMismatchError",
    "CocoDatasetError",
    "ScaleAwareDatasetMapper",
    "categories",
    "check_categories",
    "check_coco_annotations",
    "check_coco_json",
    "check_data_tree",
    "coco_dataset",
    "lsj_augmentations",
    "read_detection_image",
    "register_coco",
    "ResumableTrainingSampler",
    "train_loader",
    "eval_augmentations",
]
