"""Checkpoint files: atomic writes and safe loading.

Every file the toolkit writes goes through `save_checkpoint` (temporary file in the same folder,
fsync, rename), so a crash never leaves a truncated checkpoint under the real name. Loading uses
`torch.load(weights_only=True)`; legacy pickles need an explicit opt-in.

`load_pretrained` reads the toolkit's own checkpoints, official MAE, timm ViT and Hugging Face
ViTMAE files into any toolkit ViT, adapting grid and patch size, and reports every key."""

from __future__ import annotations

import errno
import logging
import math
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.layers import resample_patch_embed
from torch import nn

from .errors import UserError
from .layers import resize_bias_table
from .pos_embed import resample_pos_embed

log = logging.getLogger(__name__)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be used, with the file and the reason in the message."""


class NonFiniteError(UserError, RuntimeError):
    """A loss, gradient norm or tensor that is NaN or infinite. Pretraining, Detectron2 and
    MMSegmentation runs all raise this one class, so one `except` catches every such stop; the
    message says where (the iteration as the run's log numbers it, or the file) and which
    checkpoint is still finite."""


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def floating_tensors(tree, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(dotted name, tensor) for every floating-point tensor in nested dicts, lists and tuples
    (a state dict, an optimizer state)."""
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point():
            yield prefix or "tensor", tree
        return
    if isinstance(tree, Mapping):
        items = tree.items()
    else:
        items = enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for key, value in items:
        yield from floating_tensors(value, f"{prefix}.{key}" if prefix else str(key))


def non_finite_tensors(tree) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity: the one check every
    training path runs before writing a checkpoint under a real name or reporting a metric."""
    return [name for name, tensor in floating_tensors(tree) if not bool(torch.isfinite(tensor).all())]


def describe_non_finite(tree) -> str | None:
    """"N of T floating-point tensors are non-finite (NaN or infinity): 'a', ...", or None when all
    are finite: the wording every refusal of non-finite weights uses."""
    bad = non_finite_tensors(tree)
    if not bad:
        return None
    total = sum(1 for _ in floating_tensors(tree))
    return f"{len(bad)} of {total} floating-point tensors are non-finite (NaN or infinity): {few_names(bad)}"


class CheckpointWriteError(CheckpointError, UserError):
    """A file the toolkit could not write (no space, quota, permission, file too large): the
    message names the file, the operating system's error, the disk, and the checkpoint a run can
    resume from. Nothing was written under the file's name."""

    def __init__(self, path: Path, error: OSError, last_good: str | os.PathLike | None, partial: str | None):
        code = f" ({errno.errorcode[error.errno]})" if error.errno in errno.errorcode else ""
        message = f"could not write {path}: {error.strerror or error}{code}"
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) and partial is not None:
            message += f"; {_disk_note(Path(partial))}"
        message += (
            f". Nothing was written under {path.name}: a previous file of that name is unchanged and no "
            "partial file is left. "
        )
        if last_good:
            message += f"The last good checkpoint is {last_good}; make room (or fix the permission) and " \
                       "continue from it with --resume."
        else:
            message += "No checkpoint was written before this one."
        super().__init__(message)
        self.path, self.error, self.last_good = path, error, last_good


def _disk_note(partial: Path) -> str:
    """How far the write got, which file system it was on and how full that is (a user's quota is
    not shown)."""
    mount = partial.parent.resolve()
    while not os.path.ismount(mount):
        mount = mount.parent
    usage = shutil.disk_usage(partial.parent)
    written = partial.stat().st_size if partial.exists() else 0
    return (f"the write stopped after {_size(written)}, with {_size(usage.free)} free of "
            f"{_size(usage.total)} on the file system mounted at {mount}")


def _size(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


class _ErrorKeepingFile:
    """A file whose failed write is remembered: `torch.save` reports a full disk only as its own
    `RuntimeError` ("unexpected pos ..."), and the operating system's error is what says why."""

    def __init__(self, file):
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def write_atomically(path: str | os.PathLike, write, last_good: str | os.PathLike | None = None) -> Path:
    """Calls `write(file)` on a temporary file beside `path`, fsyncs it and renames it into place:
    readers see the old file or the complete new one, never a partial one. Every path the toolkit
    saves through ends here, so a failed write is reported here, once.

    Args:
        path: the file to write; its folder is created if missing.
        write: called with a binary file object (`write` and `flush`).
        last_good: the checkpoint a run stopped by a failed write resumes from, for the message.

    Returns:
        `path`, as a `Path`.

    Raises:
        CheckpointWriteError: the write failed (no space, quota, permission, file too large);
            names `path`, the OS error, how full the disk was and `last_good`. No partial file is
            left and a previous file under `path` is unchanged.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; give it a normal file's mode
        with os.fdopen(fd, "wb") as f:
            kept = _ErrorKeepingFile(f)
            try:
                write(kept)
            except RuntimeError:
                if kept.error is None:
                    raise
                raise kept.error from None
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        # Described before the partial file goes: the disk is as full as the write found it.
        failed = CheckpointWriteError(path, exc, last_good, tmp) if isinstance(exc, OSError) else None
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if failed is not None:
            raise failed from exc
        raise
    return path


def save_checkpoint(obj, path: str | os.PathLike, last_good: str | os.PathLike | None = None) -> Path:
    """`torch.save(obj)` to `path` atomically (`write_atomically`); returns the path. `last_good`
    is named if the write fails (`CheckpointWriteError`)."""
    return write_atomically(path, lambda f: torch.save(obj, f), last_good)


def load_checkpoint_file(path: str | os.PathLike, allow_pickle: bool = False, map_location="cpu"):
    """Loads with `weights_only=True` unless `allow_pickle` is set (only for files you trust:
    the official MAE releases pickle an `argparse.Namespace` beside the weights).

    Args:
        path: a file written by `torch.save`.
        allow_pickle: unpickle arbitrary Python objects (runs code from the file).
        map_location: as `torch.load`.

    Raises:
        CheckpointError: a missing or unreadable file, or pickled objects without `allow_pickle`
            (the message says how to opt in).
    """
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


# --- Reading other people's checkpoints -------------------------------------------------------------
#
# Everything is converted to one layout, the official MAE one (also timm's ViT layout):
# patch_embed.proj, cls_token, pos_embed, blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2},
# norm, decoder_embed, mask_token, decoder_pos_embed, decoder_blocks.N.*, decoder_norm, decoder_pred.

STATE_DICT_WRAPPERS = ("model", "state_dict", "module")

# Beyond the encoder: the decoder, its mask token, and the encoder mask token of the slow baseline.
MAE_HEAD_PARTS = ("mask_token", "encoder_mask_token", "decoder_")
# Parts of the layout a model may lack on purpose: a dense-prediction backbone also drops the cls
# token and the final norm of pretraining.
PRETRAINING_ONLY = ("cls_token", "norm.", *MAE_HEAD_PARTS)
# A fine-tuned classifier's head (timm, official MAE fine-tuning); no toolkit model uses it.
CLASSIFIER_KEYS = re.compile(r"^(head|fc_norm)\.")
# The pretrained encoder proper: what `raise_if_encoder_missing` insists on.
ENCODER_KEYS = re.compile(
    r"^(patch_embed\.proj\.|cls_token$|pos_embed$|norm\.|"
    r"blocks\.\d+\.(norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)\.)"
)
# What an encoder-only checkpoint's "arch" keeps of a pretraining run's record (no decoder, no masking).
ENCODER_ARCH_FIELDS = (
    "name", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "img_size", "in_chans",
)


def extract_state_dict(obj, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a raw state dict, or of one held under "model", "state_dict" or "module"
    (official MAE, DeiT, Lightning...), with a DDP "module." prefix removed."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    for wrapper in STATE_DICT_WRAPPERS:
        if isinstance(obj.get(wrapper), Mapping):
            return extract_state_dict(obj[wrapper], source)
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not obj or not_tensors:
        raise CheckpointError(
            f"{source}: no state dict found; expected a dict of tensors or one under "
            f"{', '.join(repr(w) for w in STATE_DICT_WRAPPERS)}; found keys {few_names(list(obj))}"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


@dataclass
class ConvertedCheckpoint:
    """A state dict in the official MAE layout, the layout it came in, the classifier keys that
    were dropped, and the toolkit's architecture record (its "arch" key) when the file had one."""

    state_dict: dict[str, torch.Tensor]
    source_format: str
    dropped: list[str] = field(default_factory=list)
    arch_record: dict | None = None


HF_ENCODER_PREFIX = re.compile(r"^vit\.")
HF_LAYER = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
HF_DECODER_LAYER = re.compile(r"^decoder\.decoder_(?:layers|encoder\.layer)\.(\d+)\.(.+)$")
# Inside one transformer layer: transformers < 5 names (as in the hub files) and transformers 5 names.
HF_LAYER_PARTS = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.attention.query": "q",
    "attention.attention.key": "k",
    "attention.attention.value": "v",
    "attention.q_proj": "q",
    "attention.k_proj": "k",
    "attention.v_proj": "v",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
HF_TOP_LEVEL = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
}
HF_DECODER_MODULES = re.compile(r"^decoder\.(decoder_embed|decoder_norm|decoder_pred)\.(weight|bias)$")


def _from_hugging_face(sd: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """ViTMAEForPreTraining (`vit.` + `decoder.`) or ViTMAEModel (no prefix) -> official layout;
    separate query/key/value projections are fused into one qkv (q, k, v stacked in that order)."""
    out: dict[str, torch.Tensor] = {}
    qkv_parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in sd.items():
        name = HF_ENCODER_PREFIX.sub("", key)
        if name in HF_TOP_LEVEL:
            out[HF_TOP_LEVEL[name]] = value
            continue
        if m := HF_DECODER_MODULES.match(name):
            out[f"{m[1]}.{m[2]}"] = value
            continue
        layer = HF_LAYER.match(name)
        prefix = "blocks"
        if layer is None:
            layer = HF_DECODER_LAYER.match(name)
            prefix = "decoder_blocks"
        part, _, param = layer[2].rpartition(".") if layer else ("", "", "")
        if part not in HF_LAYER_PARTS:
            unknown.append(key)
            continue
        target = HF_LAYER_PARTS[part]
        if target in ("q", "k", "v"):
            qkv_parts.setdefault(f"{prefix}.{layer[1]}.attn.qkv.{param}", {})[target] = value
        else:
            out[f"{prefix}.{layer[1]}.{target}.{param}"] = value
    if unknown:
        raise CheckpointError(f"{source}: Hugging Face ViTMAE keys with no counterpart: {few_names(unknown)}")
    for name, parts in qkv_parts.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(
                f"{source}: {name} needs query, key and value projections, found only {sorted(parts)}"
            )
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _is_hugging_face(keys) -> bool:
    return any(HF_ENCODER_PREFIX.sub("", k).startswith("embeddings.patch_embeddings.") for k in keys)


# MMSegmentation's `MAE` backbone (`mmseg.models.backbones.MAE`, BEiT's layer layout), alone or as the
# `backbone.` of a whole segmentor checkpoint, or an official MAE file run through MMSegmentation's
# beit2mmseg.py (the pretrained file of its MAE recipe), which keeps `patch_embed.proj` beside
# `patch_embed.projection` and leaves the final `norm` and a classifier's head as they were.
MMSEG_BACKBONE_PREFIX = "backbone."
MMSEG_TOP_LEVEL = {
    "patch_embed.projection.weight": "patch_embed.proj.weight",
    "patch_embed.projection.bias": "patch_embed.proj.bias",
    "patch_embed.proj.weight": "patch_embed.proj.weight",
    "patch_embed.proj.bias": "patch_embed.proj.bias",
    "cls_token": "cls_token",
    "pos_embed": "pos_embed",
    "ln1.weight": "norm.weight",  # the final norm (final_norm=True)
    "ln1.bias": "norm.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
MMSEG_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
# Inside one layer: (mmseg name, toolkit name), matched as a prefix (parameter name follows).
MMSEG_LAYER_PARTS = (
    ("ln1.", "norm1."),
    ("ln2.", "norm2."),
    ("attn.qkv.", "attn.qkv."),
    ("attn.proj.", "attn.proj."),
    ("ffn.layers.0.0.", "mlp.fc1."),
    ("ffn.layers.1.", "mlp.fc2."),
    ("gamma_1", "ls1.gamma"),
    ("gamma_2", "ls2.gamma"),
    ("attn.relative_position_bias_table", "attn.rel_pos_bias.relative_position_bias_table"),
)
# Saved by mmseg but derived from the grid; the toolkit rebuilds it (`layers.RelPosBias`).
MMSEG_DERIVED = re.compile(r"^layers\.\d+\.attn\.relative_position_index$")


def _is_mmseg(keys) -> bool:
    return any(k.removeprefix(MMSEG_BACKBONE_PREFIX) == "patch_embed.projection.weight" for k in keys)


def _from_mmseg(sd: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """MMSegmentation `MAE` keys -> official layout (+ layer scale `ls1/ls2.gamma` and BEiT tables
    `attn.rel_pos_bias.relative_position_bias_table`), and the keys dropped: a segmentor's neck and
    heads, a classifier's head, and the derived relative-position indices."""
    dropped = []
    if any(k.startswith(MMSEG_BACKBONE_PREFIX) for k in sd):
        dropped = [k for k in sd if not k.startswith(MMSEG_BACKBONE_PREFIX)]
        sd = {k.removeprefix(MMSEG_BACKBONE_PREFIX): v for k, v in sd.items() if k not in dropped}
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        if key in MMSEG_TOP_LEVEL:
            name = MMSEG_TOP_LEVEL[key]
            if name in out and not torch.equal(out[name], value):
                raise CheckpointError(f"{source}: two different tensors for {name}, one of them {key!r}")
            out[name] = value
            continue
        if MMSEG_DERIVED.match(key) or CLASSIFIER_KEYS.match(key):
            dropped.append(key)
            continue
        layer = MMSEG_LAYER.match(key)
        part = layer[2] if layer else ""
        target = next((new + part[len(old):] for old, new in MMSEG_LAYER_PARTS if part.startswith(old)), None)
        if target is None:
            unknown.append(key)
        else:
            out[f"blocks.{layer[1]}.{target}"] = value
    if unknown:
        raise CheckpointError(f"{source}: MMSegmentation MAE keys with no counterpart: {few_names(unknown)}")
    return out, dropped


def to_official_layout(obj, source: str = "checkpoint") -> ConvertedCheckpoint:
    """Detects the layout of a loaded checkpoint (toolkit, official MAE / timm ViT, Hugging Face
    ViTMAE, MMSegmentation MAE) from its keys and converts it to the official MAE layout.

    Args:
        obj: a loaded checkpoint: a state dict, or one under "model", "state_dict" or "module".
        source: its name in error messages (usually the path).

    Returns:
        `ConvertedCheckpoint`: the converted state dict, the layout it came in, the classifier keys
        dropped and the toolkit's architecture record when the file had one.
    """
    record = obj.get("arch") if isinstance(obj, Mapping) and isinstance(obj.get("arch"), Mapping) else None
    sd = extract_state_dict(obj, source)
    if _is_hugging_face(sd):
        return ConvertedCheckpoint(_from_hugging_face(sd, source), "Hugging Face ViTMAE", arch_record=record)
    if _is_mmseg(sd):
        state_dict, dropped = _from_mmseg(sd, source)
        return ConvertedCheckpoint(state_dict, "MMSegmentation MAE", dropped, arch_record=record)
    if "patch_embed.proj.weight" in sd:
        dropped = [k for k in sd if CLASSIFIER_KEYS.match(k)]
        kept = {k: v for k, v in sd.items() if k not in dropped}
        fmt = "toolkit" if record is not None else "official MAE / timm ViT"
        return ConvertedCheckpoint(kept, fmt, dropped, dict(record) if record is not None else None)
    raise CheckpointError(
        f"{source}: unrecognised checkpoint layout (neither official MAE / timm ViT, whose keys include "
        f"'patch_embed.proj.weight', nor Hugging Face ViTMAE); keys include {few_names(list(sd))}"
    )


def read_checkpoint(path: str | os.PathLike, allow_pickle: bool = False):
    """A torch checkpoint (safe loading, see `load_checkpoint_file`) or a `.safetensors` file
    (the Hugging Face hub format), as loaded: not yet converted (`to_official_layout`)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return load_checkpoint_file(path, allow_pickle=allow_pickle)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise CheckpointError(f"{path}: reading .safetensors files needs `pip install safetensors`") from exc
    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc


# --- Shape adaptation ------------------------------------------------------------------------------


def resize_patch_embed(weight: torch.Tensor, new_patch: int | tuple[int, int]) -> torch.Tensor:
    """Patch-embedding kernel (D, C, p, p) resampled to another patch size with timm's
    pseudo-inverse resize (FlexiViT), which keeps the embedding of a correspondingly resized
    patch unchanged; the ViT-H/14 -> patch-16 route uses it."""
    new = (new_patch, new_patch) if isinstance(new_patch, int) else tuple(new_patch)
    if tuple(weight.shape[-2:]) == new:
        return weight
    return resample_patch_embed(weight.float(), list(new)).to(weight.dtype)


def _square_grid(tokens: int) -> tuple[int, int] | None:
    side = math.isqrt(tokens)
    return (side, side) if side * side == tokens else None


def _checkpoint_grid(tokens: int, arch_record: dict | None) -> tuple[int, int] | None:
    """The token grid a checkpoint's position table was trained on: from the toolkit's architecture
    record when it names the image size, otherwise square."""
    if arch_record and arch_record.get("img_size") and arch_record.get("patch_size"):
        size = arch_record["img_size"]
        h, w = (size, size) if isinstance(size, int) else size
        grid = (h // arch_record["patch_size"], w // arch_record["patch_size"])
        if grid[0] * grid[1] == tokens:
            return grid
    return _square_grid(tokens)


def _adapt(key: str, value: torch.Tensor, target: torch.Tensor, module, arch_record: dict | None):
    """`value` reshaped to `target`'s shape where the layout allows it (position table on another
    grid, patch kernel of another size); None where it does not."""
    if value.shape == target.shape:
        return value
    if key in ("pos_embed", "decoder_pos_embed") and value.ndim == 3 and value.shape[-1] == target.shape[-1]:
        new_grid = getattr(module, "grid_size", None) or _square_grid(target.shape[1] - 1)
        prefix = target.shape[1] - math.prod(new_grid) if new_grid else -1
        old_grid = _checkpoint_grid(value.shape[1] - prefix, arch_record) if prefix >= 0 else None
        if old_grid:
            return resample_pos_embed(value, new_grid, old_grid, num_prefix_tokens=prefix).to(value.dtype)
    if key == "patch_embed.proj.weight" and value.ndim == 4 and value.shape[:2] == target.shape[:2]:
        return resize_patch_embed(value, tuple(target.shape[-2:]))
    if key.endswith("rel_pos_bias.relative_position_bias_table") and value.shape[1:] == target.shape[1:]:
        return _adapt_bias_table(value, module.get_submodule(key.rpartition(".")[0]))
    return None


def _adapt_bias_table(value: torch.Tensor, bias) -> torch.Tensor | None:
    """A BEiT table trained on another square grid, resampled to `bias.grid` (`layers.RelPosBias`);
    None when its size does not fit a square grid with `bias.extra` cls entries (a table of the
    other cls layout)."""
    side = math.isqrt(max(value.shape[0] - bias.extra, 0))
    if side * side != value.shape[0] - bias.extra or side % 2 == 0:
        return None
    old_grid = ((side + 1) // 2, (side + 1) // 2)
    return resize_bias_table(value, old_grid, bias.grid, bias.extra)


# --- Loading into a module -------------------------------------------------------------------------

Shape = tuple[int, ...]


@dataclass
class LoadReport:
    """What `load_pretrained` did with every key: loaded as is, resized, ignored on purpose, or not
    loaded (missing from the checkpoint, unknown to the model, or of another shape)."""

    source: str
    source_format: str
    loaded: list[str] = field(default_factory=list)
    resized: list[tuple[str, Shape, Shape]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, Shape, Shape]] = field(default_factory=list)

    @property
    def encoder_problems(self) -> list[str]:
        """Pretrained-encoder keys that did not load one-to-one: missing, of another shape, or
        surplus (a deeper checkpoint). Extra parts such as relative positions are not counted."""
        bad = self.missing + [k for k, _, _ in self.mismatched] + self.unexpected
        return [k for k in bad if ENCODER_KEYS.match(k)]

    @property
    def new_parts(self) -> list[str]:
        """Model keys outside the MAE layout (a detector's relative position tables, a head): no
        MAE checkpoint holds them, so they start from initialisation whatever the file."""
        return [k for k in self.missing if not _in_mae_layout(k)]

    @property
    def problems(self) -> list[str]:
        """What makes the load incomplete: model keys of the MAE layout the checkpoint lacks,
        checkpoint keys unknown to the model, and keys of a shape that could not be adapted.
        Resized keys (another grid, another patch size) count as loaded."""
        missing = [k for k in self.missing if _in_mae_layout(k)]
        return missing + self.unexpected + [k for k, _, _ in self.mismatched]

    def raise_if_encoder_missing(self) -> None:
        """For callers that need the whole pretrained encoder, not a partly random one."""
        if self.encoder_problems:
            raise CheckpointError(
                f"{self.source}: the pretrained encoder did not load completely; "
                f"problem keys: {', '.join(self.encoder_problems)}\n{self}"
            )

    def __str__(self) -> str:
        lines = [f"Loaded {self.source} ({self.source_format} layout): {len(self.loaded)} tensors loaded"]

        def section(title: str, items: list[str]) -> None:
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))

        section("resized", [f"{k} {list(old)} -> {list(new)}" for k, old, new in self.resized])
        section("ignored (not used by this model)", self.ignored)
        section("new in this model (no MAE checkpoint has them), left at initialisation", self.new_parts)
        section("MISSING from the checkpoint, left at initialisation",
                [k for k in self.missing if _in_mae_layout(k)])
        section("UNEXPECTED, unknown to this model", self.unexpected)
        section(
            "MISMATCHED shape, left at initialisation",
            [f"{k} checkpoint {list(c)} vs model {list(m)}" for k, c, m in self.mismatched],
        )
        return "\n".join(lines)


class IncompleteLoadError(CheckpointError):
    """A checkpoint that would load only partly; `report` says key by key what did not fit."""

    def __init__(self, message: str, report: LoadReport):
        super().__init__(message)
        self.report = report


def _in_mae_layout(key: str) -> bool:
    return bool(ENCODER_KEYS.match(key)) or key.startswith(MAE_HEAD_PARTS)


def _read_and_convert(source, allow_pickle: bool) -> tuple[str, ConvertedCheckpoint]:
    if isinstance(source, (str, os.PathLike)):
        return str(source), to_official_layout(read_checkpoint(source, allow_pickle), str(source))
    return "state dict", to_official_layout(source, "state dict")


def load_pretrained(
    module: nn.Module, source, *, allow_pickle: bool = False, allow_partial: bool = False
) -> LoadReport:
    """Loads a checkpoint (path, loaded checkpoint or state dict; any layout `to_official_layout`
    knows) into a toolkit `VisionTransformer`, `MaskedAutoencoder` or `ViTBackbone`, completely or
    not at all, and logs the report (logger `mae_core.checkpoint`, INFO) either way.

    Position tables are resampled to the module's grid and the patch kernel to its patch size
    (these count as loaded); parts the module leaves out on purpose (cls token, final norm,
    decoder for a backbone) are reported as ignored, and parts outside the MAE layout (a
    detector's relative positions) as new. Anything else that does not fit (`LoadReport.problems`)
    raises `IncompleteLoadError` naming the keys before the module is touched, unless the caller
    opts in with `allow_partial=True`: then what fits is loaded and the report says what did not.
    Weights holding a NaN or an infinity are never loaded (`NonFiniteError` naming them): a run
    would otherwise train from them until its first checkpoint refuses to save.

    Args:
        module: the toolkit model to load into.
        source: a checkpoint path (torch or `.safetensors`), a loaded checkpoint or a state dict.
        allow_pickle: trust a pickled checkpoint file (see `load_checkpoint_file`).
        allow_partial: load what fits and report the rest instead of raising.

    Returns:
        `LoadReport`: every key loaded, resized, ignored, new, missing, unexpected or mismatched.

    Raises:
        CheckpointError: an unreadable file or an unknown layout; `IncompleteLoadError` (with its
            report) for a partial fit without `allow_partial`.
        NonFiniteError: weights holding a NaN or an infinity.
    """
    name, converted = _read_and_convert(source, allow_pickle)
    report = LoadReport(name, converted.source_format, ignored=list(converted.dropped))
    model_sd = module.state_dict()
    to_load = {}
    for key, value in converted.state_dict.items():
        if key not in model_sd:
            (report.ignored if key.startswith(PRETRAINING_ONLY) else report.unexpected).append(key)
            continue
        target = model_sd[key]
        adapted = _adapt(key, value, target, module, converted.arch_record)
        if adapted is None:
            report.mismatched.append((key, tuple(value.shape), tuple(target.shape)))
            continue
        if adapted is not value:
            report.resized.append((key, tuple(value.shape), tuple(adapted.shape)))
        to_load[key] = adapted
    report.loaded = sorted(to_load)
    mismatched = {k for k, _, _ in report.mismatched}
    report.missing = [k for k in model_sd if k not in to_load and k not in mismatched]
    if report.problems and not allow_partial:
        report.loaded = []
        raise IncompleteLoadError(
            f"{name} does not fit the model completely ({len(report.problems)} problem keys: "
            f"{few_names(report.problems, 10)}); nothing was loaded. Use a checkpoint of this architecture, "
            f"or opt in to a partial load explicitly (allow_partial=True).\n{report}",
            report,
        )
    bad = describe_non_finite(to_load)
    if bad:
        raise NonFiniteError(f"not loading {name}: {bad}; nothing was loaded")
    module.load_state_dict(to_load, strict=False)
    log.info("%s", report)
    return report


def export_backbone(
    source, path: str | os.PathLike, *, allow_pickle: bool = False, arch_record: dict | None = None
):
    """Writes the encoder of any readable checkpoint (no decoder, no classifier) as a toolkit
    checkpoint {"model", "arch", "source_format"}, atomically.

    Args:
        source: a checkpoint path, a loaded checkpoint or a state dict, in any layout
            `to_official_layout` reads.
        path: the file to write.
        allow_pickle: trust a pickled checkpoint file.
        arch_record: completes or overrides the architecture record read off the weights (the head
            count cannot be read off them), e.g. `{"name": "vit_base_patch16", "num_heads": 12}`.

    Returns:
        The written path.
    """
    _, converted = _read_and_convert(source, allow_pickle)
    encoder = {k: v for k, v in converted.state_dict.items() if not k.startswith(MAE_HEAD_PARTS)}
    record = {**_arch_record_from_weights(encoder), **(converted.arch_record or {}), **(arch_record or {})}
    record = {k: v for k, v in record.items() if k in ENCODER_ARCH_FIELDS}
    return save_checkpoint({"model": encoder, "arch": record, "source_format": converted.source_format}, path)


def _arch_record_from_weights(sd: dict[str, torch.Tensor]) -> dict:
    embed_dim, in_chans, patch_size, _ = sd["patch_embed.proj.weight"].shape
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    record = {"patch_size": patch_size, "embed_dim": embed_dim, "depth": depth, "in_chans": in_chans}
    if "blocks.0.mlp.fc1.weight" in sd:
        record["mlp_ratio"] = sd["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    if "pos_embed" in sd and (grid := _square_grid(sd["pos_embed"].shape[1] - 1)):
        record["img_size"] = [grid[0] * patch_size, grid[1] * patch_size]
    return record


def few_names(names: list[str], n: int = 5) -> str:
    """The first `n` names, quoted, and how many more: what an error message shows of a long list
    (state-dict keys, non-finite tensors) without flooding the terminal."""
    shown = ", ".join(repr(name) for name in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")
