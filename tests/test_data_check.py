"""`tools/check_data.py`: a good detection and segmentation tree passes with its counts; a missing
image, a category-count mismatch, a missing label map and a class-count mismatch are each found,
named, and end the check with exit status 1 (the class and category refusals are training's own)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_coco import make_coco
from helpers_seg import make_shapes_dataset
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DET_CONFIG = REPO / "configs/detection/mask_rcnn_vit_tiny_cpu.py"
SEG_CONFIG = REPO / "configs/segmentation/upernet_vit_tiny_cpu.py"
SEG_LOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")


def check_data(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "tools/check_data.py"), *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def coco_tree(tmp_path):
    train_json, images = make_coco(tmp_path, "train", 4)
    val_json, _ = make_coco(tmp_path, "val", 2, seed=1)
    return tmp_path, [f"dataloader.train.dataset.json_file={train_json}",
                      f"dataloader.train.dataset.image_root={images}",
                      f"dataloader.test.dataset.json_file={val_json}",
                      f"dataloader.test.dataset.image_root={images}"]


@pytest.mark.slow
def test_detection_good_tree_passes_with_its_counts(coco_tree):
    _, overrides = coco_tree
    proc = check_data("detection", "--config-file", DET_CONFIG, *overrides)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    train_line, test_line = proc.stdout.splitlines()[:2]
    assert train_line.startswith("train: ") and "4 images" in train_line and "2 classes: ok" in train_line
    assert test_line.startswith("test: ") and "2 images" in test_line


@pytest.mark.slow
def test_detection_finds_missing_and_resized_images_and_the_category_count(coco_tree):
    root, overrides = coco_tree
    (root / "images" / "train_001.png").unlink()
    Image.new("RGB", (50, 40)).save(root / "images" / "val_000.png")
    proc = check_data("detection", "--config-file", DET_CONFIG, *overrides, "model.roi_heads.num_classes=3")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"train: image {root / 'images' / 'train_001.png'} does not exist" in proc.stderr
    assert "is 40x50 (height x width), but its annotation is 128x128" in proc.stderr
    # training's own refusal (detection.data.check_categories), word for word
    assert ("model.roi_heads.num_classes is 3, but the training set "
            f"{root / 'train.json'} has 2 categories") in proc.stderr
    assert "check_data.py: error: 3 problem(s) in the data:" in proc.stderr


def seg_options(root: Path, *more: str) -> list[str]:
    return ["--cfg-options", *(f"{loader}.dataset.data_root={root}" for loader in SEG_LOADERS), *more]


@pytest.mark.slow
def test_segmentation_good_tree_passes_with_its_counts(tmp_path):
    make_shapes_dataset(tmp_path, n_train=3, n_val=2)
    proc = check_data("segmentation", "--config-file", SEG_CONFIG, *seg_options(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("train_dataloader: ") and "3 images, 3 label maps, 3 classes: ok" in lines[0]
    assert lines[1].startswith("val_dataloader: ") and "2 images, 2 label maps" in lines[1]
    assert not any(line.startswith("test_dataloader") for line in lines)  # the same data as val


@pytest.mark.slow
def test_segmentation_finds_missing_and_resized_label_maps_and_the_class_count(tmp_path):
    make_shapes_dataset(tmp_path, n_train=3, n_val=2)
    missing = tmp_path / "annotations/training/training_001.png"
    missing.unlink()
    Image.new("L", (10, 10)).save(tmp_path / "annotations/validation/validation_000.png")
    proc = check_data("segmentation", "--config-file", SEG_CONFIG, *seg_options(
        tmp_path, "model.decode_head.num_classes=5", "model.auxiliary_head.num_classes=5"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"train_dataloader: annotation file {missing} for image" in proc.stderr
    assert "label map" in proc.stderr and "is 10x10 (height x width), but its image is 72x96" in proc.stderr
    # training's own refusal (segmentation.data.check_head_classes)
    assert ("model.decode_head.num_classes=5 but the training set "
            f"(SegFolderDataset at {tmp_path}) has 3 classes") in proc.stderr
    summary = proc.stdout.replace(f"{tmp_path}/images/training: ", "")
    assert "train_dataloader: 3 images, 2 label maps" in summary
