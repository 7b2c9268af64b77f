"""MAE ViT-B/16, 800 epochs (the paper's default schedule)."""

from pathlib import Path

from mae_core.config import load_pretrain_config, override

config = override(load_pretrain_config(Path(__file__).with_name("base.py")), {
    "model.arch": "vit_base_patch16",
    "output_dir": "output/pretrain/mae_vit_base",
})
