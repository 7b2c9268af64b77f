"""The demo's pretraining steps, old path against fast path, data loading included
(tools/bench_demo_epoch.py is its command line):

    python tools/bench_demo_epoch.py --data <demo out>/data/pretrain --steps 31 --rounds 3

Both paths are the engine's own `train_step` on the demo's configuration (tools/demo.py's
overrides of configs/pretrain/fashion_mnist_toy.py), built with the same seed, so the same initial
weights and the same crops, flips and masks; only these switches differ:

    old:  per-sample torchvision augmentation, images decoded every epoch, glibc's default allocator
          thresholds (its steady state: 32 MB mmap threshold, 64 MB trim threshold, emulated by
          mallopt, since glibc's dynamic thresholds cannot be restored once set)
    fast: data.batched_augment, data.cache_images, retain_host_memory

Each round runs `--steps` steps of a fresh epoch (the demo's epoch is 31 steps) with each path,
the order alternating; the ratio is the median over rounds of old/fast within a round. `--device cuda`
runs both on the GPU (the augmentation and the allocator switches stay on the host)."""

from __future__ import annotations

import ctypes
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import (
    AUGMENTATION_LOSS_TOLERANCE,
    BenchOptions,
    markdown_table,
    progress,
    reached,
    setup_threads,
)
from mae_core.config import load_pretrain_config, override
from mae_core.distributed import init_distributed
from mae_core.engine import Pretrainer
from mae_core.host_memory import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, MMAP_LIMIT, TRIM_LIMIT

TOY_CONFIG = Path(__file__).resolve().parents[1] / "configs/pretrain/fashion_mnist_toy.py"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GLIBC_STEADY_STATE = (32 << 20, 64 << 20)  # DEFAULT_MMAP_THRESHOLD_MAX and twice it (malloc.c)
FAST = {"data.batched_augment": True, "data.cache_images": True, "retain_host_memory": True}
OLD = {key: False for key in FAST}
GOAL_SPEEDUP = 2.0  # old / fast


@dataclass
class DemoEpochOptions(BenchOptions):
    """tools/bench_demo_epoch.py's choices, beyond the common ones.

    Args:
        steps: steps per round and path (the demo's epoch is 31).
    """

    steps: int = 31


def demo_config(data: str, output_dir: str, changes: dict):
    """tools/demo.py's pretraining configuration (mask ratio 0.75) plus `changes`."""
    cfg = load_pretrain_config(TOY_CONFIG)
    return override(cfg, {
        "model.arch": "vit_toy_patch4", "model.img_size": 64, "model.in_chans": 3,
        "model.norm_pix_loss": True, "model.mask_ratio": 0.75, "data.dataset": "image_folder",
        "data.root": data, "data.mean": IMAGENET_MEAN, "data.std": IMAGENET_STD, "data.limit": None,
        "data.num_workers": 0, "epochs": 15, "batch_size": 128, "effective_batch": 128,
        "output_dir": output_dir, **changes,
    })


def set_allocator(thresholds: tuple[int, int]) -> None:
    libc = ctypes.CDLL("libc.so.6")
    mmap, trim = thresholds
    if libc.mallopt(M_MMAP_THRESHOLD, mmap) != 1 or libc.mallopt(M_TRIM_THRESHOLD, trim) != 1:
        raise RuntimeError("mallopt refused the thresholds")


def run_steps(trainer: Pretrainer, epoch: int, steps: int) -> float:
    """`steps` optimizer steps of `epoch` as train_epoch runs them; returns the last loss."""
    trainer.sampler.set_epoch(epoch)
    trainer.model.train()
    trainer.skipped = 0
    batches = iter(trainer.loader)
    for _ in range(steps):
        loss, _ = trainer.train_step(batches)
    value = loss.item()
    if not math.isfinite(value):
        raise RuntimeError(f"loss {value} at epoch {epoch}")
    return value


def first_losses(trainers: dict) -> dict[str, float]:
    """Loss of epoch 0's first batch under each path, same weights, no update."""
    losses = {}
    for name, trainer in trainers.items():
        trainer.sampler.set_epoch(0)
        imgs, noise, _ = next(iter(trainer.loader))
        imgs, noise = imgs.to(trainer.device), noise.to(trainer.device)
        with torch.no_grad():
            losses[name] = trainer.model(imgs, noise=noise).loss.item()
    return losses


def bench_demo_epoch(data: str, opts: DemoEpochOptions) -> dict:
    """Both paths' first-batch losses (they must agree within AUGMENTATION_LOSS_TOLERANCE, or
    nothing is timed), then `opts.rounds` rounds of `opts.steps` steps each, after a warm-up round
    that also fills the image cache. Returns the losses and every round's seconds per path.

    Args:
        data: the demo's pretraining image folder (tools/make_demo_data.py).
        opts: rounds, steps, threads and device.
    """
    threads, steps = setup_threads(opts.threads), opts.steps
    out = tempfile.mkdtemp(prefix="bench_demo_epoch_")
    allocator = {"old": GLIBC_STEADY_STATE, "fast": (MMAP_LIMIT, TRIM_LIMIT)}
    trainers = {}
    for name, changes in (("old", OLD), ("fast", FAST)):
        cfg = demo_config(data, f"{out}/{name}", changes)
        trainers[name] = Pretrainer(cfg, init_distributed(opts.device), [])
    losses = first_losses(trainers)
    if abs(losses["fast"] - losses["old"]) > AUGMENTATION_LOSS_TOLERANCE * abs(losses["old"]):
        raise SystemExit(f"error: first-step losses differ beyond {AUGMENTATION_LOSS_TOLERANCE:.0e} "
                         f"relative: {losses}")
    print(f"first-batch loss, same weights: old {losses['old']:.6f}, fast {losses['fast']:.6f}")
    times: dict[str, list[float]] = {"old": [], "fast": []}
    for r in range(opts.rounds + 1):  # round 0 warms up (and fills the image cache)
        for name in (["old", "fast"] if r % 2 else ["fast", "old"]):
            progress(f"  {f'round {r}/{opts.rounds}' if r else 'warm-up'}: {name}, {steps} steps ...")
            set_allocator(allocator[name])
            start = time.perf_counter()
            run_steps(trainers[name], r, steps)
            if r:
                times[name].append(time.perf_counter() - start)
        if r:
            print(f"  round {r}/{opts.rounds}: old {times['old'][-1]:.1f} s, fast {times['fast'][-1]:.1f} s",
                  flush=True)
    return {"steps": steps, "threads": threads, "device": opts.device, "losses": losses, "times": times}


def report_sections(result: dict) -> list[str]:
    """The table and the goal line of `bench_demo_epoch`'s result, for benchmarks.common.write_report."""
    times, steps = result["times"], result["steps"]
    ratio = statistics.median(a / b for a, b in zip(times["old"], times["fast"], strict=True))
    rows = [[name, steps, f"{statistics.median(t):.1f}", f"{min(t):.1f}-{max(t):.1f}",
             f"{statistics.median(t) / steps:.2f}"] for name, t in times.items()]
    return [
        f"on {result['device']}; first-batch loss, same weights: old {result['losses']['old']:.6f}, "
        f"fast {result['losses']['fast']:.6f}",
        "",
        markdown_table(["path", "steps per round", "s (median)", "min-max", "s per step"], rows),
        "",
        f"old / fast (per-round ratios, median of {len(times['old'])}): {ratio:.2f}x at {result['threads']} "
        f"threads; goal >= {GOAL_SPEEDUP:g}x: {reached(ratio >= GOAL_SPEEDUP)}",
    ]
