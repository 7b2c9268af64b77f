"""The MMSegmentation stack itself works here: mmcv imports in the installed flavour (see
tests/test_mmcv_flavour.py), and a tiny EncoderDecoder with UPerHead (on the toolkit's backbone)
trains under mmengine's Runner on an ADE20K-layout dataset read by MMSegmentation's stock
ADE20KDataset, and IoUMetric returns mIoU.
Also: the toolkit's configs run under MMSegmentation's own tools/train.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mmseg
import pytest
from helpers_seg import make_shapes_dataset
from mmengine.config import Config
from mmengine.runner import Runner

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "segmentation" / "upernet_vit_tiny_cpu.py"


@pytest.mark.slow
def test_upernet_trains_under_runner_on_stock_ade20k_dataset_and_reports_miou(tmp_path):
    data = make_shapes_dataset(tmp_path / "ADEChallengeData2016", n_train=2, n_val=2, label_offset=1)
    cfg = Config.fromfile(TINY)
    for loader, split in (("train_dataloader", "training"), ("val_dataloader", "validation")):
        dataset = cfg[loader].dataset
        dataset.update(
            type="ADE20KDataset",
            data_root=str(data),
            reduce_zero_label=True,
            data_prefix=dict(img_path=f"images/{split}", seg_map_path=f"annotations/{split}"),
        )
        dataset.pop("metainfo")
        for key in ("label_fraction", "label_count", "subset_seed"):  # the toolkit dataset's subset keys
            dataset.pop(key, None)
        for step in dataset.pipeline:
            if step.type == "LoadCheckedAnnotations":
                step.type = "LoadAnnotations"
    cfg.test_dataloader = cfg.val_dataloader
    cfg.model.decode_head.num_classes = cfg.model.auxiliary_head.num_classes = 150
    cfg.train_cfg.update(max_iters=2, val_interval=100)
    cfg.work_dir = str(tmp_path / "work")
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 2
    assert type(runner.model.backbone).__name__ == "MAEViT"
    metrics = runner.val()
    assert set(metrics) >= {"aAcc", "mIoU", "mAcc"} and 0.0 <= metrics["mIoU"] <= 100.0


@pytest.mark.slow
def test_toolkit_config_runs_under_mmsegmentations_own_train_tool(tmp_path):
    train_py = Path(mmseg.__file__).parent / ".mim" / "tools" / "train.py"
    data = make_shapes_dataset(tmp_path / "data", n_train=2, n_val=1)
    options = [f"{loader}.dataset.data_root={data}" for loader in ("train_dataloader", "val_dataloader")]
    cmd = [
        sys.executable,
        str(train_py),
        str(TINY),
        "--work-dir",
        str(tmp_path / "work"),
        "--cfg-options",
        *options,
        "train_cfg.max_iters=2",
        "train_cfg.val_interval=2",
        "default_hooks.checkpoint.interval=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    assert "mIoU" in proc.stdout + proc.stderr
    assert (tmp_path / "work" / "iter_2.pth").is_file()
