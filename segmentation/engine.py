"""What mmengine's Runner needs to run the toolkit's configs safely and on any machine
(`segmentation.train` puts it together with the config checks; detection's engine.py holds the same
for Detectron2).

- Checkpoints: mmengine pickles its message hub (HistoryBuffer, numpy arrays and scalars) into
  every checkpoint; `torch.load(weights_only=True)` refuses those until they are registered as
  safe globals. HistoryBuffer also pickles its statistics functions through `getattr`, which safe
  loading must never allow; `copyreg` makes it pickle as `HistoryBuffer(log, counts, max_length)`
  instead (its constructor restores the defaults). And mmengine writes checkpoints in place;
  `AtomicLocalBackend` writes them through a temporary file and a rename, so a crash never leaves
  a truncated `iter_N.pth` that `--resume` would pick. Every mmengine load of a local file goes
  through `mae_core.checkpoint.load_checkpoint_file`, so an unreadable one is a `CheckpointError`,
  and one holding a NaN or an infinity a `NonFiniteError` naming the file and tensors, before the
  model is touched (`load_from`, `init_cfg`, `--resume`, a tested checkpoint).
- CPU: mmengine's `init_dist('pytorch')` calls `torch.cuda.set_device`, the Runner gives DDP
  `device_ids` (which DDP rejects for CPU modules), SyncBN has no CPU kernel and AmpOptimWrapper
  asserts a GPU. `adapt_config_to_device` and `init_cpu_distributed` handle those, so
  `torchrun --nproc-per-node 2 tools/train_seg.py CFG --launcher pytorch` runs on CPU with gloo."""

from __future__ import annotations

import copyreg
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from mmengine.fileio import LocalBackend, register_backend
from mmengine.logging import HistoryBuffer, print_log
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS
from mmengine.runner import CheckpointLoader

from mae_core.checkpoint import NonFiniteError, describe_non_finite, load_checkpoint_file, write_atomically

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
        """A failed write names the checkpoint `last_checkpoint` (CheckpointHook's record beside
        it) points to: the one `--resume` continues from."""
        record = Path(filepath).parent / "last_checkpoint"
        last_good = record.read_text().strip() if record.is_file() else None
        write_atomically(filepath, lambda f: f.write(obj), last_good)

    def put_text(self, obj: str, filepath, encoding: str = "utf-8") -> None:
        write_atomically(filepath, lambda f: f.write(obj.encode(encoding)))


register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


def load_from_local_file(filename: str, map_location=None):
    """mmengine's loader for local paths (load_from, --resume, init_cfg), replaced so that a
    missing, truncated or foreign file is a `CheckpointError` naming it, loaded safely, and one
    holding non-finite weights a `NonFiniteError` (a run would train from them until its first save
    refuses to write them)."""
    checkpoint = load_checkpoint_file(os.path.expanduser(filename), map_location=map_location)
    bad = describe_non_finite(checkpoint)
    if bad:
        raise NonFiniteError(f"not loading {filename}: {bad}")
    return checkpoint


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


def init_cpu_distributed(launcher: str) -> None:
    """Starts the gloo process group for `--launcher pytorch` on a machine without CUDA, before
    the Runner would call mmengine's CUDA-only `init_dist` (it skips it once a group exists)."""
    if launcher == "pytorch" and not torch.cuda.is_available() and not dist.is_initialized():
        dist.init_process_group(backend="gloo")
