"""Pretraining data: Fashion-MNIST from the Debian package, image folders, MAE's augmentation,
clear errors for unreadable images, and per-sample seeding."""

import gzip

import numpy as np
import pytest
import torch
from helpers_pretrain import FASHION_MNIST_STATS, require_fashion_mnist, write_corrupt_png, write_image
from PIL import Image
from torch.utils.data import DataLoader

from mae_core.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from mae_core.data import (
    FASHION_MNIST_INSTALL,
    DatasetNotFoundError,
    EpochSampler,
    FashionMNIST,
    ImageFolder,
    ImageReadError,
    MaskedViews,
    build_dataset,
    collate_views,
    eval_transform,
    find_fashion_mnist,
    list_images_recursively,
    pretrain_transform,
    read_idx,
    read_image,
)
from mae_core.masking import BlockMasking, RandomMasking


def test_fashion_mnist_reads_the_real_idx_files():
    require_fashion_mnist()
    train = FashionMNIST(split="train")
    test = FashionMNIST(split="test")
    assert len(train) == 60000 and len(test) == 10000
    img, label = train[0]
    assert img.shape == (1, 28, 28) and img.dtype == torch.uint8 and 0 <= label < 10
    # Balanced classes and the data set's published pixel statistics.
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    pixels = train.images.float() / 255
    assert pixels.mean().item() == pytest.approx(FASHION_MNIST_STATS["mean"][0], abs=1e-3)
    assert pixels.std().item() == pytest.approx(FASHION_MNIST_STATS["std"][0], abs=1e-3)


def test_missing_fashion_mnist_names_the_install_command(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        find_fashion_mnist(tmp_path)
    assert FASHION_MNIST_INSTALL in str(err.value) and str(tmp_path) in str(err.value)


def test_idx_reader_refuses_a_truncated_file(tmp_path):
    bad = tmp_path / "images-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(100))
    with pytest.raises(ValueError, match="images-idx3-ubyte.gz.*header says"):
        read_idx(bad)


def test_image_folder_with_class_subfolders_and_recursive(tmp_path):
    write_image(tmp_path / "cls" / "dog" / "a.png")
    write_image(tmp_path / "cls" / "cat" / "deeper" / "b.jpg")
    write_image(tmp_path / "cls" / "cat" / "c.png")
    folder = ImageFolder(tmp_path / "cls")
    assert folder.classes == ["cat", "dog"]
    named = sorted(zip([p.name for p in folder.paths], folder.labels, strict=True))
    assert named == [("a.png", 1), ("b.jpg", 0), ("c.png", 0)]
    (tmp_path / "flat" / "x").mkdir(parents=True)
    write_image(tmp_path / "flat" / "top.png")
    write_image(tmp_path / "flat" / "x" / "nested.png")
    flat = ImageFolder(tmp_path / "flat", in_chans=1)
    assert len(flat) == 2 and flat.labels == [-1, -1]
    assert flat[0][0].shape == (1, 16, 20)


def test_image_listing_keeps_files_and_searches_folders_at_any_depth(tmp_path):
    write_image(tmp_path / "set" / "b.PNG")
    write_image(tmp_path / "set" / "sub" / "deeper" / "a.jpg")
    (tmp_path / "set" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "single.png")
    assert list_images_recursively([tmp_path / "single.png", str(tmp_path / "set")]) == [
        tmp_path / "single.png", tmp_path / "set" / "b.PNG", tmp_path / "set" / "sub" / "deeper" / "a.jpg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"no images .* found under .*empty"):
        list_images_recursively([tmp_path / "empty"])
    with pytest.raises(DatasetNotFoundError, match=r"image .*nope\.png does not exist"):
        list_images_recursively([tmp_path / "nope.png"])


def test_empty_or_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "nope")
    with pytest.raises(DatasetNotFoundError, match="no images"):
        ImageFolder(tmp_path)


@pytest.mark.parametrize("in_chans,mean,std", [(1, (0.5,), (0.25,)), (3, IMAGENET_MEAN, IMAGENET_STD)])
def test_augmentation_keeps_constant_images_and_normalises(in_chans, mean, std):
    """Crops, flips and bicubic resizing keep a flat image flat; normalisation is (x/255 - m) / s
    per channel. Non-square output size."""
    cfg = DataConfig(mean=mean, std=std)
    transform = pretrain_transform(cfg, (24, 40), in_chans)
    values = torch.tensor([10, 130, 250][:in_chans], dtype=torch.uint8)
    img = values.view(-1, 1, 1).expand(in_chans, 50, 70).contiguous()
    out = transform(img)
    assert out.shape == (in_chans, 24, 40) and out.dtype == torch.float32
    expected = (values.float() / 255 - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(out, expected.view(-1, 1, 1).expand_as(out), atol=1e-5)


def test_augmentation_crops_and_flips():
    """Over many draws the crop covers 20-100% of the area and half the views are mirrored."""
    cfg = DataConfig(mean=(0.0,), std=(1.0,), min_scale=0.2)
    transform = pretrain_transform(cfg, 16, 1)
    ramp = torch.arange(64, dtype=torch.uint8).repeat(64, 1).unsqueeze(0) * 4  # brightness grows left->right
    mirrored = sum(bool((v := transform(ramp))[0, 8, 0] > v[0, 8, -1]) for _ in range(200))
    assert 60 < mirrored < 140
    spans = [transform(ramp)[0, 8] for _ in range(100)]
    widths = torch.tensor([(s.max() - s.min()).item() for s in spans])
    assert widths.min() < 0.5 * widths.max()  # crops of different sizes


def test_wrong_mean_std_is_named():
    with pytest.raises(ValueError, match="data.mean and data.std need 1 values"):
        pretrain_transform(DataConfig(), 28, 1)
    with pytest.raises(ValueError, match="positive"):
        pretrain_transform(DataConfig(mean=(0.5,), std=(0.0,)), 28, 1)
    with pytest.raises(ValueError, match="in_chans=1"):
        build_dataset(DataConfig(dataset="fashion_mnist"), in_chans=3)


def test_corrupt_image_raises_naming_the_file(tmp_path):
    write_image(tmp_path / "good.png")
    bad = write_corrupt_png(tmp_path / "broken.png")
    (tmp_path / "notes.jpg").write_text("not an image")
    folder = ImageFolder(tmp_path)
    names = [p.name for p in folder.paths]
    with pytest.raises(ImageReadError, match=str(bad)):
        folder[names.index("broken.png")]
    with pytest.raises(ImageReadError, match="notes.jpg"):
        folder[names.index("notes.jpg")]
    assert folder[names.index("good.png")][0].shape == (3, 16, 20)


def test_skipped_images_are_dropped_and_reported(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"ok{i}.png", seed=i)
    write_corrupt_png(tmp_path / "broken.png")
    cfg = DataConfig(mean=(0.5,) * 3, std=(0.5,) * 3)
    views = MaskedViews(ImageFolder(tmp_path, transform=pretrain_transform(cfg, 8, 3)), RandomMasking(),
                        (2, 2), 3, seed=0, skip_bad_images=True)
    sampler = EpochSampler(views, num_replicas=1, rank=0, shuffle=False)
    loader = DataLoader(views, batch_size=4, sampler=sampler, collate_fn=collate_views)
    imgs, noise, skipped = next(iter(loader))
    assert imgs.shape == (3, 3, 8, 8) and noise.shape == (3, 4)
    assert len(skipped) == 1 and "broken.png" in skipped[0]
    strict = MaskedViews(views.dataset, RandomMasking(), (2, 2), 3, seed=0)
    with pytest.raises(ImageReadError, match="broken.png"):
        next(iter(DataLoader(strict, batch_size=4, sampler=sampler, collate_fn=collate_views)))


def test_views_and_masks_depend_only_on_seed_epoch_and_index():
    """The property behind exact resume and DDP == accumulation: a sample's view and mask do not
    depend on the data workers, the batch it lands in, or the global RNG."""
    require_fashion_mnist()
    cfg = DataConfig(dataset="fashion_mnist", limit=32, num_workers=0, **FASHION_MNIST_STATS)
    views = MaskedViews(build_dataset(cfg, pretrain_transform(cfg, 28, 1), 1), BlockMasking(min_block=4),
                        (7, 7), 36, seed=3)
    a, b = views[(0, 5)], views[(0, 5)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], views[(1, 5)][0])
    sampler = EpochSampler(views, num_replicas=1, rank=0, seed=3)
    sampler.set_epoch(2)
    in_process = list(DataLoader(views, batch_size=8, sampler=sampler, collate_fn=collate_views))
    torch.manual_seed(123)  # other global RNG, other worker seeds
    in_workers = list(DataLoader(views, batch_size=4, sampler=sampler, collate_fn=collate_views,
                                 num_workers=2))
    assert torch.equal(torch.cat([b[0] for b in in_process]), torch.cat([b[0] for b in in_workers]))
    assert torch.equal(torch.cat([b[1] for b in in_process]), torch.cat([b[1] for b in in_workers]))


def test_epoch_sampler_splits_one_permutation_between_processes():
    data = list(range(40))
    whole = EpochSampler(data, num_replicas=1, rank=0, seed=1, drop_last=True)
    parts = [EpochSampler(data, num_replicas=2, rank=r, seed=1, drop_last=True) for r in range(2)]
    for s in [whole, *parts]:
        s.set_epoch(4)
    keys = list(whole)
    assert {epoch for epoch, _ in keys} == {4}
    assert sorted(keys) == sorted(list(parts[0]) + list(parts[1]))
    assert [i for _, i in keys][:8:2] == [i for _, i in parts[0]][:4]


def test_sixteen_bit_images_keep_their_scale_and_precision(tmp_path):
    """PIL's convert('L') clips 16-bit values above 255 to white (the issue: 99.6% of pixels at
    255); read_image scales by 65535 instead, as float32, and the transforms take that."""
    ramp = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    with Image.open(tmp_path / "ramp16.png") as img:
        assert img.mode in ("I;16", "I;16B", "I;16L")  # what makes convert() clip
    expected = torch.from_numpy(ramp.astype(np.float32) / 65535).unsqueeze(0)
    grey = read_image(tmp_path / "ramp16.png", 1)
    assert grey.dtype == torch.float32
    torch.testing.assert_close(grey, expected, rtol=0, atol=1e-7)
    rgb = read_image(tmp_path / "ramp16.png", 3)
    torch.testing.assert_close(rgb, expected.expand(3, -1, -1), rtol=0, atol=1e-7)
    # Through MAE's normalisation the 16-bit ramp matches its 8-bit rendering to within 8-bit steps.
    cfg = DataConfig(mean=(0.5,), std=(0.25,), min_scale=1.0, hflip=False)
    eight_bit = torch.from_numpy((ramp / 257).round().astype(np.uint8)).unsqueeze(0)
    normalise = eval_transform(cfg, 32, 1)
    torch.testing.assert_close(normalise(grey), normalise(eight_bit), rtol=0, atol=1 / 255 / 0.25)


@pytest.mark.parametrize(("mode", "array"), [
    ("F", np.full((8, 8), 40.0, dtype=np.float32)),
    ("I", np.full((8, 8), 70000, dtype=np.int32)),
])
def test_32_bit_images_are_refused_naming_file_and_mode(tmp_path, mode, array):
    path = tmp_path / f"image_{mode}.tif"
    Image.fromarray(array, mode).save(path)
    with pytest.raises(ImageReadError, match=rf"image_{mode}\.tif: mode '{mode}' .* no standard scale"):
        read_image(path, 1)


def test_lossy_conversions_are_logged_once_per_dataset_naming_the_first_file(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA").save(tmp_path / f"a{i}.png")
    palette = Image.fromarray(rng.integers(0, 4, (8, 8), dtype=np.uint8), "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    palette.save(tmp_path / "b_palette.png", transparency=0)
    Image.new("CMYK", (8, 8), (10, 20, 30, 40)).save(tmp_path / "c_cmyk.jpg")
    write_image(tmp_path / "d_rgb.png", size=(8, 8))
    folder = ImageFolder(tmp_path, in_chans=3)
    with caplog.at_level("WARNING", logger="mae_core.data"):
        images = [folder[i][0] for i in range(len(folder))] + [folder[0][0]]
    assert all(img.shape == (3, 8, 8) and img.dtype == torch.uint8 for img in images)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages  # one per kind, not one per image
    assert f"alpha channel dropped (first such file: {tmp_path / 'a0.png'}, mode 'RGBA')" in messages[0]
    assert "palette transparency dropped" in messages[1] and "b_palette.png" in messages[1]
    assert "CMYK converted to RGB" in messages[2] and "c_cmyk.jpg" in messages[2]
    # A second data set reports again: the note is per data set.
    caplog.clear()
    with caplog.at_level("WARNING", logger="mae_core.data"):
        ImageFolder(tmp_path, in_chans=3)[1]
    assert len(caplog.records) == 1 and "a1.png" in caplog.records[0].getMessage()
