"""What mmengine's Runner needs to run the toolkit's configs on any machine, safely.

- Checkpoints: mmengine pickles its message hub (HistoryBuffer, numpy arrays and scalars) into
  every checkpoint; `torch.load(weights_only=True)` refuses those until they are registered as
  safe globals. HistoryBuffer also pickles its statistics functions through `getattr`, which safe
  loading must never allow; `copyreg` makes it pickle as `HistoryBuffer(log, counts, max_length)`
  instead (its constructor restores the defaults). And mmengine writes checkpoints in place;
  `AtomicLocalBackend` writes them through a temporary file and a rename, so a crash never leaves
  a truncated `iter_N.pth` that `--resume` would pick.
- CPU: mmengine's `init_dist('pytorch')` calls `torch.cuda.set_device`, the Runner gives DDP
  `device_ids` (which DDP rejects for CPU modules), SyncBN has no CPU kernel and AmpOptimWrapper
  asserts a GPU. `adapt_config_to_device` and `init_cpu_distributed` handle those, so
  `torchrun --nproc-per-node 2 tools/train_seg.py CFG --launcher pytorch` runs on CPU with gloo.
- Mistakes stop the tools with a message, not a traceback: `--cfg-options` naming a key the config
  does not have (or one only read while the file is parsed), an unreadable checkpoint file (every
  mmengine load goes through `mae_core.checkpoint.load_checkpoint_file`), a non-finite run
  (`segmentation.hooks.NonFiniteGuardHook`, added to every config)."""

from __future__ import annotations

import argparse
import contextlib
import copyreg
import inspect
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.fileio import LocalBackend, register_backend
from mmengine.logging import HistoryBuffer, print_log
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS
from mmengine.runner import CheckpointLoader, Runner

from mae_core.checkpoint import CheckpointError, load_checkpoint_file, write_atomically
from mae_core.config import closest_keys

from .data import DatasetError
from .hooks import NonFiniteError

ATOMIC_BACKEND = "atomic_local"


def _reduce_history_buffer(buffer: HistoryBuffer):
    return HistoryBuffer, (buffer._log_history, buffer._count_history, buffer.max_length)


def register_safe_globals() -> None:
    """Makes mmengine checkpoints loadable with weights_only=True: HistoryBuffer pickled by its
    constructor, and the non-tensor types inside a checkpoint allowed."""
    copyreg.pickle(HistoryBuffer, _reduce_history_buffer)
    numpy_core = np._core if hasattr(np, "_core") else np.core  # numpy 2 moved (and pickles) it
    torch.serialization.add_safe_globals(
        [
            HistoryBuffer,
            numpy_core.multiarray._reconstruct,
            numpy_core.multiarray.scalar,
            np.ndarray,
            np.dtype,
            *{type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "bool")},
        ]
    )


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend, but writes go to a temporary file that is renamed into place.
    Selected with `backend_args=dict(backend="atomic_local")` on the CheckpointHook."""

    def put(self, obj: bytes, filepath) -> None:
        write_atomically(filepath, lambda f: f.write(obj))

    def put_text(self, obj: str, filepath, encoding: str = "utf-8") -> None:
        write_atomically(filepath, lambda f: f.write(obj.encode(encoding)))


register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


def load_from_local_file(filename: str, map_location=None):
    """mmengine's loader for local paths (load_from, --resume, init_cfg), replaced so that a
    missing, truncated or foreign file is a `CheckpointError` naming it, loaded safely."""
    return load_checkpoint_file(os.path.expanduser(filename), map_location=map_location)


CheckpointLoader.register_scheme(prefixes="", loader=load_from_local_file, force=True)


@MODEL_WRAPPERS.register_module()
class DeviceAgnosticDDP(MMDistributedDataParallel):
    """MMDistributedDataParallel that drops the `device_ids` the Runner always passes when the
    module lives on the CPU (DDP accepts device_ids only for single-device GPU modules)."""

    def __init__(self, module, device_ids=None, **kwargs):
        on_cpu = next(module.parameters()).device.type == "cpu"
        super().__init__(module=module, device_ids=None if on_cpu else device_ids, **kwargs)


def _replace_sync_bn(node) -> None:
    if isinstance(node, dict):
        if node.get("type") == "SyncBN":
            node["type"] = "BN"
        for value in node.values():
            _replace_sync_bn(value)
    elif isinstance(node, list | tuple):
        for value in node:
            _replace_sync_bn(value)


def adapt_config_to_device(cfg) -> None:
    """Without CUDA: BN for SyncBN, plain OptimWrapper for AmpOptimWrapper (each with a warning),
    gloo, and a DDP wrapper without device_ids. With CUDA the config is left as it is."""
    if torch.cuda.is_available():
        return
    _replace_sync_bn(cfg.model)
    if cfg.get("optim_wrapper", {}).get("type") == "AmpOptimWrapper":
        print_log(
            "no CUDA: AMP switched off (AmpOptimWrapper needs a GPU), training in float32",
            logger="current",
            level=logging.WARNING,
        )
        cfg.optim_wrapper.type = "OptimWrapper"
        cfg.optim_wrapper.pop("loss_scale", None)
        cfg.optim_wrapper.pop("dtype", None)
    cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})["backend"] = "gloo"
    # broadcast_buffers=False as mmengine's own default wrapping.
    cfg.setdefault("model_wrapper_cfg", dict(type="DeviceAgnosticDDP", broadcast_buffers=False))


def parse_with_launcher_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Adds the flags MMSegmentation's train and test tools share (--cfg-options, --launcher, and
    --local-rank from older launchers), then parses."""
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction, help="override config keys: key=value ..."
    )
    parser.add_argument(
        "--launcher", choices=["none", "pytorch", "slurm"], default="none", help="job launcher"
    )
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def init_cpu_distributed(launcher: str) -> None:
    """Starts the gloo process group for `--launcher pytorch` on a machine without CUDA, before
    the Runner would call mmengine's CUDA-only `init_dist` (it skips it once a group exists)."""
    if launcher == "pytorch" and not torch.cuda.is_available() and not dist.is_initialized():
        dist.init_process_group(backend="gloo")


def load_mmseg_config(
    path: str,
    launcher: str = "none",
    work_dir: str | None = None,
    cfg_options: dict | None = None,
    amp: bool = False,
):
    """An mmengine Config prepared as MMSegmentation's tools prepare it (options checked and merged,
    AMP if asked, work_dir from the CLI, else the config, else work_dirs/<config name>), with the
    non-finite guard, then adapted to this machine."""
    cfg = Config.fromfile(path)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(checked_overrides(cfg, cfg_options))
    if amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = os.path.join("work_dirs", Path(path).stem)
    add_non_finite_guard(cfg)
    adapt_config_to_device(cfg)
    return cfg


def add_non_finite_guard(cfg) -> None:
    """Every config run by the tools gets `NonFiniteGuardHook`, also one that does not list it."""
    hooks = cfg.setdefault("custom_hooks", [])
    if not any(hook.get("type") == "NonFiniteGuardHook" for hook in hooks):
        hooks.append(dict(type="NonFiniteGuardHook"))


# --- --cfg-options name real keys ------------------------------------------------------------------

# Top-level keys something reads after the config file is parsed: the Runner's arguments, the
# custom imports (Config) and the DDP wrapper's settings (Runner.wrap_model). Any other top-level
# name is a variable of the file (crop_size, max_iters...), used only while it is parsed.
CONFIG_LEVEL_KEYS = {"custom_imports", "model_wrapper_cfg"}


class ConfigOverrideError(ValueError):
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


# What the tools turn into a one-line error instead of a traceback.
TOOL_ERRORS = (CheckpointError, ConfigOverrideError, DatasetError, NonFiniteError)


@contextlib.contextmanager
def exit_on_error(tool: str):
    """Runs a tool's body; a `TOOL_ERRORS` exception is logged and ends the process with exit
    status 1 and the message alone (the traceback of a user's mistake helps no one)."""
    try:
        yield
    except TOOL_ERRORS as exc:
        print_log(f"{tool}: {exc}", logger="current", level=logging.ERROR)
        raise SystemExit(f"{tool}: error: {exc}") from None
