"""Pretraining configuration: dataclasses written as small Python files.

A config file assigns `config = PretrainConfig(...)`; a variant loads its base with `load_pretrain_config`
and changes a few fields with `override`, the same function that applies command-line
`key=value` pairs, so files and command lines cannot drift apart. This mirrors Detectron2's
LazyConfig on the detection side: plain Python files, variants override fields of a base."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import runpy
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used; the message names the file or key."""


@dataclass(frozen=True)
class ModelConfig:
    """The masked autoencoder to pretrain (`mae_core.engine.model_record` turns it into the
    constructor arguments stored in every checkpoint)."""

    arch: str = "vit_base_patch16"  # a name in mae_core.vit.VIT_ARCHS
    img_size: int | tuple[int, int] = 224  # (height, width) for non-square inputs
    in_chans: int = 3
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    masking: str = "random"  # a name in mae_core.masking.MASKING
    # The strategy's parameters, e.g. {"sigma": 2.0, "band": "low"} for filtered_noise; checked
    # against its constructor when the model is built (mae_core.masking.build_masking).
    masking_args: dict = field(default_factory=dict)
    # None keeps the size preset's decoder (mae_core.mae.decoder_preset).
    decoder_embed_dim: int | None = None
    decoder_depth: int | None = None
    decoder_num_heads: int | None = None
    drop_path_rate: float = 0.0


@dataclass(frozen=True)
class DataConfig:
    """The pretraining images and their augmentation (`mae_core.data`)."""

    dataset: str = "image_folder"  # "image_folder" or "fashion_mnist"
    root: str = ""  # image folder; for fashion_mnist, "" finds the Debian package's files
    split: str = "train"  # fashion_mnist only: "train" or "test"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    min_scale: float = 0.2  # RandomResizedCrop area range (min_scale, 1.0)
    hflip: bool = True
    limit: int | None = None  # use only the first N samples (quick runs)
    skip_bad_images: bool = False  # skip and count unreadable images instead of stopping
    num_workers: int = 8
    # Crop, flip and normalise whole batches in two matrix products (mae_core.batch_augment): the
    # same crops, flips and masks as the per-sample torchvision path, pixels within a few uint8 levels.
    batched_augment: bool = False
    cache_images: bool = False  # keep decoded images in memory (batched_augment only; small sets)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with MAE's linear warm-up and half-cosine decay (`mae_core.engine.LRSchedule`)."""

    blr: float = 1.5e-4  # lr = blr * effective batch / 256
    lr: float | None = None  # absolute lr; overrides blr when set
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = 40.0
    clip_grad: float | None = None  # max gradient norm; None disables clipping


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run: what a configs/pretrain/*.py file builds and `key=value` overrides
    change (`override`, `parse_overrides`)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 800
    batch_size: int = 64  # per process
    # Images per optimizer step over all processes; gradient accumulation makes up the
    # difference to batch_size * world size. None: no accumulation.
    effective_batch: int | None = 4096
    amp: str = "bf16"  # "none", "bf16", or "fp16" (CUDA only, with a grad scaler)
    # Keep freed host memory mapped between steps (glibc; mae_core.host_memory): small models at
    # large batches otherwise page-fault their activations in every step.
    retain_host_memory: bool = False
    seed: int = 0
    output_dir: str = "output/pretrain"
    save_every: int = 20  # epochs between numbered checkpoints; `last.pth` is written every epoch
    log_every: int = 20  # optimizer steps between log lines
    device: str = "auto"  # "auto" picks CUDA when visible
    # Objects told about every finished epoch: {"target": "package.module.Factory", **kwargs}.
    # The factory's result must have `on_epoch_end(epoch, model) -> dict | None` (see engine).
    epoch_hooks: tuple[dict, ...] = ()


def to_dict(config) -> dict:
    """Plain dicts, lists, strings and numbers only, so a checkpoint holding it loads with
    `torch.load(weights_only=True)` and it can be written as JSON."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls, values: dict):
    """Inverse of `to_dict`, with the same key checks as `override`."""
    default = cls()
    return override(default, _flatten(default, values))


def _flatten(node, values: dict, prefix: str = "") -> dict:
    """{"optim": {"blr": 1e-3}} -> {"optim.blr": 1e-3}, descending into sections only."""
    flat = {}
    for key, value in values.items():
        section = getattr(node, key, None)
        if isinstance(value, dict) and dataclasses.is_dataclass(section):
            flat.update(_flatten(section, value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def load_pretrain_config(path: str | Path) -> PretrainConfig:
    """Runs a config file and returns its `config` variable."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    namespace = runpy.run_path(str(path))
    config = namespace.get("config")
    if not isinstance(config, PretrainConfig):
        raise ConfigError(f"{path} must assign `config = PretrainConfig(...)`, found {type(config).__name__}")
    return config


def override(config, changes: dict[str, Any]):
    """A copy of `config` with dotted keys (`"optim.blr"`) replaced. Unknown keys and values of
    the wrong kind are errors that name the key."""
    for key, value in changes.items():
        config = _set(config, key.split("."), value, key)
    return config


def closest_keys(key: str, keys) -> str:
    """The hint every refused config key carries, in pretraining configs, Detectron2 overrides and
    MMSegmentation's --cfg-options alike: the closest dotted keys that exist, or that none is close.
    Where the key's section exists, only its last part is compared with the section's keys (whole
    keys sharing "optim." would all look close to "optim.xyz"); otherwise whole keys are."""
    keys = list(keys)
    section, _, name = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == section}
    if siblings:
        close = [siblings[k] for k in difflib.get_close_matches(name, siblings, n=3, cutoff=0.6)]
    else:
        close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    return f"closest existing keys: {', '.join(close)}" if close else "no existing key is close"


def _set(node, parts: list[str], value, full_key: str):
    names = {f.name for f in dataclasses.fields(node)}
    head = parts[0]
    if head not in names:
        section = full_key[: len(full_key) - len(".".join(parts))]  # "optim." for "optim.blrr"
        hint = closest_keys(section + head, [section + name for name in names])
        known = ", ".join(sorted(names))
        raise ConfigError(f"unknown config key {full_key!r} ({hint}); {type(node).__name__} has: {known}")
    current = getattr(node, head)
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"config key {full_key!r}: {head!r} is a value, not a section")
        return dataclasses.replace(node, **{head: _set(current, parts[1:], value, full_key)})
    if dataclasses.is_dataclass(current):
        if isinstance(value, type(current)):  # a whole section, e.g. {"data": DataConfig(...)}
            return dataclasses.replace(node, **{head: value})
        raise ConfigError(
            f"config key {full_key!r} is a section: give a {type(current).__name__} or set its fields "
            f"({full_key}.<field>=...)"
        )
    hint = typing.get_type_hints(type(node))[head]
    return dataclasses.replace(node, **{head: _coerce(value, hint, full_key)})


def _coerce(value, hint, key: str):
    """`value` checked against the field's type: ints are accepted (as floats) for float fields,
    lists become tuples; anything else of the wrong kind is an error naming the key."""
    converted = _convert(value, hint)
    if converted is _MISMATCH:
        raise ConfigError(f"config key {key!r} expects {_type_name(hint)}, got {value!r}")
    return converted


_MISMATCH = object()


def _convert(value, hint):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            converted = _convert(value, option)
            if converted is not _MISMATCH:
                return converted
        return _MISMATCH
    if hint is type(None):
        return None if value is None else _MISMATCH
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return _MISMATCH
        kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(kinds) != len(value):
            return _MISMATCH
        items = [_convert(v, k) for v, k in zip(value, kinds, strict=True)]
        return _MISMATCH if any(i is _MISMATCH for i in items) else tuple(items)
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else _MISMATCH
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _MISMATCH
    return value if isinstance(value, origin or hint) else _MISMATCH


def _type_name(hint) -> str:
    if typing.get_args(hint):
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Command-line `key=value` pairs; values are Python literals (`1e-3`, `(32, 64)`, `None`,
    `True`), anything else is a string (`data.root=/data/imagenet/train`)."""
    changes = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        if isinstance(value, str) and text.lower() in ("true", "false"):
            value = text.lower() == "true"
        changes[key.strip()] = value
    return changes
