"""Tiny segmentation datasets in MMSegmentation's ADE20K folder layout, generated per test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Background, square, disc: the classes of configs/segmentation/upernet_vit_tiny_cpu.py.
CLASS_COLOURS = np.array([[40, 40, 40], [220, 20, 60], [0, 128, 255]], dtype=np.uint8)


def shapes_label(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A label map with one square (class 1) and one disc (class 2) on background (class 0)."""
    h, w = size
    label = np.zeros(size, dtype=np.uint8)
    s = int(rng.integers(h // 4, h // 2))
    y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
    label[y : y + s, x : x + s] = 1
    r = int(rng.integers(h // 8, h // 4))
    cy, cx = int(rng.integers(r, h - r)), int(rng.integers(r, w - r))
    yy, xx = np.mgrid[:h, :w]
    label[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 2
    return label


def write_sample(
    root: Path,
    split: str,
    name: str,
    label: np.ndarray,
    label_offset: int = 0,
    image_size: tuple[int, int] | None = None,
    seed: int = 0,
) -> None:
    """Image from the label's class colours plus noise; label PNG stored with `label_offset`
    added (1 for the ADE20K convention, where 0 means unlabelled)."""
    rng = np.random.default_rng(seed)
    image = CLASS_COLOURS[label % len(CLASS_COLOURS)].astype(np.int16)
    image = np.clip(image + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(image)
    if image_size is not None:
        img = img.resize(image_size[::-1])
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    img.save(root / "images" / split / f"{name}.jpg", quality=95)
    Image.fromarray((label + label_offset).astype(np.uint8)).save(
        root / "annotations" / split / f"{name}.png"
    )


def make_shapes_dataset(
    root: Path,
    n_train: int = 4,
    n_val: int = 2,
    size: tuple[int, int] = (72, 96),
    label_offset: int = 0,
    seed: int = 0,
) -> Path:
    """`root/images/{training,validation}/*.jpg` and `root/annotations/{...}/*.png`."""
    rng = np.random.default_rng(seed)
    for split, n in (("training", n_train), ("validation", n_val)):
        for i in range(n):
            write_sample(
                root, split, f"{split}_{i:03d}", shapes_label(size, rng), label_offset, seed=seed + i
            )
    return root
