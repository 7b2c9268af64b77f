"""What a masking strategy costs (tools/bench_masking.py is its command line): extra trained
parameters (mae_core.mae.extra_parameters), and pretraining speed measured with every strategy on
the same model and the same batch, in interleaved rounds (benchmarks.common) so that a busy machine
slows all of them alike. For the masking docs and the sweep's table (mae_app.demo measures each
sweep run's own speed from its log); speed is measured, never asserted in tests."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from benchmarks.common import BenchOptions, interleaved_medians, markdown_table
from mae_core.mae import MaskedAutoencoder, create_mae, extra_parameters
from mae_core.masking import build_masking


@dataclass
class MaskingOptions(BenchOptions):
    """tools/bench_masking.py's choices, beyond the common ones.

    Args:
        batch: images per training step.
        steps: training steps per round and strategy.
    """

    batch: int = 128
    steps: int = 5


def pipeline_ms_per_sample(strategy, grid: tuple[int, int], num_masked: int, samples: int = 200) -> float:
    """Milliseconds the data pipeline spends drawing one sample's masking noise (one CPU thread)."""
    start = time.perf_counter()
    for _ in range(samples):
        strategy(1, grid, num_masked, torch.device("cpu"))
    return 1000 * (time.perf_counter() - start) / samples


def training_steps(model: MaskedAutoencoder, imgs: torch.Tensor, steps: int):
    """A case for `interleaved_medians`: `steps` forward-backward-AdamW steps on `imgs`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run():
        for _ in range(steps):
            model(imgs).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return run


def pretrain_speed(
    strategies: dict[str, tuple[str, dict]], arch: str = "vit_toy_patch4", img_size: int = 64,
    in_chans: int = 3, batch: int = 128, steps: int = 5, rounds: int = 3, device: str = "cpu",
    progress: float = 1.0,
) -> dict[str, dict[str, float]]:
    """For each `label: (masking name, masking args)`: pretraining images per second (median over
    `rounds` of `steps` forward-backward-AdamW steps after one warm-up, the strategies taking turns),
    extra parameters, and the pipeline's noise cost per sample. The model draws the noise itself
    here (batched), as the engine's data workers would per sample. `progress` is the training
    fraction told to the model (1.0: hard_patches at its full hard share)."""
    dev = torch.device(device)
    imgs = torch.randn(batch, in_chans, img_size, img_size, device=dev)
    models, cases = {}, {}
    for label, (name, args) in strategies.items():
        torch.manual_seed(0)
        model = create_mae(arch, img_size=img_size, in_chans=in_chans, masking=build_masking(name, **args))
        models[label] = model.to(dev).train()
        models[label].set_progress(progress)
        cases[label] = training_steps(models[label], imgs, steps)
    times = interleaved_medians(cases, dev, rounds, log=None)
    result = {}
    for label, model in models.items():
        masked = model.num_patches - model.num_visible(model.mask_ratio)
        result[label] = {
            "img_per_s": batch * steps / times[label]["median"],
            "extra_params": extra_parameters(model),
            "pipeline_ms_per_sample": pipeline_ms_per_sample(model.masking, model.grid_size, masked),
        }
    return result


def report_sections(result: dict[str, dict[str, float]], opts: MaskingOptions) -> list[str]:
    """`pretrain_speed`'s result as a table, for benchmarks.common.write_report."""
    rows = [[label, f"{r['img_per_s']:.0f}", r["extra_params"], f"{r['pipeline_ms_per_sample']:.3f}"]
            for label, r in result.items()]
    return [f"{opts.rounds} rounds x {opts.steps} steps, batch {opts.batch}, medians", "",
            markdown_table(["masking", "img/s", "extra parameters", "noise ms per sample"], rows)]
