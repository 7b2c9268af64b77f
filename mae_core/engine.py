"""The MAE pretraining loop: AdamW with MAE's weight-decay split, lr scaled by the effective
batch, per-step warmup and half-cycle cosine, gradient accumulation, bf16/fp16 autocast, DDP,
atomic checkpoints with exact resume, and logs (progress bar, TensorBoard, JSON lines).

Resume is exact because everything random is either a function of (seed, epoch, sample)
(crops, flips, masks: see `mae_core.data`) or restored from the checkpoint (each process's
torch RNG, which drop path uses). A run preempted mid-epoch (SIGTERM, SIGUSR1: `mae_core.preemption`)
saves its position in the epoch too; the resumed run skips the samples already trained on
(`EpochSampler.set_epoch(epoch, skip)`) and restores the RNG after the data loader has drawn its
seed, where the interrupted run stood."""

from __future__ import annotations

import importlib
import json
import logging
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .batch_augment import pretrain_views
from .checkpoint import (
    NonFiniteError,
    describe_non_finite,
    load_checkpoint_file,
    save_checkpoint,
    write_atomically,
)
from .config import ConfigError, ModelConfig, PretrainConfig, from_dict, to_dict
from .data import EpochSampler, build_dataset
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, close_distributed, init_distributed
from .host_memory import retain_freed_memory
from .layer_decay import param_groups
from .mae import MaskedAutoencoder, decoder_preset
from .masking import build_masking
from .precision import warn_if_bf16_is_slow
from .preemption import PreemptionNotice, ignore_preemption_signals
from .run_folder import previous_run_files, run_folder
from .vit import get_arch

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pth"
# What makes an output folder another run's (mae_core.run_folder), and what --overwrite deletes with it.
CHECKPOINT_MARKS = (LAST_CHECKPOINT, "checkpoint-*.pth")
RUN_LOGS = ("diverged-*.pth", "log.jsonl", "tensorboard", "config.json")


class EpochHook(Protocol):
    """Told about every finished epoch on every process, with the unwrapped model in eval mode.
    Returned numbers are logged (TensorBoard `monitor/<name>`, the epoch line of log.jsonl)."""

    def on_epoch_end(self, epoch: int, model: MaskedAutoencoder) -> dict[str, float] | None: ...


# ---------------------------------------------------------------- model


def model_record(cfg: ModelConfig) -> dict:
    """Every constructor argument of the MAE, as plain values: stored in checkpoints under the key
    "arch" (kept for existing files) so a checkpoint rebuilds its own model (`mae_from_record`)."""
    decoder = decoder_preset(cfg.arch)
    for key in decoder:
        if getattr(cfg, key) is not None:
            decoder[key] = getattr(cfg, key)
    img_size = [cfg.img_size] * 2 if isinstance(cfg.img_size, int) else list(cfg.img_size)
    return {
        "name": cfg.arch,
        **get_arch(cfg.arch).to_dict(),
        **decoder,
        "img_size": img_size,
        "in_chans": cfg.in_chans,
        "mask_ratio": cfg.mask_ratio,
        "norm_pix_loss": cfg.norm_pix_loss,
        "masking": cfg.masking,
        # Only when set, so the records of runs from before masking_args existed stay equal.
        **({"masking_args": dict(cfg.masking_args)} if cfg.masking_args else {}),
        "drop_path_rate": cfg.drop_path_rate,
    }


def mae_from_record(record: dict) -> MaskedAutoencoder:
    """The MAE a checkpoint's "arch" record (`model_record`) describes, freshly initialised."""
    kwargs = dict(record)
    kwargs.pop("name", None)
    kwargs["img_size"] = tuple(kwargs["img_size"])
    kwargs["masking"] = build_masking(kwargs.pop("masking", "random"), **kwargs.pop("masking_args", {}))
    return MaskedAutoencoder(**kwargs)


# ---------------------------------------------------------------- optimisation


def accumulation_steps(cfg: PretrainConfig, world_size: int) -> int:
    """Micro-batches per optimizer step so that every step sees `cfg.effective_batch` images over
    `world_size` processes; ConfigError when it is not a multiple of the per-step batch."""
    per_step = cfg.batch_size * world_size
    if cfg.effective_batch is None:
        return 1
    if cfg.effective_batch < per_step or cfg.effective_batch % per_step:
        raise ConfigError(
            f"effective_batch={cfg.effective_batch} must be a multiple of batch_size={cfg.batch_size} "
            f"x {world_size} process(es) = {per_step}"
        )
    return cfg.effective_batch // per_step


def peak_lr(cfg: PretrainConfig, effective_batch: int) -> float:
    """MAE's linear scaling rule: lr = blr * effective batch / 256, unless lr is given."""
    return cfg.optim.lr if cfg.optim.lr is not None else cfg.optim.blr * effective_batch / 256


@dataclass(frozen=True)
class LRSchedule:
    """Linear warmup over `warmup_steps` optimizer steps, then half-cycle cosine to `min_lr`."""

    peak: float
    min_lr: float
    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.min_lr + (self.peak - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on weight matrices only (not norms, biases, position tables, tokens).
    Fused: one pass over parameters, gradients and moments, several times faster than the default
    per-tensor loop on a large model (docs/benchmarks.md)."""
    groups = param_groups(model, cfg.optim.weight_decay, layer_decay=1.0)
    return torch.optim.AdamW(groups, lr=0.0, betas=tuple(cfg.optim.betas), fused=True)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("amp='fp16' needs CUDA (its grad scaler is CUDA-only); use 'bf16' or 'none'")
        return torch.float16
    raise ConfigError(f"amp must be 'none', 'bf16' or 'fp16', got {amp!r}")


# ---------------------------------------------------------------- checkpoints


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def previous_checkpoints(output_dir: Path) -> list[Path]:
    return previous_run_files(output_dir, CHECKPOINT_MARKS)


def instantiate_hooks(specs) -> list[EpochHook]:
    """`{"target": "package.module.Name", **kwargs}` -> `Name(**kwargs)`."""
    hooks = []
    for spec in specs:
        spec = dict(spec)
        target = spec.pop("target", None)
        if not isinstance(target, str) or "." not in target:
            raise ConfigError(f"epoch_hooks entries need 'target': 'package.module.Name', got {target!r}")
        module_name, _, attr = target.replace(":", ".").rpartition(".")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"epoch hook target {target!r} cannot be imported: {exc}") from exc
        hook = factory(**spec)
        if not callable(getattr(hook, "on_epoch_end", None)):
            raise ConfigError(f"epoch hook {target!r} has no on_epoch_end(epoch, model) method")
        hooks.append(hook)
    return hooks


# ---------------------------------------------------------------- the loop


@dataclass
class PretrainResult:
    model: MaskedAutoencoder
    epoch: int  # last finished epoch
    iteration: int  # optimizer steps taken in total
    losses: list[float] = field(default_factory=list)  # per optimizer step of this run, all processes' mean
    preempted_by: str | None = None  # the signal that stopped the run early, its checkpoint written


class _RunLog:
    """TensorBoard scalars and JSON lines (log.jsonl), written by the main process only. Records
    past `start_iteration` (those of a killed run after its checkpoint, or of a failed run that
    saved none) are dropped on opening, so every iteration appears once."""

    def __init__(self, output_dir: Path, enabled: bool, start_iteration: int = 0):
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_iteration + 1)
            self.jsonl = output_dir / "log.jsonl"
            self.keep_until(start_iteration)

    def keep_until(self, iteration: int) -> None:
        if not self.jsonl.is_file():
            return
        lines = self.jsonl.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _record_iteration(line) <= iteration]
        if len(kept) < len(lines):
            log.info("%s: dropped %d records past iteration %d (written after the checkpoint this run "
                     "starts from)", self.jsonl, len(lines) - len(kept), iteration)
            write_atomically(self.jsonl, lambda f: f.write("".join(kept).encode()))

    def line(self, record: dict, scalars: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _record_iteration(line: str) -> float:
    """The iteration of a log.jsonl line; infinite for a line cut off by a kill (dropped)."""
    try:
        return json.loads(line).get("iteration", 0)
    except json.JSONDecodeError:
        return math.inf


def pretrain(
    cfg: PretrainConfig,
    resume: str | Path | None = None,
    hooks: list[EpochHook] = (),
    overwrite: bool = False,
) -> PretrainResult:
    """Runs (or continues, from `resume`) pretraining as configured; one call per process.
    `resume=LAST_CHECKPOINT` continues the output folder's own run if it has one and starts fresh
    otherwise (a preemptible job can always pass it). The run holds its output folder while it
    runs (mae_core.run_folder): a folder another run holds, or one holding another run's
    checkpoints, is refused unless `overwrite`.

    Args:
        cfg: the run (`mae_core.config.PretrainConfig`); `cfg.output_dir` receives checkpoints,
            log.jsonl and TensorBoard events.
        resume: a checkpoint to continue from, or `LAST_CHECKPOINT`; None: a fresh run.
        hooks: `EpochHook`s told about every finished epoch, besides `cfg.epoch_hooks`.
        overwrite: let a fresh run replace another run in `cfg.output_dir` (its checkpoints and
            logs are deleted first).

    Returns:
        `PretrainResult`: the trained (unwrapped) model, the last epoch, the optimizer steps taken
        and this run's per-step losses.
    """
    joined_here = not torch.distributed.is_initialized()
    dist_info = init_distributed(cfg.device)
    try:
        output_dir = Path(cfg.output_dir)
        start = resume_from(output_dir, resume, overwrite, dist_info.is_main)
        continues_here = start is not None and start.parent.resolve() == output_dir.resolve()
        # Built first (it writes nothing), so a config the model or data refuse leaves no folder.
        pretrainer = Pretrainer(cfg, dist_info, list(hooks) + instantiate_hooks(cfg.epoch_hooks))
        with run_folder(output_dir, marks=CHECKPOINT_MARKS, removed_with=RUN_LOGS, resume=continues_here,
                        take_over=resume is not None or overwrite, overwrite=overwrite,
                        folder_flag="--output-dir", is_main=dist_info.is_main, share=all_gather_objects):
            return pretrainer.run(start)
    finally:
        if joined_here:  # a caller's own process group stays up
            close_distributed()


def resume_from(output_dir: Path, resume: str | Path | None, overwrite: bool, is_main: bool) -> Path | None:
    """The checkpoint a run restores: `resume`, or with a bare --resume the output folder's last
    checkpoint when there is one (a fresh run, said so, when there is none)."""
    if resume is not None and overwrite:
        raise ConfigError("--resume continues the run in the output folder, --overwrite replaces it: "
                          "give one of them")
    if str(resume) == LAST_CHECKPOINT:
        resume = output_dir / LAST_CHECKPOINT
        if not resume.is_file():
            if is_main:
                log.info("nothing to resume: %s does not exist; starting a fresh run", resume)
            return None
    return Path(resume) if resume is not None else None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if days else f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


class Pretrainer:
    """One pretraining run, step by step: `pretrain` drives it epoch by epoch; the demo-epoch
    benchmark and the tests drive single steps (`train_step`) of it."""

    def __init__(self, cfg: PretrainConfig, dist_info: DistInfo, hooks: list[EpochHook]):
        self.cfg = cfg
        self.dist = dist_info
        self.hooks = hooks
        self.device = dist_info.device
        self.output_dir = Path(cfg.output_dir)
        self.amp_dtype = autocast_dtype(cfg.amp, self.device)
        if self.amp_dtype == torch.bfloat16 and dist_info.is_main:
            warn_if_bf16_is_slow(self.device, "set amp=none (a key=value override of tools/pretrain.py)")
        if cfg.retain_host_memory:
            retain_freed_memory()
        self.accum = accumulation_steps(cfg, dist_info.world_size)
        self.effective_batch = cfg.batch_size * dist_info.world_size * self.accum

        # Same initial weights on every process and for every world size; then per-process RNG.
        torch.manual_seed(cfg.seed)
        self.model_record = model_record(cfg.model)
        try:
            self.model = mae_from_record(self.model_record).to(self.device)
        except ValueError as exc:  # e.g. a mask ratio that leaves no visible patch, before any data is read
            raise ConfigError(f"model: {exc}") from exc
        torch.manual_seed(cfg.seed + dist_info.rank)

        num_masked = self.model.num_patches - self.model.num_visible(self.model.mask_ratio)
        views, collate = pretrain_views(
            cfg.data, lambda transform: build_dataset(cfg.data, transform, cfg.model.in_chans),
            self.model.masking, self.model.grid_size, num_masked, cfg.seed, self.model.img_size,
            cfg.model.in_chans,
        )
        self.sampler = EpochSampler(views, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                    shuffle=True, seed=cfg.seed, drop_last=True)
        self.loader = DataLoader(
            views, batch_size=cfg.batch_size, sampler=self.sampler, num_workers=cfg.data.num_workers,
            collate_fn=collate, drop_last=True, pin_memory=self.device.type == "cuda",
            persistent_workers=cfg.data.num_workers > 0, worker_init_fn=ignore_preemption_signals,
        )
        self.steps_per_epoch = len(self.loader) // self.accum
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{len(views)} images give no full optimizer step of {self.effective_batch} images "
                f"per epoch; lower effective_batch / batch_size or use more data"
            )
        self.schedule = LRSchedule(
            peak_lr(cfg, self.effective_batch), cfg.optim.min_lr,
            round(cfg.optim.warmup_epochs * self.steps_per_epoch), cfg.epochs * self.steps_per_epoch,
        )
        self.optimizer = build_optimizer(self.model, cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.ddp = None
        if dist_info.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        self.epoch = -1  # last finished epoch
        self.iteration = 0
        self.last_good: Path | None = None
        # Within the epoch after `epoch`: steps done, their losses and skipped images (all nonzero
        # only in a run preempted mid-epoch, and in the run resumed from it until that epoch ends).
        self.epoch_step = 0
        self.epoch_losses: list[float] = []
        self.skipped = 0
        self.rng_after_loader: dict | None = None  # a mid-epoch checkpoint's RNG, see train_epoch
        self.notice = PreemptionNotice()

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "arch": self.model_record,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "rng": all_gather_objects(rng_state(self.device)),
            "config": to_dict(self.cfg),
            # Skipped images of all processes; restored on the main process (end_epoch sums them).
            "epoch_progress": {"step": self.epoch_step, "losses": self.epoch_losses,
                               "skipped": self.skipped_everywhere()},
        }

    def skipped_everywhere(self) -> int:
        """Unreadable images skipped so far in this epoch by all processes (a collective)."""
        return int(all_reduce_sum(torch.tensor(self.skipped, device=self.device)).item())

    def save(self, numbered: bool = True) -> None:
        """Writes last.pth (and a numbered checkpoint when due, at an epoch's end); the weights and
        optimizer state were checked finite by `check_finite` first, so these names only ever hold
        a good state."""
        state = self.checkpoint()  # every process takes part (RNG gather)
        if self.dist.is_main:
            epoch_number = self.epoch + 1
            if numbered and (epoch_number % self.cfg.save_every == 0 or epoch_number == self.cfg.epochs):
                save_checkpoint(state, self.output_dir / f"checkpoint-{epoch_number:04d}.pth", self.last_good)
            save_checkpoint(state, self.output_dir / LAST_CHECKPOINT, self.last_good)
        self.last_good = self.output_dir / LAST_CHECKPOINT

    def last_good_note(self) -> str:
        """Which checkpoint a run that stops now can resume from, as its stop message says it."""
        if self.last_good:
            return f"the last good checkpoint is {self.last_good}"
        return "no checkpoint was written before it"

    def check_finite(self, when: str) -> None:
        """Every floating tensor of the model and the optimizer state finite, or `NonFiniteError`
        naming them, with nothing written under a real checkpoint name (a copy for debugging goes to
        diverged-NNNNNN.pth). One pass over the weights: cheap beside an epoch. The loss check
        cannot see this: the last step's update comes after its loss."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        bad = describe_non_finite(state)
        if not bad:
            return
        kept = ""
        if self.dist.is_main:
            debug = self.output_dir / f"diverged-{self.iteration:06d}.pth"
            save_checkpoint({"model": self.model.state_dict(), "arch": self.model_record, "epoch": self.epoch,
                             "iteration": self.iteration}, debug, self.last_good)
            kept = f" (kept for debugging as {debug})"
        raise NonFiniteError(
            f"{when.capitalize()}, after iteration {self.iteration} (counted from 1, as in log.jsonl), "
            f"{bad}; nothing was saved under {LAST_CHECKPOINT}{kept}; training stopped, "
            f"{self.last_good_note()}. Lower the learning rate, enable optim.clip_grad, or check the data."
        )

    def restore(self, path: Path) -> None:
        state = load_checkpoint_file(path)
        missing = {"model", "optimizer", "scaler", "epoch", "iteration", "rng"} - set(state)
        if missing:
            raise ConfigError(f"{path} cannot be resumed from: it lacks {', '.join(sorted(missing))}")
        bad = describe_non_finite({"model": state["model"], "optimizer": state["optimizer"]})
        if bad:
            raise ConfigError(f"{path} cannot be resumed from: {bad}")
        if state.get("arch") not in (None, self.model_record):
            raise ConfigError(
                f"{path} holds model {state['arch']}, but the config builds {self.model_record}"
            )
        saved_cfg = from_dict(PretrainConfig, state["config"]) if "config" in state else None
        if saved_cfg is not None and saved_cfg != self.cfg and self.dist.is_main:
            changed = [k for k, v in to_dict(self.cfg).items() if to_dict(saved_cfg).get(k) != v]
            log.warning("resuming %s with a changed config (sections: %s)", path, ", ".join(changed))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.iteration = int(state["iteration"])
        progress = state.get("epoch_progress") or {"step": 0, "losses": [], "skipped": 0}
        self.epoch_step, self.epoch_losses = int(progress["step"]), list(progress["losses"])
        self.skipped = int(progress["skipped"]) if self.dist.is_main else 0
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            if self.epoch_step:  # mid-epoch: the loader of the epoch must draw its seed first
                self.rng_after_loader = rng[self.dist.rank]
            else:
                set_rng_state(rng[self.dist.rank], self.device)
        elif self.dist.is_main:
            log.warning("%s was saved by %d process(es), now %d: RNG states not restored, drop path "
                        "will differ from the uninterrupted run", path, len(rng), self.dist.world_size)
        self.last_good = path

    # ------------------------------------------------------------ training

    def run(self, resume: Path | None) -> PretrainResult:
        """Trains from `resume` (a checkpoint path, or None for a fresh run) to the last epoch."""
        if resume is not None:
            self.restore(resume)
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if resume is None:  # a resumed run keeps the config.json of the run it continues
                (self.output_dir / "config.json").write_text(json.dumps(to_dict(self.cfg), indent=2) + "\n")
            log.info("effective batch %d (%d per process x %d processes x %d accumulation), peak lr %.3g, "
                     "%d steps per epoch", self.effective_batch, self.cfg.batch_size, self.dist.world_size,
                     self.accum, self.schedule.peak, self.steps_per_epoch)
        self.run_log = _RunLog(self.output_dir, self.dist.is_main, self.iteration)
        losses: list[float] = []
        first_epoch, started = self.epoch + 1, time.monotonic()
        self.stopped_by = None
        try:
            with self.notice:
                for epoch in range(first_epoch, self.cfg.epochs):
                    losses += self.train_epoch(epoch)
                    if self.stopped_by:
                        self.save_mid_epoch(epoch)
                        break
                    self.epoch = epoch
                    self.end_epoch(epoch, self.epoch_losses)
                    self.epoch_step, self.epoch_losses, self.skipped = 0, [], 0
                    self.save()
                    self.log_time(epoch, first_epoch, started)
                    if epoch < self.cfg.epochs - 1 and self.preemption_requested():
                        self.log_preempted(f"the end of epoch {epoch}")
                        break
        finally:
            self.run_log.close()
        return PretrainResult(self.model, self.epoch, self.iteration, losses, self.stopped_by)

    def preemption_requested(self) -> bool:
        """Whether any process got a preemption signal (`stopped_by` names it); every process
        calls this after the same steps, and all get the same answer."""
        self.stopped_by = self.notice.requested(self.device, self.dist.world_size)
        return self.stopped_by is not None

    def save_mid_epoch(self, epoch: int) -> None:
        """last.pth at this step of `epoch`, with the position in the epoch, for a preempted run."""
        self.check_finite(f"at the preemption in epoch {epoch}")
        self.save(numbered=False)
        self.log_preempted(f"step {self.epoch_step} of {self.steps_per_epoch} in epoch {epoch}")

    def log_preempted(self, where: str) -> None:
        if self.dist.is_main:
            log.warning("%s received: stopped after iteration %d (%s) and wrote %s at that iteration; "
                        "continue with --resume", self.stopped_by, self.iteration, where, self.last_good)

    def log_time(self, epoch: int, first_epoch: int, started: float) -> None:
        if self.dist.is_main:
            per_epoch = (time.monotonic() - started) / (epoch + 1 - first_epoch)
            remaining = per_epoch * (self.cfg.epochs - epoch - 1)
            log.info("epoch %d/%d done, %s per epoch, about %s to go", epoch + 1, self.cfg.epochs,
                     _duration(per_epoch), _duration(remaining))

    def train_epoch(self, epoch: int) -> list[float]:
        """Trains `epoch` from step `epoch_step` (0 unless resumed mid-epoch) to its end, or until a
        preemption request is agreed (then `stopped_by` names the signal). Returns
        this run's losses; `epoch_losses` holds the whole epoch's."""
        first = self.epoch_step
        self.sampler.set_epoch(epoch, skip=first * self.accum * self.cfg.batch_size)
        self.model.train()
        batches = iter(self.loader)  # draws the loader's seed from the torch RNG
        if self.rng_after_loader is not None:
            set_rng_state(self.rng_after_loader, self.device)
            self.rng_after_loader = None
        losses = []
        # Redirected to a log file (a cluster job), the bar updates every 30 s, not 10 times a second.
        bar = tqdm(range(first, self.steps_per_epoch), desc=f"epoch {epoch}", disable=not self.dist.is_main,
                   initial=first, total=self.steps_per_epoch, dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else 30)
        pending: list[torch.Tensor] = []  # losses still on the device, read once per log line
        pending_norms: list[torch.Tensor] = []  # gradient norms, likewise (when clipping computes them)
        for step in bar:
            lr = self.schedule(self.iteration)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            self.model.set_progress(self.iteration / self.schedule.total_steps)  # for hard_patches' ramp
            loss, grad_norm = self.train_step(batches)
            self.iteration += 1
            pending.append(loss)
            if self.check_grad_norm:
                pending_norms.append(grad_norm)
            if self.iteration % self.cfg.log_every == 0 or step == self.steps_per_epoch - 1:
                if pending_norms:
                    self.check_values("gradient norm", pending_norms, epoch, step)
                losses += self.check_values("loss", pending, epoch, step)
                pending, pending_norms = [], []
                record = {"epoch": epoch, "iteration": self.iteration, "loss": losses[-1], "lr": lr}
                scalars = {"train/loss": losses[-1], "train/lr": lr}
                if grad_norm is not None:
                    record["grad_norm"] = scalars["train/grad_norm"] = grad_norm.item()
                if self.aux_loss is not None:  # loss = pixel_loss + aux_loss, the step's two parts
                    record["aux_loss"] = scalars["train/aux_loss"] = self.aux_loss.item()
                    record["pixel_loss"] = scalars["train/pixel_loss"] = losses[-1] - record["aux_loss"]
                self.run_log.line(record, scalars, self.iteration)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.3g}", refresh=False)
            self.epoch_step = step + 1
            # The epoch's last step goes on to the epoch's end and its checkpoint: no stop here.
            if step < self.steps_per_epoch - 1 and self.preemption_requested():
                if pending_norms:
                    self.check_values("gradient norm", pending_norms, epoch, step)
                if pending:  # read without a log line, which the uninterrupted run would not write
                    losses += self.check_values("loss", pending, epoch, step)
                break
        bar.close()
        self.epoch_losses += losses
        return losses

    @property
    def check_grad_norm(self) -> bool:
        """Gradient norms are checked where clipping computes them anyway, except under fp16's grad
        scaler, for which an infinite norm is routine (the step is skipped and the scale lowered).
        Without clipping, bad gradients show in the next loss or in the weights at `check_finite`."""
        return self.cfg.optim.clip_grad is not None and not self.scaler.is_enabled()

    def check_values(self, what: str, pending: list[torch.Tensor], epoch: int, step: int) -> list[float]:
        """The `what` of the last `len(pending)` steps (the current one is `step` of the epoch,
        from 0), read from the device in one go (no host synchronisation per step). A NaN or
        infinite one stops training before anything is saved, naming its iteration as log.jsonl does."""
        values = torch.stack(pending).tolist()
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                back = len(values) - 1 - offset  # steps from the bad one to the current one
                raise NonFiniteError(
                    f"{what} is {value} at epoch {epoch}, iteration {self.iteration - back} (counted from 1, "
                    f"as in log.jsonl; step {step + 1 - back} of {self.steps_per_epoch} in the epoch); "
                    f"training stopped, {self.last_good_note()}. Lower the learning rate, enable "
                    "optim.clip_grad, or check the data."
                )
        return values

    def train_step(self, batches) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step over `accum` micro-batches; returns, as device tensors, the mean loss
        over all processes and, when clipping, the gradient norm before clipping."""
        network = self.ddp or self.model
        total = torch.zeros((), device=self.device)
        aux_total = torch.zeros((), device=self.device)
        for micro in range(self.accum):
            imgs, noise, skipped = next(batches)
            for message in skipped:
                log.warning("skipped %s", message)
            self.skipped += len(skipped)
            imgs = imgs.to(self.device, non_blocking=True)
            noise = noise.to(self.device, non_blocking=True)
            # Gradients are averaged across processes only on the last micro-batch.
            sync = self.ddp.no_sync() if self.ddp is not None and micro < self.accum - 1 else nullcontext()
            with sync:
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    out = network(imgs, noise=noise)
                self.scaler.scale(out.loss / self.accum).backward()
            total += out.loss.detach().float()
            if out.aux_loss is not None:  # a masking head's own loss (hard_patches), logged apart
                aux_total += out.aux_loss.detach().float()
        mean_loss = all_reduce_sum(total) / (self.accum * self.dist.world_size)
        # This step's mean auxiliary loss (a device tensor, read at log lines); None without a head.
        self.aux_loss = None if out.aux_loss is None else all_reduce_sum(aux_total) / (
            self.accum * self.dist.world_size)
        grad_norm = None
        if self.cfg.optim.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return mean_loss, grad_norm

    def end_epoch(self, epoch: int, losses: list[float]) -> None:
        """Checks the weights before anything else, so no monitor reports on (and no checkpoint
        holds) a diverged model; then logs and runs the epoch hooks."""
        self.check_finite(f"at the end of epoch {epoch}")
        record = {"epoch": epoch, "iteration": self.iteration, "train_loss": sum(losses) / len(losses)}
        skipped = self.skipped_everywhere()
        if skipped or self.cfg.data.skip_bad_images:
            record["skipped_images"] = skipped
        scalars = {"epoch/train_loss": record["train_loss"]}
        if self.hooks:
            self.model.eval()
            for hook in self.hooks:
                for name, value in (hook.on_epoch_end(epoch, self.model) or {}).items():
                    record[name] = float(value)
                    scalars[f"monitor/{name}"] = float(value)
            self.model.train()
        self.run_log.line(record, scalars, self.iteration)
