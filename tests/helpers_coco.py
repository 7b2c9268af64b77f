"""A tiny generated COCO-format instance dataset for detection tests: coloured squares and discs
on a noisy background, with polygon masks and boxes derived from the drawn shapes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = [{"id": 1, "name": "square"}, {"id": 2, "name": "disc"}]


def _shape_polygon(kind: str, cx: float, cy: float, r: float) -> list[float]:
    if kind == "square":
        pts = [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    else:
        pts = [
            (cx + r * math.cos(a), cy + r * math.sin(a))
            for a in np.linspace(0, 2 * math.pi, 16, endpoint=False)
        ]
    return [round(v, 2) for p in pts for v in p]


def make_coco(
    root: str | Path,
    split: str,
    num_images: int,
    size: tuple[int, int] = (128, 128),
    seed: int = 0,
    image_dir: str = "images",
    num_empty: int = 0,
    objects: tuple[int, int] = (1, 3),
) -> tuple[Path, Path]:
    """Writes `root/<image_dir>/<split>_NNN.png` and `root/<split>.json`; returns (json, image folder).
    `size` is (height, width). Each image holds `objects` (a range, both ends included) objects, 10
    px to a quarter of the image in radius, that do not overlap; the last `num_empty` images hold none."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    image_root = root / image_dir
    image_root.mkdir(parents=True, exist_ok=True)
    h, w = size
    images, annotations = [], []
    for i in range(num_images):
        background = rng.integers(90, 130, size=(h, w, 3), dtype=np.uint8)
        img = Image.fromarray(background)
        draw = ImageDraw.Draw(img)
        placed: list[tuple[float, float, float]] = []
        for _ in range(0 if i >= num_images - num_empty else int(rng.integers(objects[0], objects[1] + 1))):
            for _attempt in range(20):
                r = float(rng.uniform(10, min(h, w) / 4))
                cx, cy = float(rng.uniform(r, w - r)), float(rng.uniform(r, h - r))
                if all(math.hypot(cx - x, cy - y) > (r + q) * 1.5 for x, y, q in placed):
                    break
            else:
                continue
            placed.append((cx, cy, r))
            cat = int(rng.integers(1, 3))
            kind = CATEGORIES[cat - 1]["name"]
            poly = _shape_polygon(kind, cx, cy, r)
            colour = (230, 40, 40) if kind == "square" else (40, 60, 230)
            draw.polygon(list(zip(poly[0::2], poly[1::2], strict=True)), fill=colour)
            xs, ys = poly[0::2], poly[1::2]
            x0, y0 = min(xs), min(ys)
            bw, bh = max(xs) - x0, max(ys) - y0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "segmentation": [poly],
                    "bbox": [x0, y0, bw, bh],
                    "area": bw * bh if kind == "square" else math.pi * r * r,
                    "iscrowd": 0,
                }
            )
        file_name = f"{split}_{i:03d}.png"
        img.save(image_root / file_name)
        images.append({"id": i + 1, "file_name": file_name, "height": h, "width": w})
    json_file = root / f"{split}.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return json_file, image_root


def to_sixteen_bit_grey(path: str | Path) -> float:
    """Rewrites the 8-bit picture at `path` as a real 16-bit grey PNG (PIL mode "I;16", value x 257,
    so each 8-bit level maps to the same fraction of full scale); returns the 8-bit grey mean."""
    grey = np.asarray(Image.open(path).convert("L"))
    sixteen = Image.fromarray(grey.astype(np.uint16) * 257)
    assert sixteen.mode == "I;16", sixteen.mode
    sixteen.save(path)
    return float(grey.mean())
