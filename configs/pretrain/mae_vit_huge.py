"""MAE ViT-H/14, 800 epochs (the paper's default schedule)."""

from pathlib import Path

from mae_core.config import load_pretrain_config, override

config = override(load_pretrain_config(Path(__file__).with_name("base.py")), {
    "model.arch": "vit_huge_patch14",
    "output_dir": "output/pretrain/mae_vit_huge",
})
