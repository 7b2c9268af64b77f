"""Command-line `key=value` overrides of a LazyConfig that must name keys the config has.

Detectron2's `LazyConfig.apply_overrides` creates any key it is given, so a typo
(`train.max_itr=5`) is accepted and ignored. Here a plain `key=value` must name an existing key;
adding a key takes Hydra's explicit `+key=value` (an error if the key exists) or `++key=value`
(add or set). Deletion (`~key`) is not supported by Detectron2."""

from __future__ import annotations

import logging
from pathlib import Path

from detectron2.config import LazyConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from mae_core.config import closest_keys
from mae_core.errors import UserError

from .catalogue import fit_heads_to_backbone


class OverrideError(UserError, ValueError):
    """An override that names no key of the config (or adds one that exists); names the key and
    the closest existing keys."""


def config_keys(cfg) -> list[str]:
    """Every key of a config, dotted (`model.backbone.net.depth`); lists count as values."""

    def walk(tree: dict, prefix: str) -> list[str]:
        keys = []
        for key, value in tree.items():
            keys.append(f"{prefix}{key}")
            if isinstance(value, dict):
                keys += walk(value, f"{prefix}{key}.")
        return keys

    return walk(_tree(cfg), "")


def has_key(cfg, key: str) -> bool:
    node = _tree(cfg)
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def _tree(cfg) -> dict:
    """The config as plain dicts and lists, interpolations left unresolved."""
    return OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else dict(cfg)


def apply_overrides(cfg, overrides: list[str]):
    """`LazyConfig.apply_overrides` after checking that each `key=value` names an existing key."""
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if override.is_delete():
            raise OverrideError(f"~{key}: deleting a key is not supported; set it to null instead")
        exists = has_key(cfg, key)
        if override.is_add() and exists:
            raise OverrideError(f"+{key}: the config already has {key}; set it with {key}=VALUE (no '+')")
        if not exists and not (override.is_add() or override.is_force_add()):
            raise OverrideError(
                f"{key}: the config has no such key ({closest_keys(key, config_keys(cfg))}). "
                f"To add a new key on purpose, write +{key}=VALUE"
            )
    return LazyConfig.apply_overrides(cfg, overrides)


def trust_pickles(cfg) -> None:
    """--allow-pickle: the checkpoints the run loads may be pickled files (train.allow_pickle: the
    MAE checkpoint, the weights; a catalogue backbone's own checkpoint through its options)."""
    cfg.train.allow_pickle = True
    backbone = cfg.model.backbone
    if "name" in backbone and "options" in backbone:  # detection.catalogue.DetectronCatalogueBackbone
        backbone.options = {**(backbone.options or {}), "allow_pickle": True}


def load_lazy_config(path: str, overrides: list[str]):
    """`LazyConfig.load(path)` with checked overrides, and the heads' widths fitted to a catalogue
    backbone (so `model.backbone = L(DetectronCatalogueBackbone)(...)` needs no width edits). A
    config file that does not exist is refused by name (LazyConfig would raise from deep in iopath)."""
    if not Path(path).is_file():
        raise OverrideError(f"--config-file: config file {path} does not exist")
    cfg = apply_overrides(LazyConfig.load(path), overrides)
    for change in fit_heads_to_backbone(cfg):
        logging.getLogger("detection").info(f"heads fitted to the catalogue backbone: {change}")
    return cfg


__all__ = ["OverrideError", "apply_overrides", "config_keys", "has_key", "load_lazy_config", "trust_pickles"]
