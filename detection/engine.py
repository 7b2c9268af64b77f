"""Training and evaluation pieces for Detectron2 LazyConfigs that `detection.train` puts
together: an atomic, weights-only checkpointer that never writes a non-finite tensor, initialisation
from an MAE checkpoint, the optimizer built with the model's parameter groups, and evaluation saved as
JSON (refused for a model with non-finite weights)."""

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

from mae_core.checkpoint import (
    CheckpointError,
    IncompleteLoadError,
    NonFiniteError,
    describe_non_finite,
    few_names,
    load_checkpoint_file,
    load_pretrained,
    save_checkpoint,
    write_atomically,
)
from mae_core.distributed import unwrap

from .backbone import from_detectron2_vitdet

logger = logging.getLogger("detection")


class AtomicCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, writing through `mae_core.checkpoint.save_checkpoint` (a crash
    never leaves a truncated file) and reading with `torch.load(weights_only=True)`.

    Detectron2 ViTDet checkpoints (pyramid levels named `simfp_<K>`) load too: their keys are
    renamed to this toolkit's. Pickled files (Detectron2's `.pkl` model zoo) need `allow_pickle`.

    `strict` (evaluation, inference) refuses a file that leaves any model weight unloaded, which
    Detectron2 only logs. Weights holding a NaN or an infinity are neither loaded (a run would train
    from them until its first save) nor saved: `save` raises `NonFiniteError` instead, so
    `last_checkpoint` keeps naming the last finite file."""

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        allow_pickle: bool = False,
        strict: bool = False,
        **checkpointables,
    ):
        super().__init__(model, save_dir, **checkpointables)
        self.allow_pickle = allow_pickle
        self.strict = strict
        self._loading = ""

    def load(self, path: str, checkpointables=None) -> dict:
        if path and "://" not in path and not os.path.isfile(path):  # upstream: a bare assert
            raise CheckpointError(f"checkpoint {path} does not exist")
        return super().load(path, checkpointables)

    def _load_file(self, filename: str):
        if filename.endswith(".pkl") and not self.allow_pickle:
            raise CheckpointError(
                f"{filename} is a pickle, which can run code when loaded; if you trust it (e.g. a "
                "Detectron2 model-zoo file), pass train.allow_pickle=True"
            )
        self._loading = filename
        loaded = super()._load_file(filename)
        if not isinstance(loaded.get("model"), dict):
            raise CheckpointError(f"{filename} holds no state dict under 'model'")
        return loaded

    def _load_model(self, checkpoint: dict):
        bad = describe_non_finite(checkpoint["model"])
        if bad:
            raise NonFiniteError(f"not loading {self._loading}: {bad}")
        checkpoint["model"] = from_detectron2_vitdet(checkpoint["model"])
        incompatible = super()._load_model(checkpoint)
        problems = incompatible.missing_keys + [k for k, _, _ in incompatible.incorrect_shapes]
        if self.strict and problems:
            raise CheckpointError(
                f"{self._loading} does not hold the whole model (another architecture or config?): "
                f"{len(problems)} weights missing or of another shape: {few_names(problems)}"
                f"{_class_count_note(incompatible.incorrect_shapes)}"
            )
        return incompatible

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict(), **kwargs}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        bad = describe_non_finite(data)
        if bad:
            raise NonFiniteError(
                f"not saving {name}.pth: {bad}; the last finite checkpoint "
                f"is {self.get_checkpoint_file() or 'none (no checkpoint was written)'}"
            )
        last_good = self.get_checkpoint_file() or None
        path = save_checkpoint(data, Path(self.save_dir) / f"{name}.pth", last_good)
        self.logger.info(f"Saved checkpoint {path}")
        self.tag_last_checkpoint(path.name)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Upstream truncates `last_checkpoint` and then writes it; here it is replaced whole, so a
        failed write (a full disk) leaves it naming the last good checkpoint, not empty."""
        saved = Path(self.save_dir) / last_filename_basename  # complete: written before it is tagged
        record = Path(self.save_dir) / "last_checkpoint"
        write_atomically(record, lambda f: f.write(saved.name.encode()), saved)

    def _torch_load(self, f: str):
        return load_checkpoint_file(f, allow_pickle=self.allow_pickle)


CLASS_SCORES = "roi_heads.box_predictor.cls_score.weight"  # (classes + background, features)


def _class_count_note(incorrect_shapes: list[tuple[str, tuple, tuple]]) -> str:
    """What a box classifier of another width means: a checkpoint trained on another class count."""
    for key, saved, model in incorrect_shapes:
        if key == CLASS_SCORES:
            return (f"; its box classifier has {saved[0] - 1} classes, the config's model "
                    f"(model.roi_heads.num_classes) {model[0] - 1}")
    return ""


def init_backbone_from_mae(
    model: nn.Module, path: str, allow_pickle: bool = False, allow_partial: bool = False
):
    """Loads an MAE checkpoint (toolkit or official layout) into `model.backbone.net` through
    mae_core's converter and logs the report. A checkpoint that does not fit completely is an
    error naming the keys (training would silently start from partly random blocks), unless the
    user opted in with `train.allow_partial_load=True`.

    Args:
        model: the detector (possibly DDP-wrapped) whose `backbone.net` is a toolkit ViT.
        path: the MAE checkpoint (`train.mae_checkpoint`).
        allow_pickle: trust a pickled checkpoint file (`train.allow_pickle`).
        allow_partial: load what fits and warn about the rest.

    Returns:
        The `mae_core.checkpoint.LoadReport`.
    """
    try:
        report = load_pretrained(
            unwrap(model).backbone.net, path, allow_pickle=allow_pickle, allow_partial=allow_partial
        )
    except IncompleteLoadError as exc:
        raise CheckpointError(
            f"train.mae_checkpoint: {exc}\nTo train from it anyway, set train.allow_partial_load=True."
        ) from exc
    logger.info(f"Backbone initialised from MAE checkpoint {path}:\n{report}")
    if allow_partial and report.problems:
        logger.warning(f"Partial load of {path} (train.allow_partial_load=True): {len(report.problems)} keys "
                       "left at initialisation, listed above")
    return report


def wrap_ddp(cfg, model: nn.Module) -> nn.Module:
    """DDP when there are several processes; on CPU (gloo) without `device_ids`, which
    Detectron2's helper would otherwise fill with a GPU index."""
    kwargs = dict(cfg.train.ddp)
    if torch.device(cfg.train.device).type == "cpu":
        kwargs["device_ids"] = None
    return create_ddp_model(model, **kwargs)


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """`cfg.optimizer` instantiated on the (unwrapped) model's parameter groups; the argument order
    of `mae_core.engine.build_optimizer`."""
    cfg.optimizer.params.model = unwrap(model)
    return instantiate(cfg.optimizer)


def evaluate(cfg, model: nn.Module, iteration: int | None = None, source: str = "the model") -> dict:
    """Runs `cfg.dataloader.evaluator` on `cfg.dataloader.test`; on the main process prints the
    AP table and writes it to `<output_dir>/eval_results.json` (and a copy per iteration).
    A model with a NaN or infinite weight is refused (`source` names it in the message): its
    numbers would mean nothing."""
    bad = describe_non_finite(unwrap(model).state_dict())
    if bad:
        raise NonFiniteError(f"not evaluating {source}: {bad}")
    loader = instantiate(cfg.dataloader.test)  # registers a custom dataset before the evaluator reads it
    evaluator = instantiate(cfg.dataloader.evaluator)
    results = inference_on_dataset(model, loader, evaluator)
    if comm.is_main_process() and results:
        print_csv_format(results)
        out_dir = Path(cfg.train.output_dir)
        names = ["eval_results.json"] + (
            [f"eval_results_iter{iteration:07d}.json"] if iteration is not None else []
        )
        text = json.dumps(_nan_to_none({"iteration": iteration, **results}), indent=2).encode()
        for name in names:
            write_atomically(out_dir / name, lambda f: f.write(text))
    return results


def _nan_to_none(obj):
    """Strict JSON: metrics COCO cannot compute (e.g. APl without large objects) become null."""
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    return None if isinstance(obj, float) and math.isnan(obj) else obj


__all__ = [
    "AtomicCheckpointer",
    "NonFiniteError",
    "build_optimizer",
    "evaluate",
    "init_backbone_from_mae",
    "wrap_ddp",
]
