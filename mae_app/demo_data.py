"""The demo's datasets, composed deterministically from real images that packages ship.

Objects are real Fashion-MNIST items (Debian `dataset-fashion-mnist`); their masks come from their
own pixels. Backgrounds are crops of the real photos and textures in `skimage.data`. One seed
gives byte-identical files: every random draw comes from a numpy generator seeded per split, PNGs
are written without metadata at a fixed compression level, and JSON with sorted keys.

Train files use Fashion-MNIST *train* items only and val files *test* items only, so no object
seen in training appears at validation. The held-out scenes (`heldout`) are a second test set for
the models the demo trains and validates: *test* items that no val file shows, on photos that no
other file shows (HELDOUT_PHOTOS), so a recipe tuned on val shows itself there. Layout under the
output root:

    pretrain/images/*.png                      unlabelled images for MAE (1-3 items on a photo crop)
    cls/{train,val}/<NN_class>/*.png           one item per image, ImageFolder layout (probes, k-NN)
    coco/{train,val,heldout}/*.png             scenes of several items
    coco/annotations/instances_{train,val,heldout}.json    COCO instances, masks as compressed RLE
    ade/images/{training,validation,heldout}/*.png     the same scenes, ADE20K layout
    ade/annotations/{training,validation,heldout}/*.png    label maps: 0 background, k+1 class k
    dataset_info.json                          classes, sizes, counts, seed and sources
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mae_core.data import FashionMNIST

FASHION_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)

# Photos and textures stored as PNG inside scikit-image (JPEG ones are left out: their decoding
# may differ between libjpeg versions, which would break byte-identical rebuilds).
BACKGROUND_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "moon",
    "immunohistochemistry", "page", "text", "cell", "clock", "colorwheel",
)
# The held-out scenes' backgrounds: the other PNG images of scikit-image, none of them in
# BACKGROUND_PHOTOS (stereo_motorcycle: its left frame).
HELDOUT_PHOTOS = ("stereo_motorcycle", "microaneurysms", "logo", "checkerboard")

HELDOUT = "heldout"  # the held-out scenes' split: their folders, and the run records of their evaluations

# Pixels of a resized item brighter than this (of 255) belong to its mask; Fashion-MNIST
# backgrounds are exactly 0, so this only trims the interpolation halo.
MASK_THRESHOLD = 30


@dataclass(frozen=True)
class DemoDataSpec:
    seed: int = 0
    scene_size: int = 128           # side of detection / segmentation scenes
    image_size: int = 64            # side of pretraining and classification images
    train_scenes: int = 400
    val_scenes: int = 100
    objects_per_scene: tuple[int, int] = (1, 4)
    object_size: tuple[int, int] = (32, 64)  # side of a pasted item in a scene, pixels
    pretrain_images: int = 4000
    cls_train_per_class: int = 200
    cls_val_per_class: int = 100
    heldout_scenes: int = 100
    min_visible: float = 0.6        # a later item may hide at most 40% of an earlier one

    def __post_init__(self):
        lo, hi = self.object_size
        if not 8 <= lo <= hi <= self.scene_size:
            raise ValueError(f"object_size {self.object_size} must satisfy 8 <= min <= max <= scene_size "
                             f"({self.scene_size})")
        if not 1 <= self.objects_per_scene[0] <= self.objects_per_scene[1]:
            raise ValueError(f"objects_per_scene {self.objects_per_scene} must be 1 <= min <= max")
        for name in ("scene_size", "image_size", "train_scenes", "val_scenes", "pretrain_images",
                     "cls_train_per_class", "cls_val_per_class", "heldout_scenes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class Backgrounds:
    """Random square crops of the skimage photos, resized to the requested side, as RGB uint8."""

    def __init__(self, names: tuple[str, ...] = BACKGROUND_PHOTOS):
        import skimage.data

        self.photos = []
        for name in names:
            img = getattr(skimage.data, name)()
            img = np.asarray(img[0] if isinstance(img, tuple) else img)  # a stereo pair: its left frame
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            self.photos.append(np.ascontiguousarray(img[..., :3].astype(np.uint8)))

    def crop(self, rng: np.random.Generator, size: int) -> np.ndarray:
        photo = self.photos[rng.integers(len(self.photos))]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(size, h, w), min(h, w) + 1))
        y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
        out = np.asarray(crop)
        return out[:, ::-1] if rng.random() < 0.5 else out


def cutout(item: np.ndarray, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 28x28 grey item resized to `side`, tinted with a random light colour: (RGB, mask)."""
    grey = np.asarray(Image.fromarray(item).resize((side, side), Image.BILINEAR)).astype(np.float32)
    tint = rng.uniform(0.55, 1.0, size=3).astype(np.float32)
    rgb = np.clip(grey[..., None] * tint, 0, 255).round().astype(np.uint8)
    return rgb, grey > MASK_THRESHOLD


@dataclass
class Scene:
    image: np.ndarray           # (H, W, 3) uint8
    instances: np.ndarray       # (H, W) int32: 0 background, i+1 for object i
    labels: list[int]           # Fashion-MNIST class of each object


def compose(
    background: np.ndarray,
    items: list[tuple[np.ndarray, int]],
    sizes: list[int],
    rng: np.random.Generator,
    min_visible: float,
    tries: int = 20,
) -> Scene:
    """Pastes items in order; a placement that would hide more than `1 - min_visible` of an earlier
    item (or that leaves an empty mask) is redrawn, up to `tries` times, then the item is skipped."""
    image = background.copy()
    h, w = image.shape[:2]
    instances = np.zeros((h, w), np.int32)
    labels: list[int] = []
    areas: list[int] = []
    for (item, label), side in zip(items, sizes, strict=True):
        rgb, mask = cutout(item, side, rng)
        if not mask.any():
            continue
        for _ in range(tries):
            y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
            window = instances[y : y + side, x : x + side]
            hidden = np.bincount(window[mask], minlength=len(labels) + 1)[1:]
            visible = np.bincount(instances.ravel(), minlength=len(labels) + 1)[1:] - hidden
            if all(v >= min_visible * a for v, a in zip(visible, areas, strict=True)):
                break
        else:
            continue
        image[y : y + side, x : x + side][mask] = rgb[mask]
        window[mask] = len(labels) + 1
        labels.append(label)
        areas.append(int(mask.sum()))
    return Scene(image, instances, labels)


def write_png(path: Path, array: np.ndarray) -> None:
    """PNG without metadata at a fixed compression level: the same array gives the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=6, optimize=False)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n")


class DemoDataBuilder:
    """Builds every split from `spec`; `progress(label, iterable, total)` may wrap loops (tqdm).
    `drawn[split]` records the indices of the Fashion-MNIST items each split's files show."""

    SPLITS = {"train": "train", "val": "test"}  # our split -> Fashion-MNIST split it draws items from
    ADE_SPLITS = {"train": "training", "val": "validation", HELDOUT: HELDOUT}

    def __init__(self, spec: DemoDataSpec, progress: Callable | None = None):
        self.spec = spec
        self.progress = progress or (lambda label, it, total: it)
        self.backgrounds = Backgrounds()
        self.heldout_backgrounds = Backgrounds(HELDOUT_PHOTOS)
        self.items = {}
        self.drawn: dict[str, set[int]] = {split: set() for split in self.ADE_SPLITS}
        for split, source in self.SPLITS.items():
            fmnist = FashionMNIST(split=source)
            self.items[split] = (fmnist.images[:, 0].numpy(), fmnist.labels.numpy())

    def rng(self, *stream: int) -> np.random.Generator:
        """Independent generator per output stream, so changing one count leaves the others' files."""
        return np.random.default_rng([self.spec.seed, *stream])

    def build(self, root: str | Path) -> Path:
        root = Path(root)
        self.build_pretrain(root / "pretrain")
        for index, split in enumerate(self.SPLITS):
            self.build_cls(root / "cls" / split, split, self.rng(2, index))
            self.build_scenes(root, split, self.rng(3, index))
        self.build_heldout(root)
        write_json(root / "dataset_info.json", self.info())
        return root

    def random_items(self, split: str, rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, int]]:
        images, labels = self.items[split]
        picks = rng.integers(len(images), size=n)
        self.drawn[split].update(picks.tolist())
        return [(images[i], int(labels[i])) for i in picks]

    def build_pretrain(self, out: Path) -> None:
        spec, rng = self.spec, self.rng(1)
        size = spec.image_size
        for i in self.progress("pretraining images", range(spec.pretrain_images), spec.pretrain_images):
            n = int(rng.integers(1, 4))
            sizes = [int(rng.integers(size * 2 // 5, size * 4 // 5 + 1)) for _ in range(n)]
            background = self.backgrounds.crop(rng, size)
            scene = compose(background, self.random_items("train", rng, n), sizes, rng, spec.min_visible)
            write_png(out / "images" / f"{i:06d}.png", scene.image)

    def build_cls(self, out: Path, split: str, rng: np.random.Generator) -> None:
        spec = self.spec
        size = spec.image_size
        per_class = spec.cls_train_per_class if split == "train" else spec.cls_val_per_class
        images, labels = self.items[split]
        # Balanced classes, distinct items within a class.
        chosen = [rng.choice(np.flatnonzero(labels == label), per_class, replace=False)
                  for label in range(len(FASHION_CLASSES))]
        picks = [(label, j, index) for label, indices in enumerate(chosen) for j, index in enumerate(indices)]
        self.drawn[split].update(int(index) for _, _, index in picks)
        for label, j, index in self.progress(f"classification {split}", picks, len(picks)):
            side = int(rng.integers(size * 11 // 20, size * 9 // 10 + 1))
            scene = compose(self.backgrounds.crop(rng, size), [(images[index], label)], [side], rng, 1.0)
            write_png(out / class_folder(label) / f"{j:05d}.png", scene.image)

    def build_heldout(self, root: Path) -> None:
        """The held-out scenes: Fashion-MNIST test items that no val file drew (built after val),
        on HELDOUT_PHOTOS, from a random stream of their own."""
        images, labels = self.items["val"]
        unseen = np.setdiff1d(np.arange(len(images)), sorted(self.drawn["val"]))
        self.items[HELDOUT] = (images[unseen], labels[unseen])
        self.build_scenes(root, HELDOUT, self.rng(4), self.heldout_backgrounds)
        self.drawn[HELDOUT] = {int(unseen[i]) for i in self.drawn[HELDOUT]}  # as test-set indices

    def build_scenes(self, root: Path, split: str, rng: np.random.Generator,
                     backgrounds: Backgrounds | None = None) -> None:
        from pycocotools import mask as mask_utils

        spec = self.spec
        count = {"train": spec.train_scenes, "val": spec.val_scenes, HELDOUT: spec.heldout_scenes}[split]
        ade_split = self.ADE_SPLITS[split]
        backgrounds = backgrounds or self.backgrounds
        images, annotations = [], []
        for i in self.progress(f"scenes {split}", range(count), count):
            n = int(rng.integers(spec.objects_per_scene[0], spec.objects_per_scene[1] + 1))
            sizes = [int(rng.integers(spec.object_size[0], spec.object_size[1] + 1)) for _ in range(n)]
            background = backgrounds.crop(rng, spec.scene_size)
            scene = compose(background, self.random_items(split, rng, n), sizes, rng, spec.min_visible)
            name = f"{split}_{i:06d}.png"
            write_png(root / "coco" / split / name, scene.image)
            write_png(root / "ade" / "images" / ade_split / name, scene.image)
            semantic = np.zeros(scene.instances.shape, np.uint8)
            image_id = i + 1
            side = spec.scene_size
            images.append({"id": image_id, "file_name": name, "height": side, "width": side})
            for k, label in enumerate(scene.labels):
                mask = scene.instances == k + 1
                semantic[mask] = label + 1
                ys, xs = np.nonzero(mask)
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()) + 1,
                             int(ys.max() - ys.min()) + 1],
                    "area": int(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": {"size": [int(s) for s in rle["size"]],
                                     "counts": rle["counts"].decode("ascii")},
                })
            write_png(root / "ade" / "annotations" / ade_split / name, semantic)
        write_json(root / "coco" / "annotations" / f"instances_{split}.json", {
            "info": {"description": "MAE toolkit demo scenes: Fashion-MNIST items on scikit-image photos",
                     "seed": spec.seed},
            "images": images,
            "annotations": annotations,
            "categories": coco_categories(),
        })

    def info(self) -> dict:
        return {
            "spec": asdict(self.spec),
            "classes": list(FASHION_CLASSES),
            "coco": {"mask_format": "bitmask (compressed RLE)", "category_ids": "1..10 in class order"},
            "ade": {"classes": ["background", *FASHION_CLASSES], "reduce_zero_label": False,
                    "img_suffix": ".png", "seg_map_suffix": ".png"},
            "sources": {
                "objects": "Fashion-MNIST (Debian dataset-fashion-mnist, MIT licence): train items for train "
                           "files, test items for val files, test items no val file shows for heldout files",
                "backgrounds": "scikit-image data: " + ", ".join(BACKGROUND_PHOTOS),
                "heldout_backgrounds": "scikit-image data: " + ", ".join(HELDOUT_PHOTOS),
            },
        }


def class_folder(label: int) -> str:
    """ImageFolder sorts class folders by name; the numeric prefix keeps Fashion-MNIST's order."""
    return f"{label:02d}_{FASHION_CLASSES[label].replace('/', '_').replace(' ', '_')}"


def coco_categories() -> list[dict]:
    return [{"id": k + 1, "name": name, "supercategory": "fashion"} for k, name in enumerate(FASHION_CLASSES)]


def build_demo_data(root: str | Path, spec: DemoDataSpec | None = None,
                    progress: Callable | None = None) -> Path:
    return DemoDataBuilder(spec or DemoDataSpec(), progress).build(root)


__all__ = ["FASHION_CLASSES", "HELDOUT", "HELDOUT_PHOTOS", "DemoDataSpec", "DemoDataBuilder",
           "build_demo_data", "class_folder", "compose"]
