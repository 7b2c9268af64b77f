"""Training and evaluation pieces for Detectron2 LazyConfigs that `tools/train_det.py` puts
together: an atomic, weights-only checkpointer, initialisation from an MAE checkpoint, the
optimizer built with the model's parameter groups, and evaluation saved as JSON."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from torch import nn

from mae_core.checkpoint import CheckpointError, load_checkpoint_file, load_pretrained, save_checkpoint

from .backbone import from_detectron2_vitdet

logger = logging.getLogger("detection")


class AtomicCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, writing through `mae_core.checkpoint.save_checkpoint` (a crash
    never leaves a truncated file) and reading with `torch.load(weights_only=True)`.

    Detectron2 ViTDet checkpoints (pyramid levels named `simfp_<K>`) load too: their keys are
    renamed to this toolkit's. Pickled files (Detectron2's `.pkl` model zoo) need `allow_pickle`."""

    def __init__(
        self, model: nn.Module, save_dir: str = "", *, allow_pickle: bool = False, **checkpointables
    ):
        super().__init__(model, save_dir, **checkpointables)
        self.allow_pickle = allow_pickle

    def _load_file(self, filename: str):
        if filename.endswith(".pkl") and not self.allow_pickle:
            raise CheckpointError(
                f"{filename} is a pickle, which can run code when loaded; if you trust it (e.g. a "
                "Detectron2 model-zoo file), pass train.allow_pickle=True"
            )
        return super()._load_file(filename)

    def _load_model(self, checkpoint: dict):
        checkpoint["model"] = from_detectron2_vitdet(checkpoint["model"])
        return super()._load_model(checkpoint)

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict(), **kwargs}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        path = save_checkpoint(data, Path(self.save_dir) / f"{name}.pth")
        self.logger.info(f"Saved checkpoint {path}")
        self.tag_last_checkpoint(path.name)

    def _torch_load(self, f: str):
        return load_checkpoint_file(f, allow_pickle=self.allow_pickle)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def init_backbone_from_mae(model: nn.Module, path: str, allow_pickle: bool = False):
    """Loads an MAE checkpoint (toolkit or official layout) into `model.backbone.net` through
    mae_core's converter and logs the report; a checkpoint that leaves encoder weights of the
    backbone unloaded is an error, as training would silently start from random blocks."""
    report = load_pretrained(unwrap(model).backbone.net, path, allow_pickle=allow_pickle)
    logger.info(f"Backbone initialised from MAE checkpoint {path}:\n{report}")
    report.raise_if_encoder_missing()
    return report


def wrap_ddp(cfg, model: nn.Module) -> nn.Module:
    """DDP when there are several processes; on CPU (gloo) without `device_ids`, which
    Detectron2's helper would otherwise fill with a GPU index."""
    kwargs = dict(cfg.train.ddp)
    if torch.device(cfg.train.device).type == "cpu":
        kwargs["device_ids"] = None
    return create_ddp_model(model, **kwargs)


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    cfg.optimizer.params.model = unwrap(model)
    return instantiate(cfg.optimizer)


def evaluate(cfg, model: nn.Module, iteration: int | None = None) -> dict:
    """Runs `cfg.dataloader.evaluator` on `cfg.dataloader.test`; on the main process prints the
    AP table and writes it to `<output_dir>/eval_results.json` (and a copy per iteration)."""
    loader = instantiate(cfg.dataloader.test)  # registers a custom dataset before the evaluator reads it
    evaluator = instantiate(cfg.dataloader.evaluator)
    results = inference_on_dataset(model, loader, evaluator)
    if comm.is_main_process() and results:
        print_csv_format(results)
        out_dir = Path(cfg.train.output_dir)
        names = ["eval_results.json"] + (
            [f"eval_results_iter{iteration:07d}.json"] if iteration is not None else []
        )
        for name in names:
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp = out_dir / f".{name}.tmp"
            tmp.write_text(json.dumps(_nan_to_none({"iteration": iteration, **results}), indent=2))
            os.replace(tmp, out_dir / name)
    return results


def _nan_to_none(obj):
    """Strict JSON: metrics COCO cannot compute (e.g. APl without large objects) become null."""
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    return None if isinstance(obj, float) and math.isnan(obj) else obj


__all__ = [
    "AtomicCheckpointer",
    "build_optimizer",
    "evaluate",
    "init_backbone_from_mae",
    "unwrap",
    "wrap_ddp",
]
