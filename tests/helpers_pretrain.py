"""Shared pieces of the pretraining tests: real Fashion-MNIST (installing the Debian package when
it is missing and we may), a toy config, small image folders."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mae_core.config import DataConfig, ModelConfig, OptimConfig, PretrainConfig, override
from mae_core.data import FASHION_MNIST_INSTALL, DatasetNotFoundError, find_fashion_mnist

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST_STATS = {"mean": (0.286,), "std": (0.353,)}


def require_fashion_mnist() -> Path:
    """The Fashion-MNIST folder. Installs the Debian package when missing and running as root
    with apt; otherwise fails (never skips) with the install command."""
    try:
        return find_fashion_mnist()
    except DatasetNotFoundError:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(FASHION_MNIST_INSTALL.split(), check=False, capture_output=True, timeout=600)
    try:
        return find_fashion_mnist()
    except DatasetNotFoundError as exc:
        pytest.fail(f"real Fashion-MNIST data is needed: {exc}")


def toy_config(output_dir: Path, changes: dict | None = None) -> PretrainConfig:
    """`vit_toy_patch4` with a one-block decoder on the first 64 Fashion-MNIST images, CPU, fp32,
    no data workers, 8 steps per epoch; `changes` are dotted overrides."""
    require_fashion_mnist()
    base = PretrainConfig(
        model=ModelConfig(arch="vit_toy_patch4", img_size=28, in_chans=1, norm_pix_loss=False,
                          decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2),
        data=DataConfig(dataset="fashion_mnist", limit=64, num_workers=0, **FASHION_MNIST_STATS),
        optim=OptimConfig(blr=1e-3, warmup_epochs=1),
        epochs=2, batch_size=8, effective_batch=8, amp="none", device="cpu",
        save_every=1, log_every=1, output_dir=str(output_dir),
    )
    return override(base, changes or {})


def write_image(path: Path, size=(20, 16), seed: int = 0, mode: str = "RGB") -> Path:
    """A random-noise image of (width, height) `size`."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    array = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if channels == 1 else array, mode).save(path)
    return path


def write_corrupt_png(path: Path) -> Path:
    """A PNG cut off in the middle of its pixel data: the header reads, decoding fails."""
    full = write_image(path, size=(64, 64), seed=1)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
