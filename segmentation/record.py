"""What a segmentation run says about itself in its run record (mae_core.run_record): the backbone
(a catalogue name and its options, or the config's backbone type and size), the initial checkpoint,
seed, crop size, batch and the data evaluated, read from the mmengine config it ran."""

from __future__ import annotations

import os

from mmengine.dist import get_world_size

from mae_core.distributed import unwrap
from mae_core.run_record import protocol_fields

CATALOGUE_TYPE = "MMSegCatalogueBackbone"
# A config backbone's size: its named size and the keys that change it.
SIZE_KEYS = ("patch_size", "embed_dims", "embed_dim", "depth", "num_layers", "num_heads")


def initial_checkpoint(cfg) -> str | None:
    """The checkpoint the backbone starts from, under any of the keys a config may name it by."""
    backbone = cfg.model.backbone
    return (cfg.model.get("pretrained") or backbone.get("pretrained") or backbone.get("checkpoint")
            or (backbone.get("init_cfg") or {}).get("checkpoint") or None)


def backbone_fields(cfg, model) -> dict:
    spec = cfg.model.backbone
    if spec.type == CATALOGUE_TYPE:
        options = {k: v for k, v in (spec.get("options") or {}).items() if k != "allow_pickle"}
        return {"backbone": spec.name, "checkpoint": initial_checkpoint(cfg),
                "backbone_kwargs": {"out_channels": spec.get("out_channels", 256), **options}}
    size = [str(spec.arch)] if "arch" in spec else []
    size += [f"{key}={spec[key]}" for key in SIZE_KEYS if key in spec]
    params = sum(p.numel() for p in unwrap(model).backbone.parameters()) / 1e6
    return {"backbone": f"{spec.type}({', '.join(size)})" if size else spec.type, "config_backbone": True,
            "params": params, "checkpoint": initial_checkpoint(cfg)}


def data_evaluated(loader) -> str:
    """A data set as the folder of its images (data_root + data_prefix.img_path)."""
    dataset = loader.dataset
    images = (dataset.get("data_prefix") or {}).get("img_path", "")
    return os.path.join(dataset.get("data_root") or "", images)


def run_record(cfg, model, seed, loader) -> dict:
    """The record of a run of `cfg` with `model` (built from it) and `seed`, evaluated on the data
    of `loader` (the val loader in training, the test loader in a test); a test completes it with
    mae_core.run_record.evaluation_record."""
    size = cfg.model.get("data_preprocessor", {}).get("size") or cfg.get("crop_size")
    train = cfg.train_dataloader.dataset
    return {
        "task": "seg",
        **backbone_fields(cfg, model),
        "seed": seed,
        "img_size": size[0] if size else None,
        "batch_size": cfg.train_dataloader.batch_size * get_world_size(),
        "eval_data": data_evaluated(loader),
        **protocol_fields(train.get("label_fraction"), train.get("label_count"), train.get("subset_seed", 0),
                          bool(cfg.model.backbone.get("freeze"))),
    }
