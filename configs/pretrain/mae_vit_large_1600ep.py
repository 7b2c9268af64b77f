"""MAE ViT-L/16 with the paper's longest schedule, 1600 epochs (its best fine-tuning results)."""

from pathlib import Path

from mae_core.config import load_pretrain_config, override

config = override(load_pretrain_config(Path(__file__).with_name("mae_vit_large.py")), {
    "epochs": 1600,
    "output_dir": "output/pretrain/mae_vit_large_1600ep",
})
