"""Checkpoint files: atomic writes and safe loading.

Every file the toolkit writes goes through `save_checkpoint` (temporary file in the same folder,
fsync, rename), so a crash never leaves a truncated checkpoint under the real name. Loading uses
`torch.load(weights_only=True)`; legacy pickles need an explicit opt-in."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used, with the file and the reason in the message."""


def save_checkpoint(obj, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint_file(path: str | os.PathLike, allow_pickle: bool = False, map_location="cpu"):
    """Loads with `weights_only=True` unless `allow_pickle` is set (only for files you trust:
    the official MAE releases pickle an `argparse.Namespace` beside the weights)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds pickled Python objects that safe loading refuses ({exc}). If you trust the "
            "file (e.g. an official MAE release), load it with allow_pickle=True (--allow-pickle on "
            "the command line)."
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {exc}") from exc
