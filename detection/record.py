"""What a detection run says about itself in its run record (mae_core.run_record): the backbone
(a catalogue name and its options, or the config's backbone type and size), the initial checkpoint,
seed, image size, batch and the data evaluated, read from the LazyConfig it ran."""

from __future__ import annotations

from omegaconf import OmegaConf

from mae_core.distributed import unwrap
from mae_core.run_record import protocol_fields

from .catalogue import DetectronCatalogueBackbone


def plain(value):
    """A config value as plain JSON-able data (OmegaConf containers converted)."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


# A config backbone's size: its net's named size and the keys that change it.
SIZE_KEYS = ("patch_size", "embed_dim", "depth", "num_heads")


def backbone_fields(cfg, model) -> dict:
    spec = cfg.model.backbone
    if spec._target_ is DetectronCatalogueBackbone:
        options = {k: v for k, v in (plain(spec.get("options")) or {}).items() if k != "allow_pickle"}
        return {"backbone": spec.name, "checkpoint": spec.get("checkpoint") or None,
                "backbone_kwargs": {"out_channels": spec.get("out_channels", 256), **options}}
    target = spec._target_ if isinstance(spec._target_, str) else spec._target_.__name__
    net = spec.get("net") or {}
    size = [str(net["arch"])] if "arch" in net else []
    size += [f"{key}={net[key]}" for key in SIZE_KEYS if key in net]
    params = sum(p.numel() for p in unwrap(model).backbone.parameters()) / 1e6
    return {"backbone": f"{target}({', '.join(size)})" if size else target, "config_backbone": True,
            "params": params,
            "checkpoint": cfg.train.get("mae_checkpoint") or cfg.train.get("init_checkpoint") or None}


def run_record(cfg, model) -> dict:
    """The record of a run of `cfg` with `model` (built from it); an evaluation completes it with
    mae_core.run_record.evaluation_record."""
    test, train = cfg.dataloader.test.dataset, cfg.dataloader.train.dataset
    return {
        "task": "det",
        **backbone_fields(cfg, model),
        "seed": cfg.train.get("seed", -1),
        "img_size": OmegaConf.select(cfg, "dataloader.train.mapper.augmentations.image_size", default=None),
        "batch_size": OmegaConf.select(cfg, "dataloader.train.total_batch_size", default=None),
        "eval_data": str(test.get("json_file") or test.get("name")),
        **protocol_fields(train.get("label_fraction"), train.get("label_count"), train.get("subset_seed", 0),
                          bool(cfg.model.backbone.get("freeze"))),
    }
