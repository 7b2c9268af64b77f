"""Batched augmentation (mae_core.batch_augment) against the per-sample torchvision path: the same
crops, flips and masks, pixels within the stated uint8 tolerance, and exact resume in training."""

import numpy as np
import pytest
import torch
from helpers_pretrain import toy_config, write_image
from PIL import Image
from test_engine import StopAfter

from mae_core.batch_augment import CachedImages, pretrain_views, resize_weights
from mae_core.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from mae_core.data import build_dataset
from mae_core.engine import pretrain
from mae_core.masking import RandomMasking

GRID, NUM_MASKED = (4, 4), 12


def both_paths(root, in_chans, img_size=(16, 16), **changes):
    """(per-sample views, collate), (batched views, collate with `changes`) over the same folder."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_chans == 3 else ((0.5,), (0.25,))
    paths = []
    for batched in (False, True):
        cfg = DataConfig(root=str(root), mean=mean, std=std, batched_augment=batched,
                         **(changes if batched else {}))
        paths.append(pretrain_views(cfg, lambda t, cfg=cfg: build_dataset(cfg, t, in_chans), RandomMasking(),
                                    GRID, NUM_MASKED, 7, img_size, in_chans))
    return paths, torch.tensor(std).view(1, -1, 1, 1)


def collated(path, keys):
    views, collate = path
    return collate([views[k] for k in keys])


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_batched_views_equal_per_sample_views_within_two_levels(tmp_path, mode):
    """Noise images of several sizes, so crops are both enlarged and shrunk (antialiased): masks
    are identical, pixels differ by at most 2 of 255 levels and in under 2% of pixels."""
    for i, size in enumerate([(20, 16), (16, 16), (40, 28), (9, 33)]):
        write_image(tmp_path / f"{i}.png", size=size, seed=i, mode=mode)
    in_chans = 3 if mode == "RGB" else 1
    (per_sample, batched), std = both_paths(tmp_path, in_chans)
    keys = [(epoch, i) for epoch in range(6) for i in range(4)]
    ref_imgs, ref_noise, _ = collated(per_sample, keys)
    imgs, noise, skipped = collated(batched, keys)
    assert imgs.shape == ref_imgs.shape == (24, in_chans, 16, 16) and imgs.dtype == torch.float32
    assert torch.equal(noise, ref_noise) and skipped == []
    levels = ((imgs - ref_imgs) * std * 255).abs()
    assert levels.max() <= 2.0 + 1e-3
    assert (levels > 0.5).float().mean() < 0.02
    # Same crop box and flip: a large crop difference would show in nearly every pixel.
    assert levels.mean() < 0.05


def test_sixteen_bit_images_are_resampled_in_float_like_the_per_sample_path(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 65536, size=(24, 30), dtype=np.uint16)).save(tmp_path / f"{i}.png")
    (per_sample, batched), std = both_paths(tmp_path, 1)
    keys = [(0, i) for i in range(3)] + [(1, i) for i in range(3)]
    ref_imgs, _, _ = collated(per_sample, keys)
    imgs, _, _ = collated(batched, keys)
    assert ((imgs - ref_imgs) * std).abs().max() < 1e-5


def test_a_sample_is_the_same_in_any_batch_and_order(tmp_path):
    for i in range(5):
        write_image(tmp_path / f"{i}.png", size=(30, 22), seed=i)
    (_, batched), _ = both_paths(tmp_path, 3, cache_images=True)
    imgs, noise, _ = collated(batched, [(2, i) for i in range(5)])
    again, again_noise, _ = collated(batched, [(2, 3), (5, 0), (2, 1)])
    assert torch.equal(again[0], imgs[3]) and torch.equal(again[2], imgs[1])
    assert torch.equal(again_noise[0], noise[3])
    other_epoch, _, _ = collated(batched, [(3, 3)])
    assert not torch.equal(other_epoch[0], imgs[3])


def test_resize_weights_are_torchs_antialiased_bicubic():
    x = torch.rand(2, 3, 1, 13)
    for out in (5, 13, 40):
        expected = torch.nn.functional.interpolate(x, size=(1, out), mode="bicubic", antialias=True)
        assert torch.allclose(x @ resize_weights(13, out).T, expected, atol=1e-5)


def test_image_cache_decodes_once_and_cache_needs_the_batched_path(tmp_path):
    write_image(tmp_path / "a.png")
    cached = CachedImages(build_dataset(DataConfig(root=str(tmp_path)), None, 3))
    first = cached[0]
    (tmp_path / "a.png").unlink()
    assert cached[0] is first
    cfg = DataConfig(root=str(tmp_path), cache_images=True)
    with pytest.raises(ValueError, match="cache_images needs data.batched_augment"):
        pretrain_views(cfg, lambda t: build_dataset(cfg, t, 3), RandomMasking(), GRID, NUM_MASKED, 0,
                       (16, 16), 3)


@pytest.mark.slow
def test_batched_training_resumes_exactly_and_follows_the_per_sample_loss_curve(tmp_path):
    """Fashion-MNIST toy run, 2 epochs x 8 steps: the batched path's losses match the per-sample
    path's within 1e-3 relative (same crops and masks, pixels within 2 levels), and an interrupted
    batched run resumes onto the same curve exactly."""
    fast = {"data.batched_augment": True, "data.cache_images": True, "model.drop_path_rate": 0.2}
    reference = pretrain(toy_config(tmp_path / "ref", {"model.drop_path_rate": 0.2}))
    straight = pretrain(toy_config(tmp_path / "straight", fast))
    assert straight.losses == pytest.approx(reference.losses, rel=1e-3)
    with pytest.raises(KeyboardInterrupt):
        pretrain(toy_config(tmp_path / "resumed", fast), hooks=[StopAfter(1)])
    resumed = pretrain(toy_config(tmp_path / "resumed", fast), resume=tmp_path / "resumed" / "last.pth")
    assert len(resumed.losses) == 8
    assert resumed.losses == pytest.approx(straight.losses[8:], abs=1e-6)
