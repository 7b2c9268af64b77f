"""A toy MAE on Fashion-MNIST (28x28 grey), small enough to pretrain on two CPU cores:
`python tools/pretrain.py --config configs/pretrain/fashion_mnist_toy.py`. Needs the Debian
package (apt-get install -y dataset-fashion-mnist). Pixel targets are not normalised per patch:
the 4x4 background patches are flat, and dividing by their tiny spread only amplifies noise."""

from pathlib import Path

from mae_core.config import DataConfig, ModelConfig, OptimConfig, load_pretrain_config, override

base = load_pretrain_config(Path(__file__).with_name("base.py"))
config = override(base, {
    "model": ModelConfig(arch="vit_toy_patch4", img_size=28, in_chans=1, norm_pix_loss=False),
    # Fashion-MNIST's own pixel mean and spread (train split).
    # Batched augmentation, decoded images kept, freed memory kept mapped: the small-model fast path
    # (docs/benchmarks.md, "Demo pretraining step"); the demo's pretraining inherits it from here.
    "data": DataConfig(dataset="fashion_mnist", mean=(0.286,), std=(0.353,), limit=4096, num_workers=1,
                       batched_augment=True, cache_images=True),
    "retain_host_memory": True,
    "optim": OptimConfig(blr=1.5e-3, warmup_epochs=1),
    "epochs": 4,
    "batch_size": 128,
    "effective_batch": 128,
    "amp": "none",
    "device": "cpu",
    "save_every": 2,
    "log_every": 8,
    "output_dir": "output/pretrain/fashion_mnist_toy",
})
