"""The MAE pretraining loop: AdamW with MAE's weight-decay split, lr scaled by the effective
batch, per-step warmup and half-cycle cosine, gradient accumulation, bf16/fp16 autocast, DDP,
atomic checkpoints with exact resume, and logs (progress bar, TensorBoard, JSON lines).

Resume is exact because everything random is either a function of (seed, epoch, sample)
(crops, flips, masks: see `mae_core.data`) or restored from the checkpoint (each process's
torch RNG, which drop path uses)."""

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

from .checkpoint import load_checkpoint_file, save_checkpoint
from .config import ConfigError, ModelConfig, PretrainConfig, from_dict, to_dict
from .data import EpochSampler, MaskedViews, build_dataset, collate_views, pretrain_transform
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, close_distributed, init_distributed
from .layer_decay import param_groups
from .mae import PAPER_DECODER, TOY_DECODERS, MaskedAutoencoder
from .masking import build_masking
from .vit import get_arch

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pth"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where and which checkpoint is good."""


class EpochHook(Protocol):
    """Told about every finished epoch on every process, with the unwrapped model in eval mode.
    Returned numbers are logged (TensorBoard `monitor/<name>`, the epoch line of log.jsonl)."""

    def on_epoch_end(self, epoch: int, model: MaskedAutoencoder) -> dict[str, float] | None: ...


# ---------------------------------------------------------------- model


def model_arch(cfg: ModelConfig) -> dict:
    """Every constructor argument of the MAE, as plain values: stored in checkpoints as "arch"
    so a checkpoint rebuilds its own model (`mae_from_arch`)."""
    decoder = dict(TOY_DECODERS.get(cfg.arch, PAPER_DECODER))
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


def mae_from_arch(arch: dict) -> MaskedAutoencoder:
    kwargs = dict(arch)
    kwargs.pop("name", None)
    kwargs["img_size"] = tuple(kwargs["img_size"])
    kwargs["masking"] = build_masking(kwargs.pop("masking", "random"), **kwargs.pop("masking_args", {}))
    return MaskedAutoencoder(**kwargs)


# ---------------------------------------------------------------- optimisation


def accumulation_steps(cfg: PretrainConfig, world_size: int) -> int:
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
    Fused: one pass over parameters, gradients and moments; for ViT-B's 112M parameters on CPU
    0.33 s per step against 1.7 s for the default per-tensor loop (docs/benchmarks.md)."""
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


class _RunLog:
    """TensorBoard scalars and JSON lines (log.jsonl), written by the main process only."""

    def __init__(self, output_dir: Path, enabled: bool):
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output_dir / "tensorboard"))
            self.jsonl = output_dir / "log.jsonl"

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


def pretrain(
    cfg: PretrainConfig, resume: str | Path | None = None, hooks: list[EpochHook] = ()
) -> PretrainResult:
    """Runs (or continues, from `resume`) pretraining as configured; one call per process."""
    joined_here = not torch.distributed.is_initialized()
    dist_info = init_distributed(cfg.device)
    try:
        return _Pretrainer(cfg, dist_info, list(hooks) + instantiate_hooks(cfg.epoch_hooks)).run(resume)
    finally:
        if joined_here:  # a caller's own process group stays up
            close_distributed()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if days else f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


class _Pretrainer:
    def __init__(self, cfg: PretrainConfig, dist_info: DistInfo, hooks: list[EpochHook]):
        self.cfg = cfg
        self.dist = dist_info
        self.hooks = hooks
        self.device = dist_info.device
        self.output_dir = Path(cfg.output_dir)
        self.amp_dtype = autocast_dtype(cfg.amp, self.device)
        self.accum = accumulation_steps(cfg, dist_info.world_size)
        self.effective_batch = cfg.batch_size * dist_info.world_size * self.accum

        # Same initial weights on every process and for every world size; then per-process RNG.
        torch.manual_seed(cfg.seed)
        self.arch = model_arch(cfg.model)
        self.model = mae_from_arch(self.arch).to(self.device)
        torch.manual_seed(cfg.seed + dist_info.rank)

        transform = pretrain_transform(cfg.data, self.model.img_size, cfg.model.in_chans)
        dataset = build_dataset(cfg.data, transform, cfg.model.in_chans)
        num_masked = self.model.num_patches - self.model.num_visible(self.model.mask_ratio)
        views = MaskedViews(dataset, self.model.masking, self.model.grid_size, num_masked, cfg.seed,
                            cfg.data.skip_bad_images)
        self.sampler = EpochSampler(views, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                    shuffle=True, seed=cfg.seed, drop_last=True)
        self.loader = DataLoader(
            views, batch_size=cfg.batch_size, sampler=self.sampler, num_workers=cfg.data.num_workers,
            collate_fn=collate_views, drop_last=True, pin_memory=self.device.type == "cuda",
            persistent_workers=cfg.data.num_workers > 0,
        )
        self.steps_per_epoch = len(self.loader) // self.accum
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{len(dataset)} images give no full optimizer step of {self.effective_batch} images "
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

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "arch": self.arch,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "rng": all_gather_objects(rng_state(self.device)),
            "config": to_dict(self.cfg),
        }

    def save(self) -> None:
        state = self.checkpoint()  # every process takes part (RNG gather)
        if self.dist.is_main:
            epoch_number = self.epoch + 1
            if epoch_number % self.cfg.save_every == 0 or epoch_number == self.cfg.epochs:
                save_checkpoint(state, self.output_dir / f"checkpoint-{epoch_number:04d}.pth")
            save_checkpoint(state, self.output_dir / LAST_CHECKPOINT)
        self.last_good = self.output_dir / LAST_CHECKPOINT

    def restore(self, path: Path) -> None:
        state = load_checkpoint_file(path)
        missing = {"model", "optimizer", "scaler", "epoch", "iteration", "rng"} - set(state)
        if missing:
            raise ConfigError(f"{path} cannot be resumed from: it lacks {', '.join(sorted(missing))}")
        if state.get("arch") not in (None, self.arch):
            raise ConfigError(f"{path} holds model {state['arch']}, but the config builds {self.arch}")
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
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            set_rng_state(rng[self.dist.rank], self.device)
        elif self.dist.is_main:
            log.warning("%s was saved by %d process(es), now %d: RNG states not restored, drop path "
                        "will differ from the uninterrupted run", path, len(rng), self.dist.world_size)
        self.last_good = path

    # ------------------------------------------------------------ training

    def run(self, resume: str | Path | None) -> PretrainResult:
        if resume is not None:
            self.restore(Path(resume))
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.json").write_text(json.dumps(to_dict(self.cfg), indent=2) + "\n")
            log.info("effective batch %d (%d per process x %d processes x %d accumulation), peak lr %.3g, "
                     "%d steps per epoch", self.effective_batch, self.cfg.batch_size, self.dist.world_size,
                     self.accum, self.schedule.peak, self.steps_per_epoch)
        self.run_log = _RunLog(self.output_dir, self.dist.is_main)
        losses: list[float] = []
        first_epoch, started = self.epoch + 1, time.monotonic()
        try:
            for epoch in range(first_epoch, self.cfg.epochs):
                losses += self.train_epoch(epoch)
                self.epoch = epoch
                self.end_epoch(epoch, losses[-self.steps_per_epoch:])
                if self.dist.is_main:
                    per_epoch = (time.monotonic() - started) / (epoch + 1 - first_epoch)
                    remaining = per_epoch * (self.cfg.epochs - epoch - 1)
                    log.info("epoch %d/%d done, %s per epoch, about %s to go", epoch + 1, self.cfg.epochs,
                             _duration(per_epoch), _duration(remaining))
        finally:
            self.run_log.close()
        return PretrainResult(self.model, self.epoch, self.iteration, losses)

    def train_epoch(self, epoch: int) -> list[float]:
        self.sampler.set_epoch(epoch)
        self.model.train()
        self.skipped = 0
        batches = iter(self.loader)
        losses = []
        # Redirected to a log file (a cluster job), the bar updates every 30 s, not 10 times a second.
        bar = tqdm(range(self.steps_per_epoch), desc=f"epoch {epoch}", disable=not self.dist.is_main,
                   dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30)
        pending: list[torch.Tensor] = []  # losses still on the device, read once per log line
        for step in bar:
            lr = self.schedule(self.iteration)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            self.model.set_progress(self.iteration / self.schedule.total_steps)  # for hard_patches' ramp
            loss, grad_norm = self.train_step(batches)
            self.iteration += 1
            pending.append(loss)
            if self.iteration % self.cfg.log_every == 0 or step == self.steps_per_epoch - 1:
                losses += self.read_losses(pending, epoch, step)
                pending = []
                record = {"epoch": epoch, "iteration": self.iteration, "loss": losses[-1], "lr": lr}
                scalars = {"train/loss": losses[-1], "train/lr": lr}
                if grad_norm is not None:
                    record["grad_norm"] = scalars["train/grad_norm"] = grad_norm.item()
                if self.aux_loss is not None:  # loss = pixel_loss + aux_loss, the step's two parts
                    record["aux_loss"] = scalars["train/aux_loss"] = self.aux_loss.item()
                    record["pixel_loss"] = scalars["train/pixel_loss"] = losses[-1] - record["aux_loss"]
                self.run_log.line(record, scalars, self.iteration)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.3g}", refresh=False)
        return losses

    def read_losses(self, pending: list[torch.Tensor], epoch: int, step: int) -> list[float]:
        """The losses of the last `len(pending)` steps, read from the device in one go (no host
        synchronisation per step). A NaN or infinite one stops training before anything is saved."""
        values = torch.stack(pending).tolist()
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                back = len(values) - offset  # steps from the bad one to the current one, inclusive
                good = (f"the last good checkpoint is {self.last_good}" if self.last_good
                        else "no checkpoint was written before it")
                raise TrainingDiverged(
                    f"loss is {value} at epoch {epoch}, iteration {self.iteration - back} (step "
                    f"{step + 1 - back} of the epoch); training stopped, {good}. Lower the learning rate, "
                    "enable optim.clip_grad, or check the data."
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
        record = {"epoch": epoch, "iteration": self.iteration, "train_loss": sum(losses) / len(losses)}
        skipped = int(all_reduce_sum(torch.tensor(self.skipped, device=self.device)).item())
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
        self.save()
