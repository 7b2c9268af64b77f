"""What a masking strategy costs: extra trained parameters, and pretraining speed measured with
every strategy on the same model, the same batch, interleaved so that a busy machine slows all of
them alike. For the masking sweep's table; speed is measured, never asserted in tests."""

from __future__ import annotations

import statistics
import time

import torch

from .mae import MaskedAutoencoder, create_mae
from .masking import build_masking


def extra_parameters(model: MaskedAutoencoder) -> int:
    """Trained parameters the masking strategy added to the MAE (its head); 0 for most."""
    head = model.decoder_loss_pred
    return 0 if head is None else sum(p.numel() for p in head.parameters())


def pipeline_ms_per_sample(strategy, grid: tuple[int, int], num_masked: int, samples: int = 200) -> float:
    """Milliseconds the data pipeline spends drawing one sample's masking noise (one CPU thread)."""
    start = time.perf_counter()
    for _ in range(samples):
        strategy(1, grid, num_masked, torch.device("cpu"))
    return 1000 * (time.perf_counter() - start) / samples


def pretrain_speed(
    strategies: dict[str, tuple[str, dict]], arch: str = "vit_toy_patch4", img_size: int = 64,
    in_chans: int = 3, batch: int = 128, steps: int = 5, rounds: int = 3, device: str = "cpu",
    progress: float = 1.0,
) -> dict[str, dict[str, float]]:
    """For each `label: (masking name, masking args)`: pretraining images per second (median over
    `rounds` of `steps` forward-backward-AdamW steps after one warm-up step, strategies taking turns
    every round), extra parameters, and the pipeline's noise cost per sample. The model draws the
    noise itself here (batched), as the engine's data workers would per sample. `progress` is the
    training fraction told to the model (1.0: hard_patches at its full hard share)."""
    dev = torch.device(device)
    imgs = torch.randn(batch, in_chans, img_size, img_size, device=dev)
    runs = {}
    for label, (name, args) in strategies.items():
        torch.manual_seed(0)
        model = create_mae(arch, img_size=img_size, in_chans=in_chans, masking=build_masking(name, **args))
        model = model.to(dev).train()
        model.set_progress(progress)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        runs[label] = (model, optimizer)
        _steps(model, optimizer, imgs, 1, dev)
    times: dict[str, list[float]] = {label: [] for label in strategies}
    for _ in range(rounds):
        for label, (model, optimizer) in runs.items():
            times[label].append(_steps(model, optimizer, imgs, steps, dev))
    result = {}
    for label, (model, _) in runs.items():
        masked = model.num_patches - model.num_visible(model.mask_ratio)
        result[label] = {
            "img_per_s": batch * steps / statistics.median(times[label]),
            "extra_params": extra_parameters(model),
            "pipeline_ms_per_sample": pipeline_ms_per_sample(model.masking, model.grid_size, masked),
        }
    return result


def _steps(model: MaskedAutoencoder, optimizer, imgs: torch.Tensor, steps: int, device: torch.device
           ) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        model(imgs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
