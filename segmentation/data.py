"""Datasets in MMSegmentation's folder layout, with checks that name the offending file.

`SegFolderDataset` reads `images/<split>/*<img_suffix>` and `annotations/<split>/*<seg_map_suffix>`
(ADE20K's `ADEChallengeData2016` layout) with the class names and palette given in `metainfo`, so
any dataset in that layout works, not only ADE20K's 150 classes. `LoadScaledImageFromFile` is mmcv's
image loader (16-bit read at its scale) refusing 32-bit images by name, as pretraining and detection
do. `LoadCheckedAnnotations` is
mmseg's `LoadAnnotations` plus the checks mmseg does not make: a label map whose size differs from
its image or that holds values outside the classes would otherwise train silently on garbage (or
fail much later inside a CUDA kernel)."""

from __future__ import annotations

import os.path as osp

import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmengine.logging import print_log
from mmengine.registry import DefaultScope
from mmseg.datasets import ADE20KDataset, BaseSegDataset
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import DATASETS, TRANSFORMS

from mae_core.checkpoint import few_names
from mae_core.data import ImageReadError, check_image_scale
from mae_core.datacheck import SplitReport, image_problems, shown
from mae_core.errors import UserError
from mae_core.transfer import SubsetError, label_subset


class DatasetError(UserError, ValueError):
    """A dataset file that cannot be used, with the file and the reason in the message."""


@DATASETS.register_module()
class SegFolderDataset(BaseSegDataset):
    """Image / label-PNG pairs with their own `metainfo=dict(classes=..., palette=...)`, laid out
    as `<data_root>/<data_prefix.img_path>/*<img_suffix>` beside
    `<data_root>/<data_prefix.seg_map_path>/*<seg_map_suffix>`; missing folders, files or classes
    are a `DatasetError` naming them.

    Args:
        img_suffix: the images' file suffix.
        seg_map_suffix: the label maps' file suffix (one channel of class indices).
        **kwargs: `BaseSegDataset` arguments: `data_root`, `data_prefix`, `metainfo`, `pipeline`,
            `reduce_zero_label` (label 0 means "unlabelled" and class k is stored as k + 1, as in
            ADE20K)...
        label_fraction, label_count, subset_seed: train on a labelled subset only
            (mae_core.transfer.label_subset of the image file stems: nested across fractions, the
            same for every backbone and training seed).
    """

    def __init__(self, img_suffix: str = ".jpg", seg_map_suffix: str = ".png",
                 label_fraction: float | None = None, label_count: int | None = None, subset_seed: int = 0,
                 **kwargs):
        self.label_fraction, self.label_count, self.subset_seed = label_fraction, label_count, subset_seed
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)
        if not self._metainfo.get("classes"):
            raise DatasetError(
                f"{type(self).__name__} needs metainfo=dict(classes=[...]) (data_root {self.data_root})"
            )

    def load_data_list(self) -> list[dict]:
        data_list = self.listed_samples()
        missing = missing_label_maps(data_list)
        if missing:
            raise DatasetError(missing[0])
        num_classes = len(self._metainfo["classes"])
        for info in data_list:
            info.update(num_classes=num_classes, ignore_index=self.ignore_index)
        return self.labelled_subset(data_list)

    def listed_samples(self) -> list[dict]:
        """mmseg's list of (image, label map) pairs, once both folders exist and hold images."""
        for key in ("img_path", "seg_map_path"):
            folder = self.data_prefix.get(key)
            if folder and not osp.isdir(folder):
                raise DatasetError(
                    f"{key} folder {folder} does not exist (expected the layout "
                    "<data_root>/images/<split>, <data_root>/annotations/<split>)"
                )
        data_list = super().load_data_list()
        if not data_list:
            raise DatasetError(f"no *{self.img_suffix} images in {self.data_prefix.get('img_path')}")
        return data_list

    def labelled_subset(self, data_list: list[dict]) -> list[dict]:
        """`data_list` reduced to the labelled subset, when one is asked for (logged with its size)."""
        if self.label_fraction is None and self.label_count is None:
            return data_list
        stems = [osp.splitext(osp.basename(info["img_path"]))[0] for info in data_list]
        try:
            keep = set(label_subset(stems, self.label_fraction, self.label_count, self.subset_seed))
        except SubsetError as exc:
            raise DatasetError(f"{self.data_prefix.get('img_path')}: {exc}") from exc
        subset = [info for info, stem in zip(data_list, stems, strict=True) if stem in keep]
        print_log(f"{type(self).__name__}: labelled subset of {len(subset)} of {len(data_list)} images "
                  f"(label_fraction={self.label_fraction}, label_count={self.label_count}, "
                  f"subset_seed={self.subset_seed})", logger="current")
        return subset


def missing_label_maps(data_list: list[dict]) -> list[str]:
    """One line per sample whose label map does not exist."""
    return [
        f"annotation file {info['seg_map_path']} for image {info['img_path']} does not exist"
        for info in data_list
        if info.get("seg_map_path") is not None and not osp.isfile(info["seg_map_path"])
    ]


@DATASETS.register_module()
class ADE20KFolderDataset(SegFolderDataset):
    """ADE20K's 150 classes and palette; labels stored as class + 1, 0 unlabelled."""

    METAINFO = ADE20KDataset.METAINFO

    def __init__(self, reduce_zero_label: bool = True, **kwargs):
        super().__init__(reduce_zero_label=reduce_zero_label, **kwargs)


@TRANSFORMS.register_module()
class LoadScaledImageFromFile(LoadImageFromFile):
    """mmcv's `LoadImageFromFile` (OpenCV scales a 16-bit image to 8-bit) after
    `mae_core.data.check_image_scale`: OpenCV cannot decode a 32-bit image and mmcv then fails
    without naming it; here it is an `ImageReadError` naming the file and its mode."""

    def transform(self, results: dict) -> dict:
        check_image_scale(results["img_path"])
        return super().transform(results)


@TRANSFORMS.register_module()
class LoadCheckedAnnotations(LoadAnnotations):
    """Loads the label map and checks it against its image (`ori_shape`, set by
    LoadImageFromFile, so the check holds whatever resizing came before) and the class count."""

    def _load_seg_map(self, results: dict) -> None:
        super()._load_seg_map(results)
        path, label = results["seg_map_path"], results["gt_seg_map"]
        if label.ndim != 2:
            raise DatasetError(
                f"label map {path} has shape {label.shape}; expected one channel of class indices "
                "(a colour-coded PNG must be converted to indices first)"
            )
        if "ori_shape" in results and tuple(label.shape) != tuple(results["ori_shape"][:2]):
            raise DatasetError(
                f"label map {path} is {label.shape[0]}x{label.shape[1]} but its image {results['img_path']} "
                f"is {results['ori_shape'][0]}x{results['ori_shape'][1]}"
            )
        if "num_classes" not in results:
            raise DatasetError(
                f"{type(self).__name__} needs `num_classes` in the sample of {path}; use "
                "SegFolderDataset or ADE20KFolderDataset"
            )
        num_classes, ignore = results["num_classes"], results.get("ignore_index", 255)
        values = np.unique(label)
        bad = values[(values >= num_classes) & (values != ignore) & (values != 255)]
        if bad.size:
            shift = 1 if results.get("reduce_zero_label") else 0
            stored = (bad.astype(int) + shift).tolist()
            raise DatasetError(
                f"label map {path} holds values {stored} outside the {num_classes} classes (expected "
                f"{shift}..{num_classes - 1 + shift}"
                + (", 0 for unlabelled" if shift else "")
                + f", or {ignore} to ignore)"
            )


class ClassCountError(DatasetError):
    """A model head, or a checkpoint's head, whose class count differs from its dataset's."""


# The heads whose width is the class count, as the config names them.
CLASS_HEADS = ("decode_head", "auxiliary_head")


def dataset_classes(dataset_cfg) -> tuple[str, list[str]]:
    """(where, class names) of a dataloader's dataset node without building it: the config's
    `metainfo` override, else the dataset class's METAINFO (a wrapper such as RepeatDataset: its
    inner `dataset`)."""
    if "type" in dataset_cfg and dataset_cfg.get("metainfo") is None and "dataset" in dataset_cfg:
        return dataset_classes(dataset_cfg["dataset"])
    kind = dataset_cfg.get("type")
    cls = DATASETS.get(kind) if isinstance(kind, str) else kind
    if cls is None:
        root = dataset_cfg.get("data_root")
        raise DatasetError(f"dataset type {kind!r} is not registered (data_root {root})")
    metainfo = cls._load_metainfo(dataset_cfg.get("metainfo"))
    where = f"{getattr(cls, '__name__', kind)} at {dataset_cfg.get('data_root')}"
    return where, list(metainfo.get("classes") or ())


def check_head_classes(cfg, loaders: dict[str, str]) -> str:
    """Each head's `num_classes` equals the class count of every dataset the run reads (`loaders`:
    config key -> what the message calls it, e.g. {"train_dataloader": "the training set"});
    mmseg would otherwise train and score a head of another width without a word. Returns the
    first dataset as messages name it ("the training set (SegFolderDataset at data/x)")."""
    sets = [(label, *dataset_classes(cfg[key].dataset)) for key, label in loaders.items() if cfg.get(key)]
    for head in CLASS_HEADS:
        heads = cfg.model.get(head)
        for index, node in enumerate(heads if isinstance(heads, list) else [heads] if heads else []):
            key = f"model.{head}{f'.{index}' if isinstance(heads, list) else ''}.num_classes"
            for label, where, classes in sets:
                if node.get("num_classes") != len(classes):
                    raise ClassCountError(
                        f"{key}={node.get('num_classes')} but {label} ({where}) has {len(classes)} classes "
                        f"({few_names(classes)}); set {key}={len(classes)}, or give the dataset's classes "
                        "in its metainfo"
                    )
    return f"{sets[0][0]} ({sets[0][1]})" if sets else "the dataset"


def check_checkpoint_head_widths(state_dict: dict, model, source: str, dataset: str) -> None:
    """A checkpoint's head classifiers (`<head>.conv_seg`) as wide as the model's, which the
    dataset fixed (`check_head_classes`): mmengine would leave a head of another width at its
    initialisation, with a warning only, and a test would score random predictions."""
    for head in CLASS_HEADS:
        module = getattr(model, head, None)
        key = f"{head}.conv_seg.weight"
        saved = state_dict.get(key, state_dict.get(f"module.{key}"))
        if module is None or saved is None or not hasattr(module, "conv_seg"):
            continue
        width = module.conv_seg.weight.shape[0]
        if saved.shape[0] != width:
            raise ClassCountError(
                f"{source}'s {head} has {saved.shape[0]} classes ({key} {list(saved.shape)}) but the "
                f"model's has {width}, the classes of {dataset}; use a checkpoint trained on these "
                "classes, or load only its backbone (model.pretrained=...)"
            )


# The datasets a run reads, by config key, as the class-count refusals name them.
TRAINING_SETS = {"train_dataloader": "the training set", "val_dataloader": "the validation set"}
TEST_SETS = {"test_dataloader": "the test set"}


def build_unloaded_dataset(dataset_cfg: dict) -> BaseSegDataset:
    """A config's dataset built without reading its file list (`lazy_init`), in mmseg's registry
    scope as the Runner builds it: its classes and folders, before any Runner exists."""
    with DefaultScope.overwrite_default_scope("mmseg"):
        return DATASETS.build(dict(dataset_cfg, lazy_init=True))


def model_heads(model) -> list[tuple[str, dict]]:
    """(config key, head) of a segmentor config's decode head and every auxiliary head."""
    heads = [("model.decode_head", model.get("decode_head"))]
    auxiliary = model.get("auxiliary_head")
    if isinstance(auxiliary, (list, tuple)):
        heads += [(f"model.auxiliary_head.{i}", head) for i, head in enumerate(auxiliary)]
    else:
        heads.append(("model.auxiliary_head", auxiliary))
    return [(key, head) for key, head in heads if head]


def check_data_tree(cfg) -> tuple[list[SplitReport], list[str]]:
    """The data check of `tools/check_data.py` for a segmentation config: per dataloader (the test
    one when it is not the val one), the image and label-map counts and every missing label map,
    missing or unreadable image or label map, and label map of another size than its image; then
    the refusal training and testing give for a head whose class count is not the data's
    (`check_head_classes`). Returns (reports, problems of no one split)."""
    reports, seen = [], []
    for loader in {**TRAINING_SETS, **TEST_SETS}:
        dataset_cfg = cfg.get(loader, {}).get("dataset")
        if not dataset_cfg or dataset_cfg in seen:
            continue
        seen.append(dataset_cfg)
        reports.append(_check_split(loader, dataset_cfg))
    try:
        check_head_classes(cfg, {**TRAINING_SETS, **TEST_SETS})
    except DatasetError as exc:
        return reports, [str(exc)]
    return reports, []


def _check_split(loader: str, dataset_cfg: dict) -> SplitReport:
    dataset = build_unloaded_dataset(dataset_cfg)
    report = SplitReport(loader, dataset.data_prefix.get("img_path") or str(dataset.data_root),
                         annotation_kind="label maps", classes=len(dataset.metainfo["classes"]))
    try:
        samples = (dataset.listed_samples() if isinstance(dataset, SegFolderDataset)
                   else dataset.load_data_list())
    except DatasetError as exc:
        report.problems.append(str(exc))
        return report
    missing = missing_label_maps(samples)
    report.images, report.annotations = len(samples), len(samples) - len(missing)
    report.problems += shown(missing)
    present = [info for info in samples if osp.isfile(info["seg_map_path"])]
    report.problems += image_problems((info["img_path"], None) for info in samples)
    report.problems += _label_size_problems(present)
    return report


def _label_size_problems(samples: list[dict]) -> list[str]:
    """Unreadable label maps, and those of another size than their (readable) image."""
    pairs = []
    for info in samples:
        try:
            pairs.append((info["seg_map_path"], check_image_scale(info["img_path"])))
        except ImageReadError:
            continue  # reported with the images
    return image_problems(pairs, what="label map", expected_from="its image")
