"""MAE's augmentation done on a whole batch at once, for small images where per-sample work
(decoding, a torchvision call per crop, per-sample tensors) costs more than the model step.

Per sample only the random numbers are drawn, from the same per-(seed, epoch, index) generator
and in the same order as `mae_core.data.MaskedViews` with `pretrain_transform` (crop box, flip,
masking noise), so crops, flips and masks are identical to the per-sample path. The resampling
then runs as two batched matrix products per batch: for every crop the row and column weights
are those of torch's antialiased bicubic resize (obtained by resizing an identity matrix, so the
kernel is the library's, not a copy), placed at the crop's offset and reversed for a flip.

Difference to the per-sample path: torchvision resizes uint8 images with fixed-point weights and
rounds after each pass; here both passes run in float32 weights, rounded to uint8 levels after
each pass too. Pixels differ by a level or two of 255, and rarely (tests/test_batch_augment.py
bounds both); crops, flips and masks are exactly the same."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .config import DataConfig
from .data import (
    ImageReadError,
    MaskedViews,
    SkippedImage,
    collate_views,
    pretrain_transform,
    read_or_skip,
    sample_seed,
)


class CachedImages(Dataset):
    """Each decoded (uint8 image, label) pair kept after its first read: a small image set (the
    demo's 4,000 64-pixel images are 49 MB) is decoded once per run instead of once per epoch.
    Unreadable images are not cached, so they fail (or are skipped) the same way every epoch."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.items: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if index not in self.items:
            self.items[index] = self.dataset[index]
        return self.items[index]


class CropDraws(Dataset):
    """Pretraining samples for `BatchAugment`: the uint8 image, its crop box and flip, and its
    masking noise, drawn exactly as `MaskedViews` draws them (same generator, same order).
    `dataset` yields untransformed uint8 (C, H, W) images. Returns (image, (top, left, height,
    width, flip), noise), or a `SkippedImage` for an unreadable image when `skip_bad_images`."""

    def __init__(self, dataset: Dataset, masking, grid: tuple[int, int], num_masked: int, seed: int,
                 img_size: tuple[int, int], cfg: DataConfig):
        self.dataset = dataset
        self.masking = masking
        self.grid = tuple(grid)
        self.num_masked = num_masked
        self.seed = seed
        self.crop = v2.RandomResizedCrop(img_size, scale=(cfg.min_scale, 1.0))
        self.hflip = cfg.hflip
        self.skip_bad_images = cfg.skip_bad_images

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only, to the same state as torch.manual_seed gives it: manual_seed
            # also queues a lazy seed per accelerator type with a formatted stack, a cost per call
            # that would rival the rest of a small sample's draws.
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            img = read_or_skip(self.dataset, index, self.skip_bad_images)
            if isinstance(img, SkippedImage):
                return img
            box = self.crop.make_params([img])
            # v2.RandomHorizontalFlip draws one number and flips when it is below p = 0.5.
            flip = self.hflip and bool(torch.rand(1) < 0.5)
            noise = self.masking(1, self.grid, self.num_masked, torch.device("cpu"))[0]
        return img, (box["top"], box["left"], box["height"], box["width"], flip), noise


@functools.lru_cache(maxsize=1024)
def resize_weights(in_len: int, out_len: int) -> torch.Tensor:
    """(out_len, in_len) weights of torch's antialiased bicubic resize along one axis: resizing
    the identity (one image row per input pixel) gives every input pixel's weight per output pixel.
    Along the width: with a width of 1, torch 2.14 returns the first output row for every row."""
    eye = torch.eye(in_len).reshape(in_len, 1, 1, in_len)
    out = F.interpolate(eye, size=(1, out_len), mode="bicubic", antialias=True, align_corners=False)
    return out[:, 0, 0, :].T.contiguous()


class BatchAugment:
    """Collate function for `CropDraws`: resized crop, flip and normalisation of the whole batch
    in two batched matrix products. Returns (images, noise, messages of skipped images) like
    `mae_core.data.collate_views`."""

    def __init__(self, img_size: tuple[int, int], mean, std):
        self.size = tuple(img_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, batch: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        skipped = [str(item) for item in batch if isinstance(item, SkippedImage)]
        kept = [item for item in batch if not isinstance(item, SkippedImage)]
        if not kept:
            raise ImageReadError("every image of a batch was unreadable:\n" + "\n".join(skipped))
        imgs = self.resample([img for img, _, _ in kept], [box for _, box, _ in kept])
        imgs = (imgs.div_(255) - self.mean) / self.std
        return imgs, torch.stack([noise for _, _, noise in kept]), skipped

    def resample(self, imgs: list[torch.Tensor], boxes: list[tuple]) -> torch.Tensor:
        """(B, C, out_h, out_w) float32 crops in uint8 units (0..255). uint8 images are rounded to
        whole levels after each pass, like torch's uint8 resize; float32 images in [0, 1] (16-bit
        files, see `read_image`) are not, like its float resize. Images may differ in size: they are
        zero-padded to the largest, which the weights (zero outside each crop) never read."""
        b, c = len(imgs), imgs[0].shape[0]
        levels = torch.tensor([img.dtype == torch.uint8 for img in imgs]).view(b, 1, 1, 1)
        height, width = max(i.shape[1] for i in imgs), max(i.shape[2] for i in imgs)
        out_h, out_w = self.size
        stack = torch.zeros(b, c, height, width)
        rows = torch.zeros(b, out_h, height)
        cols = torch.zeros(b, out_w, width)
        for n, (img, (top, left, h, w, flip)) in enumerate(zip(imgs, boxes, strict=True)):
            stack[n, :, : img.shape[1], : img.shape[2]] = img if img.dtype == torch.uint8 else img * 255
            rows[n, :, top : top + h] = resize_weights(h, out_h)
            col_weights = resize_weights(w, out_w)
            cols[n, :, left : left + w] = col_weights.flip(0) if flip else col_weights
        # Width first, rounded to uint8 levels in between, as torch's uint8 resize does (bicubic
        # overshoot at sharp edges is clipped there before the second pass).
        x = torch.bmm(stack.view(b, c * height, width), cols.transpose(1, 2)).view(b, c, height, out_w)
        x = torch.matmul(rows.unsqueeze(1), torch.where(levels, x.round().clamp(0, 255), x))
        return torch.where(levels, x.round().clamp(0, 255), x)


def pretrain_views(cfg: DataConfig, dataset_factory, masking, grid, num_masked: int, seed: int,
                   img_size: tuple[int, int], in_chans: int):
    """(dataset, collate_fn) for pretraining: batched augmentation when `cfg.batched_augment`,
    else the per-sample torchvision path; decoded images cached when `cfg.cache_images`.
    `dataset_factory(transform)` builds the image dataset with that per-sample transform."""
    transform = pretrain_transform(cfg, img_size, in_chans)  # also checks mean and std
    if not cfg.batched_augment:
        if cfg.cache_images:
            raise ValueError("data.cache_images needs data.batched_augment=True (the per-sample path "
                             "decodes inside its transformed dataset)")
        dataset = dataset_factory(transform)
        views = MaskedViews(dataset, masking, grid, num_masked, seed, cfg.skip_bad_images)
        return views, collate_views
    dataset = dataset_factory(None)
    if cfg.cache_images:
        dataset = CachedImages(dataset)
    views = CropDraws(dataset, masking, grid, num_masked, seed, img_size, cfg)
    return views, BatchAugment(img_size, cfg.mean, cfg.std)
