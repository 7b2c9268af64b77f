"""Which patches the MAE encoder sees. A strategy scores every patch; the model keeps the
lowest-scoring `len_keep` per sample (argsort), so every sample keeps exactly the same number of
patches and a batch stays rectangular. Passing the scores as `noise` makes masking reproducible."""

from __future__ import annotations

import math

import torch


class RandomMasking:
    """Uniform random masking, independently per sample (MAE default)."""

    def __call__(
        self, batch: int, grid: tuple[int, int], num_masked: int, device: torch.device
    ) -> torch.Tensor:
        return torch.rand(batch, grid[0] * grid[1], device=device)


class BlockMasking:
    """BEiT-style block-wise masking: rectangles of random area and aspect ratio are masked until
    `num_masked` patches are covered. Masked patches score in [1, 2), the rest in [0, 1), so the
    ranking tops up or trims the block mask at random to the exact count."""

    def __init__(
        self, min_block: int = 16, aspect_range: tuple[float, float] = (0.3, 1 / 0.3), tries: int = 10
    ):
        self.min_block = min_block
        self.log_aspect = (math.log(aspect_range[0]), math.log(aspect_range[1]))
        self.tries = tries

    def _one_mask(self, gh: int, gw: int, num_masked: int) -> torch.Tensor:
        mask = torch.zeros(gh, gw, dtype=torch.bool)
        covered = 0
        stalls = 0
        while covered < num_masked and stalls < self.tries:
            budget = num_masked - covered
            area = torch.empty(()).uniform_(min(self.min_block, budget), max(budget, 1)).item()
            aspect = math.exp(torch.empty(()).uniform_(*self.log_aspect).item())
            h = min(gh, max(1, round(math.sqrt(area * aspect))))
            w = min(gw, max(1, round(math.sqrt(area / aspect))))
            top = int(torch.randint(0, gh - h + 1, ()))
            left = int(torch.randint(0, gw - w + 1, ()))
            added = h * w - int(mask[top : top + h, left : left + w].sum())
            if 0 < added <= budget:
                mask[top : top + h, left : left + w] = True
                covered += added
                stalls = 0
            else:
                stalls += 1
        return mask.flatten()

    def __call__(
        self, batch: int, grid: tuple[int, int], num_masked: int, device: torch.device
    ) -> torch.Tensor:
        blocks = torch.stack([self._one_mask(grid[0], grid[1], num_masked) for _ in range(batch)])
        return (blocks.float() + torch.rand(blocks.shape)).to(device)


MASKING = {"random": RandomMasking, "block": BlockMasking}


def build_masking(name: str, **kwargs):
    if name not in MASKING:
        raise KeyError(f"unknown masking {name!r}; known: {', '.join(MASKING)}")
    return MASKING[name](**kwargs)
