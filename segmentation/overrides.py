"""`--cfg-options key=value` overrides of an mmengine config that must name keys something reads.

mmengine's `Config.merge_from_dict` creates any key it is given, so a typo
(`train_cfg.max_itres=5`) is accepted and ignored, and so is a variable of the file (`crop_size`),
which was used only while the file was parsed. Here a plain `key=value` must name an existing key
under a top-level key the Runner reads; adding one takes `+key=value` (an error if the key exists)
or `++key=value` (add or set), as detection/overrides.py does for Detectron2 with Hydra's syntax."""

from __future__ import annotations

import inspect

from mmengine.runner import Runner

from mae_core.config import closest_keys
from mae_core.errors import UserError

# Top-level keys something reads after the config file is parsed: the Runner's arguments, the
# custom imports (Config) and the DDP wrapper's settings (Runner.wrap_model). Any other top-level
# name is a variable of the file (crop_size, max_iters...), used only while it is parsed.
CONFIG_LEVEL_KEYS = {"custom_imports", "model_wrapper_cfg"}


class ConfigOverrideError(UserError, ValueError):
    """A --cfg-options key that would change nothing: absent from the config, or a file variable."""


def _paths(node, prefix: str = ""):
    """(dotted path, value) of every dict entry and list item, depth first."""
    if isinstance(node, dict):
        items = node.items()
    else:
        items = enumerate(node) if isinstance(node, list | tuple) else ()
    for key, value in items:
        path = f"{prefix}.{key}" if prefix else str(key)
        yield path, value
        yield from _paths(value, path)


def _read_keys() -> set[str]:
    return set(inspect.signature(Runner.__init__).parameters) - {"self", "cfg"} | CONFIG_LEVEL_KEYS


def checked_overrides(cfg, options: dict) -> dict:
    """`options` without their `+` markers, once every key is known to matter: it must exist in the
    config unless marked as Hydra marks it (`+key=value` adds a key that must not exist yet,
    `++key=value` adds or sets; as `key=value` overrides of detection.overrides) and lie under a
    top-level key that is read after parsing. Refusals name the key and the closest existing ones."""
    tree = cfg.to_dict()
    paths = dict(_paths(tree))
    checked = {}
    for key, value in options.items():
        path = key.lstrip("+")
        if path.split(".")[0] not in _read_keys():
            raise _unread_key_error(key, tree, paths, cfg.filename)
        marker = key[: len(key) - len(path)]
        if marker == "+" and path in paths:
            raise ConfigOverrideError(f"--cfg-options {key}: {path} exists already; set it with {path}=...")
        if not marker and path not in paths:
            raise ConfigOverrideError(
                f"--cfg-options {key}: no key {path!r} in {cfg.filename} ({closest_keys(path, paths)}). "
                f"To add a new key, write +{path}=..."
            )
        checked[path] = value
    return checked


def _unread_key_error(key: str, tree: dict, paths: dict, filename: str) -> ConfigOverrideError:
    """For a top-level name nothing reads: a variable of the file points at the dict entries that
    hold its value (where the file used it; list items are left out, a palette holds many
    numbers), anything else at the top-level keys that are read."""
    top = key.lstrip("+").split(".")[0]
    message = f"--cfg-options {key}: {top!r} is not read by the Runner"
    if top in tree:
        message += f"; it is a variable of {filename}, used only while the file is parsed, so overriding it "
        message += "would change nothing"
        value = tree[top]
        same = [p for p, v in paths.items() if "." in p and p.split(".")[0] in _read_keys()
                and not p.rpartition(".")[2].isdigit() and type(v) is type(value) and v == value]
        if same:
            same = ", ".join(same)
            return ConfigOverrideError(f"{message}. Override the keys that hold its value instead: {same}")
    read = ", ".join(sorted(_read_keys() & set(tree)))
    return ConfigOverrideError(f"{message}. Top-level keys that are read: {read}")
