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
from mmseg.datasets import ADE20KDataset, BaseSegDataset
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import DATASETS, TRANSFORMS

from mae_core.data import check_image_scale
from mae_core.transfer import SubsetError, label_subset


class DatasetError(ValueError):
    """A dataset file that cannot be used, with the file and the reason in the message."""


@DATASETS.register_module()
class SegFolderDataset(BaseSegDataset):
    """Image / label-PNG pairs with their own `metainfo=dict(classes=..., palette=...)`.

    reduce_zero_label: label 0 means "unlabelled" and class k is stored as k + 1 (ADE20K).
    label_fraction / label_count, subset_seed: train on a labelled subset only
    (mae_core.transfer.label_subset of the image file stems: nested across fractions, the same for
    every backbone and training seed)."""

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
        num_classes = len(self._metainfo["classes"])
        for info in data_list:
            seg_map = info.get("seg_map_path")
            if seg_map is not None and not osp.isfile(seg_map):
                raise DatasetError(f"annotation file {seg_map} for image {info['img_path']} does not exist")
            info.update(num_classes=num_classes, ignore_index=self.ignore_index)
        return self.labelled_subset(data_list)

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
