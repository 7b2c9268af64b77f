"""Images for pretraining: an image folder or Fashion-MNIST, MAE's augmentation, and per-sample
seeding.

Each sample's crop, flip and mask come from a generator seeded by (seed, epoch, index), so the
same image gets the same view and the same mask whatever the number of processes, data workers
or accumulation steps. That is what lets a two-process run match a one-process run with
gradient accumulation, and a resumed run match an uninterrupted one."""

from __future__ import annotations

import gzip
import itertools
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, DistributedSampler
from torchvision.transforms import v2

from .config import DataConfig
from .errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL = "apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class ImageReadError(UserError, RuntimeError):
    """An image file that cannot be decoded; the message names the file."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """Data that is not where it should be; the message says how to get it."""


# 16-bit grey (PNG, TIFF): PIL's convert() would clip every value above 255 to white.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# 32-bit integer and float grey: no standard scale to [0, 1], so refused rather than guessed.
UNSCALED_MODES = {"I": "32-bit integer", "F": "32-bit float"}
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
GREY_MODES = ("1", "L", "LA", "La", "I", "F", *SIXTEEN_BIT_MODES)


class ConversionNotes:
    """Lossy conversions met while reading a data set, logged once per kind with the first file
    and its mode, not once per image. Each data-loader worker holds its own copy (and may log the
    same kind once)."""

    def __init__(self, name: str = "images"):
        self.name = name
        self.seen: set[str] = set()

    def note(self, path, mode: str, what: str) -> None:
        if what not in self.seen:
            self.seen.add(what)
            log.warning("%s: %s (first such file: %s, mode %r); other images like it are converted the same "
                        "way without a further message", self.name, what, path, mode)


_DEFAULT_NOTES = ConversionNotes()


def read_image(path: str | os.PathLike, in_chans: int, notes: ConversionNotes | None = None) -> torch.Tensor:
    """(C, H, W) tensor: uint8, or float32 in [0, 1] for a 16-bit file (value / 65535, full
    precision kept; the transforms take either), turned upright by its EXIF orientation (as
    Detectron2's reader does: COCO annotations are drawn on the upright picture). 32-bit integer
    or float files are refused, naming the file and mode; conversions that lose information (alpha,
    palette transparency, CMYK, colour to grey) are reported to `notes` (once per kind). Decoding
    problems become an `ImageReadError` naming the file.

    Args:
        path: an image file PIL opens (PNG, JPEG, TIFF...).
        in_chans: channels wanted: 1 (grey), 3 (RGB) or 4 (RGBA).
        notes: where lossy conversions are reported; None: a process-wide default.

    Returns:
        (in_chans, H, W) uint8, or float32 in [0, 1] for a 16-bit file.
    """
    if in_chans not in PIL_MODES:
        raise ValueError(f"in_chans must be one of {sorted(PIL_MODES)} for image files, got {in_chans}")
    try:
        with Image.open(path) as img:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            mode, lost = img.mode, _lost_in_conversion(img, in_chans)
            _refuse_unscaled(path, mode)
            if mode in SIXTEEN_BIT_MODES:
                tensor = _sixteen_bit(np.asarray(img), in_chans)
            else:
                tensor = v2.functional.pil_to_tensor(img.convert(PIL_MODES[in_chans]))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
    if lost:
        (notes or _DEFAULT_NOTES).note(path, mode, lost)
    return tensor


def check_image_scale(path: str | os.PathLike) -> tuple[int, int]:
    """Refuses, as `read_image` does, an image whose pixels have no standard scale (32-bit integer
    or float grey), reading only its header: for loaders other than `read_image` (MMSegmentation's,
    whose OpenCV cannot decode them), so every path refuses them with the same message. Returns
    the image's (height, width), which the data check compares with its annotations."""
    try:
        with Image.open(path) as img:
            mode, (width, height) = img.mode, img.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
    _refuse_unscaled(path, mode)
    return height, width


def _refuse_unscaled(path, mode: str) -> None:
    if mode in UNSCALED_MODES:
        raise ImageReadError(
            f"cannot read image {path}: mode {mode!r} ({UNSCALED_MODES[mode]} grey) has no standard "
            "scale to [0, 1]; save it as 8-bit or 16-bit PNG/TIFF"
        )


def _sixteen_bit(array: np.ndarray, in_chans: int) -> torch.Tensor:
    """A 16-bit grey array as (in_chans, H, W) float32 in [0, 1]; an alpha channel is opaque."""
    grey = torch.from_numpy(array.astype(np.float32) / 65535.0).unsqueeze(0)
    channels = [grey] * min(in_chans, 3) + [torch.ones_like(grey)] * (in_chans == 4)
    return torch.cat(channels)


def _lost_in_conversion(img: Image.Image, in_chans: int) -> str | None:
    """What converting `img` to `in_chans` channels throws away, or None."""
    if img.mode in ALPHA_MODES and in_chans != 4:
        return "alpha channel dropped"
    if img.mode == "P" and "transparency" in img.info and in_chans != 4:
        return "palette transparency dropped"
    if img.mode == "CMYK":
        return "CMYK converted to RGB without a colour profile (approximate colours)"
    if in_chans == 1 and img.mode not in GREY_MODES:
        return "colour converted to grey"
    return None


def list_images_recursively(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files as given, and each folder expanded to every image at any depth under it
    (suffix in IMAGE_EXTENSIONS, any case), sorted per folder: the one way the toolkit lists images.
    A path that does not exist, or a folder without images, is refused naming it."""
    images = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not found:
                raise DatasetNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {item}")
            images += found
        elif item.is_file():
            images.append(item)
        else:
            raise DatasetNotFoundError(f"image {item} does not exist (neither an image file nor a folder)")
    return images


class ImageFolder(Dataset):
    """Every image under `root`, found recursively and sorted. When all images sit in
    sub-folders of `root`, the top-level sub-folder names are the classes (ImageNet's layout);
    otherwise labels are -1. Labels are not used by pretraining, only by monitors.

    Args:
        root: the folder (DatasetNotFoundError when it does not exist or holds no image).
        in_chans: channels each image is read with (`read_image`).
        transform: applied to each (C, H, W) image; None: the image as read.

    Items are (image, label) pairs.
    """

    def __init__(self, root: str | os.PathLike, in_chans: int = 3, transform: Callable | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"image folder {self.root} does not exist")
        self.paths = list_images_recursively([self.root])
        top = [p.relative_to(self.root).parts for p in self.paths]
        if all(len(parts) > 1 for parts in top):
            self.classes = sorted({parts[0] for parts in top})
            index = {name: i for i, name in enumerate(self.classes)}
            self.labels = [index[parts[0]] for parts in top]
        else:
            self.classes = []
            self.labels = [-1] * len(self.paths)
        self.in_chans = in_chans
        self.transform = transform
        self.notes = ConversionNotes(f"image folder {self.root}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = read_image(self.paths[index], self.in_chans, self.notes)
        return (self.transform(img) if self.transform else img), self.labels[index]


def find_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the Fashion-MNIST IDX files: `root` if given, else where the Debian
    package put them (its usual folder, or wherever `dpkg -L` says)."""
    folder = Path(root) if root else _debian_fashion_mnist_dir()
    names = [name for pair in FASHION_MNIST_FILES.values() for name in pair]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"Fashion-MNIST files {', '.join(missing)} not found in {folder}. Install the Debian package "
            f"with: {FASHION_MNIST_INSTALL}  (as root; `dpkg -L dataset-fashion-mnist` lists the files)"
        )
    return folder


def _debian_fashion_mnist_dir() -> Path:
    if (FASHION_MNIST_DIR / FASHION_MNIST_FILES["train"][0]).is_file() or not shutil.which("dpkg"):
        return FASHION_MNIST_DIR
    listing = subprocess.run(["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True)
    for line in listing.stdout.splitlines():
        if line.endswith("/" + FASHION_MNIST_FILES["train"][0]):
            return Path(line).parent
    return FASHION_MNIST_DIR


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, gzip-compressed or not) as a uint8 array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (header {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} ({np.prod(shape)} values), body has {body.size}")
    return body.reshape(shape)


class FashionMNIST(Dataset):
    """Fashion-MNIST (28x28 grey, 10 classes) from the IDX files, as (1, 28, 28) uint8 tensors.

    Args:
        root: the folder of the IDX files; None: where the Debian package put them
            (`find_fashion_mnist`).
        split: "train" or "test".
        transform: applied to each image; None: the uint8 tensor.

    Items are (image, label) pairs.
    """

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", transform=None):
        if split not in FASHION_MNIST_FILES:
            raise ValueError(f"Fashion-MNIST split must be one of {list(FASHION_MNIST_FILES)}, got {split!r}")
        folder = find_fashion_mnist(root)
        images_file, labels_file = FASHION_MNIST_FILES[split]
        self.images = torch.from_numpy(read_idx(folder / images_file).copy()).unsqueeze(1)
        self.labels = torch.from_numpy(read_idx(folder / labels_file).astype(np.int64))
        if len(self.images) != len(self.labels):
            raise ValueError(f"{folder}: {len(self.images)} images but {len(self.labels)} labels")
        self.classes = [str(i) for i in range(10)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.images[index]
        return (self.transform(img) if self.transform else img), int(self.labels[index])


def _normalize(cfg: DataConfig, in_chans: int) -> list:
    if len(cfg.mean) != in_chans or len(cfg.std) != in_chans:
        raise ValueError(
            f"data.mean and data.std need {in_chans} values (one per channel), got {cfg.mean} and {cfg.std}"
        )
    if any(s <= 0 for s in cfg.std):
        raise ValueError(f"data.std values must be positive, got {cfg.std}")
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg.mean), list(cfg.std))]


def pretrain_transform(cfg: DataConfig, img_size: int | tuple[int, int], in_chans: int) -> v2.Compose:
    """MAE's augmentation: random resized crop (area min_scale..1, bicubic), horizontal flip,
    normalisation. Works on uint8 (C, H, W) tensors of any channel count."""
    steps = [v2.RandomResizedCrop(img_size, scale=(cfg.min_scale, 1.0),
                                  interpolation=v2.InterpolationMode.BICUBIC, antialias=True)]
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps + _normalize(cfg, in_chans))


def eval_transform(cfg: DataConfig, img_size: int | tuple[int, int], in_chans: int) -> v2.Compose:
    """Deterministic view for monitors and pictures: resize the short side, centre crop."""
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    return v2.Compose([
        v2.Resize(min(size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(size),
        *_normalize(cfg, in_chans),
    ])


def build_dataset(cfg: DataConfig, transform=None, in_chans: int = 3) -> Dataset:
    """The dataset named by `cfg.dataset` ("image_folder" at `cfg.root`, or "fashion_mnist"),
    limited to its first `cfg.limit` samples if set; `transform` is applied to every image, read
    with `in_chans` channels."""
    if cfg.dataset == "fashion_mnist":
        if in_chans != 1:
            raise ValueError(f"Fashion-MNIST is grayscale: set model.in_chans=1 (got {in_chans})")
        dataset = FashionMNIST(cfg.root or None, cfg.split, transform)
    elif cfg.dataset == "image_folder":
        if not cfg.root:
            raise ValueError("data.root must name the image folder for dataset 'image_folder'")
        dataset = ImageFolder(cfg.root, in_chans, transform)
    else:
        raise ValueError(f"unknown data.dataset {cfg.dataset!r}; known: 'image_folder', 'fashion_mnist'")
    if cfg.limit is not None:
        if cfg.limit < 1:
            raise ValueError(f"data.limit must be positive, got {cfg.limit}")
        dataset = LimitedDataset(dataset, cfg.limit)
    return dataset


class LimitedDataset(Dataset):
    """The first `limit` samples of a dataset."""

    def __init__(self, dataset: Dataset, limit: int):
        self.dataset = dataset
        self.length = min(limit, len(dataset))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.dataset[index]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct 63-bit seed per (run seed, epoch, sample)."""
    words = np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint32)
    return int(words.view(np.uint64)[0] >> 1)


class MaskedViews(Dataset):
    """Pretraining samples: an augmented view and the masking noise of one image, both drawn
    from that sample's own seed. Keys are (epoch, index) pairs from `EpochSampler`.

    Items are (image, noise) with noise (gh * gw,), or a `SkippedImage` (its message) for an
    unreadable image when `skip_bad_images` is set (`collate_views` drops and counts it);
    otherwise the `ImageReadError` propagates.

    Args:
        dataset: yields (augmented image, label) pairs (`pretrain_transform` applied).
        masking: the `mae_core.masking.MaskingStrategy` whose draw goes with each image.
        grid: the model's patch grid (gh, gw).
        num_masked: patches masked per image.
        seed: the run's seed; each sample's is `sample_seed(seed, epoch, index)`.
        skip_bad_images: skip unreadable images instead of stopping.
    """

    def __init__(self, dataset: Dataset, masking, grid: tuple[int, int], num_masked: int, seed: int,
                 skip_bad_images: bool = False):
        self.dataset = dataset
        self.masking = masking
        self.grid = tuple(grid)
        self.num_masked = num_masked
        self.seed = seed
        self.skip_bad_images = skip_bad_images

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            img = read_or_skip(self.dataset, index, self.skip_bad_images)
            if isinstance(img, SkippedImage):
                return img
            noise = self.masking(1, self.grid, self.num_masked, torch.device("cpu"))[0]
        return img, noise


class SkippedImage(str):
    """The error message of an image that was skipped; collate counts these."""


def read_or_skip(dataset: Dataset, index: int, skip_bad_images: bool) -> torch.Tensor | SkippedImage:
    """The dataset's image at `index`; one that cannot be read stops the run, or with
    `skip_bad_images` becomes a SkippedImage (its message) for collate to count."""
    try:
        return dataset[index][0]
    except ImageReadError as exc:
        if not skip_bad_images:
            raise
        return SkippedImage(str(exc))


def collate_views(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stacks images and noise; returns the messages of skipped images alongside."""
    skipped = [item for item in batch if isinstance(item, SkippedImage)]
    kept = [item for item in batch if not isinstance(item, SkippedImage)]
    if not kept:
        raise ImageReadError("every image of a batch was unreadable:\n" + "\n".join(skipped))
    imgs = torch.stack([img for img, _ in kept])
    noise = torch.stack([n for _, n in kept])
    return imgs, noise, [str(s) for s in skipped]


class EpochSampler(DistributedSampler):
    """DistributedSampler whose indices carry the epoch, so per-sample seeds stay right even
    with persistent data workers (which never see `set_epoch` on their dataset copy).

    `set_epoch(epoch, skip=n)` starts the epoch's order at its n-th sample (of this process): a run
    resumed mid-epoch reads the samples the interrupted run had not reached, without loading the
    others. The order itself depends on (seed, epoch) only, so it is the interrupted run's."""

    skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, index) for index in itertools.islice(super().__iter__(), self.skip, None))
