"""Which patches the MAE encoder sees. A strategy scores every patch; the model keeps the
lowest-scoring `len_keep` per sample (argsort), so every sample keeps exactly the same number of
patches and a batch stays rectangular.

Every strategy is a `MaskingStrategy` and draws per-sample random scores with
`strategy(batch, grid, num_masked, device)`.
The data pipeline calls it once per sample under that sample's own seed (`mae_core.data`), so the
draw is a function of (seed, epoch, sample) and resume stays exact; the model draws them itself
only when called without `noise`.

- Data-independent strategies (`random`, `block`, `filtered_noise`): the draw *is* the score.
- Informed strategies (`InformedMasking`: `hard_patches`, `salience`): inside the model's forward,
  `strategy.scores(noise, inputs)` combines the draw with a signal from the batch (`MaskingInputs`:
  the images, the patch embeddings, the predicted per-patch loss, training progress). Only the order
  of `noise` matters to them, as it does to argsort for the others. To impose a mask whatever the
  strategy, pass final `scores=` to the model instead of `noise=`.

A strategy that needs trained parameters returns them from `build_head(embed_dim)`; the model holds
that module (so it is saved, optimised and restored with the model) and feeds its output in."""

from __future__ import annotations

import abc
import inspect
import math
from typing import NamedTuple

import torch
from torch import nn


class MaskingInputs(NamedTuple):
    """What an informed strategy may look at; nothing here carries gradients."""

    imgs: torch.Tensor  # (B, C, H, W) the batch
    # (B, L, D) patch embeddings *before* position embeddings: content only, so two identical patches
    # at different places look identical (what salience from similarity needs).
    tokens: torch.Tensor
    predicted_loss: torch.Tensor | None  # (B, L) from the model's head, if the strategy built one
    progress: float  # fraction of training done, in [0, 1]; set by the engine (`set_progress`)
    num_masked: int


def uniform_ranks(noise: torch.Tensor) -> torch.Tensor:
    """`noise` replaced by its per-sample ranks, mapped to (0, 1): the same order, a known range."""
    ranks = torch.argsort(torch.argsort(noise, dim=1), dim=1)
    return (ranks.to(torch.float32) + 0.5) / noise.shape[1]


def uniform_draw(batch: int, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(batch, gh * gw) independent uniform numbers in [0, 1): random masking's draw."""
    return torch.rand(batch, grid[0] * grid[1], device=device)


class MaskingStrategy(abc.ABC):
    """What every masking strategy is. The model ranks per-patch scores and keeps the lowest
    `len_keep`; a strategy decides the scores in up to three parts:

    - `__call__`: the per-sample random draw, made by the data pipeline under each sample's seed
      (or by the model when it is given none);
    - `scores`: the final scores from that draw; data-independent strategies keep the draw as is,
      informed ones (`informed = True`) combine it with the batch inside the model's forward;
    - `build_head`: a trained module the model holds for the strategy (None for most)."""

    informed: bool = False

    @abc.abstractmethod
    def __call__(
        self, batch: int, grid: tuple[int, int], num_masked: int, device: torch.device
    ) -> torch.Tensor:
        """The random draw for `batch` samples on a `grid` = (gh, gw) of patches.

        Args:
            batch: number of samples (rows of the draw).
            grid: patch rows and columns (gh, gw).
            num_masked: how many patches of each sample will be masked.
            device: where to put the draw.

        Returns:
            (batch, gh * gw) float scores, patches in row-major order.
        """

    def scores(self, noise: torch.Tensor, inputs: MaskingInputs) -> torch.Tensor:
        """(B, L) scores from the (B, L) draw `noise` and the batch's `inputs`; the highest
        `inputs.num_masked` are masked. A data-independent strategy's draw is already its score (the
        model does not call this for it)."""
        return noise

    def build_head(self, embed_dim: int) -> nn.Module | None:
        """The trained module this strategy needs on an encoder of width `embed_dim`, held, saved and
        optimised by the model (its `decoder_loss_pred`); None when it needs none."""
        return None


class RandomMasking(MaskingStrategy):
    """Uniform random masking, independently per sample (MAE default)."""

    def __call__(
        self, batch: int, grid: tuple[int, int], num_masked: int, device: torch.device
    ) -> torch.Tensor:
        return uniform_draw(batch, grid, device)


class InformedMasking(MaskingStrategy):
    """A strategy that steers a uniform draw with a signal from the batch: only the draw's order
    matters, and `scores` combines it with `MaskingInputs` inside the model's forward."""

    informed = True

    def __call__(
        self, batch: int, grid: tuple[int, int], num_masked: int, device: torch.device
    ) -> torch.Tensor:
        return uniform_draw(batch, grid, device)

    @abc.abstractmethod
    def scores(self, noise: torch.Tensor, inputs: MaskingInputs) -> torch.Tensor:
        """(B, L) scores from the (B, L) draw and the batch's signals; highest masked first."""


class BlockMasking(MaskingStrategy):
    """BEiT-style block-wise masking: rectangles of random area and aspect ratio are masked until
    `num_masked` patches are covered. Masked patches score in [1, 2), the rest in [0, 1), so the
    ranking tops up or trims the block mask at random to the exact count.

    Args:
        min_block: smallest block area, in patches (BEiT: 16), or the patches still to cover if
            fewer.
        aspect_range: (lowest, highest) block aspect ratio, drawn log-uniformly.
        tries: consecutive blocks that add nothing (overlap, or over the budget) before the draw
            stops and the ranking tops it up.
    """

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


class FilteredNoiseMasking(MaskingStrategy):
    """ColorMAE-style masks (Hinojosa et al. 2024): white noise on the patch grid, filtered, and the
    highest values masked, so the mask's spatial spectrum follows the filter.

    `band="band"` ("green" noise): a difference of Gaussians of sigma and 2 sigma patches; its gain
    is above half its peak for frequencies 0.072 / sigma to 0.269 / sigma cycles per patch (periods
    of 3.7 to 14 sigma patches, peak 6.5 sigma), so masked blobs of about 3 sigma patches alternate
    evenly with visible ones. `band="low"` ("red" noise): a Gaussian of `sigma` patches, so large
    blobs (ColorMAE found it worse). The noise is drawn on a grid padded by three outer
    sigmas and cropped, so the FFT's wrap-around never joins opposite edges. No parameters, no
    model-side cost: made in the data pipeline like random noise.

    Args:
        sigma: the filter's scale, in patches.
        band: "band" (green noise, difference of Gaussians) or "low" (red noise, one Gaussian).
    """

    BANDS = ("band", "low")

    def __init__(self, sigma: float = 1.0, band: str = "band"):
        if band not in self.BANDS:
            raise ValueError(f"filtered_noise band must be one of {self.BANDS}, got {band!r}")
        if not sigma > 0:
            raise ValueError(f"filtered_noise sigma must be positive (patches), got {sigma}")
        self.sigma = float(sigma)
        self.band = band

    def response(self, h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
        """The filter's gain at each frequency of an (h, w) real FFT (rfft2 layout)."""
        fy = torch.fft.fftfreq(h, device=device)[:, None]
        fx = torch.fft.rfftfreq(w, device=device)[None, :]
        f2 = fy**2 + fx**2

        def gauss(s: float) -> torch.Tensor:  # Fourier transform of a Gaussian of s patches
            return torch.exp(-2 * math.pi**2 * s**2 * f2)

        if self.band == "low":
            return gauss(self.sigma)
        return gauss(self.sigma) - gauss(2 * self.sigma)

    def __call__(
        self, batch: int, grid: tuple[int, int], num_masked: int, device: torch.device
    ) -> torch.Tensor:
        outer = self.sigma if self.band == "low" else 2 * self.sigma
        pad = math.ceil(3 * outer)
        h, w = grid[0] + 2 * pad, grid[1] + 2 * pad
        white = torch.randn(batch, h, w, device=device)
        field = torch.fft.irfft2(torch.fft.rfft2(white) * self.response(h, w, device), s=(h, w))
        return field[:, pad : pad + grid[0], pad : pad + grid[1]].flatten(1)


class HardPatchesMasking(InformedMasking):
    """Hard patches mining (HPM, Wang et al. 2023): a light head predicts each patch's
    reconstruction loss; of the `num_masked` patches, the share `hard_share * progress` (0 at the
    start of training, `hard_share` at the end) are those predicted hardest, the rest are drawn at
    random among the others.

    The head (`LossPredictor`, ~`hidden * (embed_dim + 3)` parameters, one small MLP per patch) reads
    the encoder's input tokens, detached: it learns from its own auxiliary loss only and sends no
    gradient into the patch embedding. Unlike the paper's predictor (a decoder branch on the visible
    encoder tokens) it sees each patch alone, with its position: cheap, and enough to tell textured
    from flat patches, but blind to context.

    Args:
        hard_share: share of the masked patches chosen as the hardest at the end of training, in
            [0, 1]; it ramps up linearly from 0 with training progress.
        loss_weight: weight of the head's loss in the model's total loss.
        hidden: width of the head's hidden layer.
    """

    def __init__(self, hard_share: float = 0.5, loss_weight: float = 1.0, hidden: int = 64):
        if not 0.0 <= hard_share <= 1.0:
            raise ValueError(f"hard_patches hard_share must be in [0, 1], got {hard_share}")
        self.hard_share = float(hard_share)
        self.loss_weight = float(loss_weight)
        self.hidden = int(hidden)

    def build_head(self, embed_dim: int) -> nn.Module:
        return LossPredictor(embed_dim, self.hidden, self.loss_weight)

    def num_hard(self, num_masked: int, progress: float) -> int:
        return round(self.hard_share * progress * num_masked)

    def scores(self, noise: torch.Tensor, inputs: MaskingInputs) -> torch.Tensor:
        if inputs.predicted_loss is None:
            raise ValueError("hard_patches masking needs the predicted loss of its head; the model gave none")
        scores = uniform_ranks(noise)
        k = self.num_hard(inputs.num_masked, inputs.progress)
        if k:  # the k hardest score above every other patch, so they are masked first
            hardest = torch.topk(inputs.predicted_loss.float(), k, dim=1).indices
            scores = scores.scatter_add(1, hardest, torch.ones_like(hardest, dtype=scores.dtype))
        return scores


class LossPredictor(nn.Module):
    """HPM's loss head: per patch, LayerNorm -> Linear -> GELU -> Linear to one number, the
    predicted reconstruction loss up to a per-image shift and scale (what ranking needs).

    Trained on the detached true loss of the masked patches, standardised per image (mean 0, std 1
    over its masked patches): a scale-free target that stays meaningful as the MAE loss falls."""

    def __init__(self, embed_dim: int, hidden: int, loss_weight: float = 1.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(embed_dim), nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )
        self.loss_weight = loss_weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens).squeeze(-1)

    def loss(self, predicted: torch.Tensor, per_patch_loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`loss_weight` x MSE between prediction and standardised true loss on masked patches."""
        target = per_patch_loss.detach().float()
        count = mask.sum(dim=1, keepdim=True).clamp(min=1)
        mean = (target * mask).sum(dim=1, keepdim=True) / count
        std = (((target - mean) ** 2 * mask).sum(dim=1, keepdim=True) / count).sqrt()
        standard = (target - mean) / (std + 1.0e-6)
        error = (predicted.float() - standard) ** 2
        return self.loss_weight * (error * mask).sum() / mask.sum()


class SalienceMasking(InformedMasking):
    """Masking steered by a salience computed from the image's patch embeddings X (before position
    embeddings: content only). The masked set is drawn without replacement with probability
    proportional to salience^strength (Gumbel-top-k on the per-sample `noise`), so salient patches
    are the most likely to be masked and `strength=0` is random masking. No parameters.

    `measure="attention"`: SBAM's salience (Choi et al. 2024), a patch's column sum of
    softmax(X Xᵀ / temperature), how much attention all patches would pay it; one L x L product per
    image; `temperature=None` means sqrt(embedding width). On Fashion-MNIST items pasted on a flat
    background with a freshly initialised toy MAE it masks the *background* more: the many
    identical background patches attend to each other and collect the most attention.
    `measure="contrast"` (default): a patch's distance from the image's mean patch embedding
    (global contrast, O(L D)): there it masks the item's patches far more than the background's,
    the object-centric masking the strategy is for (tests/test_masking.py holds both to this).

    Args:
        strength: exponent on the salience; 0 is random masking, larger is more deterministic.
        measure: "contrast" or "attention".
        temperature: the attention measure's softmax temperature; None: sqrt(embedding width).
    """

    MEASURES = ("contrast", "attention")

    def __init__(self, strength: float = 1.0, measure: str = "contrast", temperature: float | None = None):
        if measure not in self.MEASURES:
            raise ValueError(f"salience measure must be one of {self.MEASURES}, got {measure!r}")
        if temperature is not None and not temperature > 0:
            raise ValueError(f"salience temperature must be positive, got {temperature}")
        self.strength = float(strength)
        self.measure = measure
        self.temperature = temperature

    def salience(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L) positive salience of every patch."""
        x = tokens.float()
        if self.measure == "contrast":
            return (x - x.mean(dim=1, keepdim=True)).norm(dim=-1) + 1.0e-6
        temperature = self.temperature or math.sqrt(x.shape[-1])
        return torch.softmax(x @ x.transpose(1, 2) / temperature, dim=-1).sum(dim=1)

    def scores(self, noise: torch.Tensor, inputs: MaskingInputs) -> torch.Tensor:
        gumbel = -torch.log(-torch.log(uniform_ranks(noise)))
        return self.strength * torch.log(self.salience(inputs.tokens)) + gumbel


MASKING = {
    "random": RandomMasking,
    "block": BlockMasking,
    "filtered_noise": FilteredNoiseMasking,
    "hard_patches": HardPatchesMasking,
    "salience": SalienceMasking,
}


def build_masking(name: str, **kwargs) -> MaskingStrategy:
    """The strategy `name` with its parameters; an unknown name or parameter is an error naming it.

    Args:
        name: a key of `MASKING` ("random", "block", "filtered_noise", "hard_patches", "salience").
        **kwargs: the strategy's constructor arguments, e.g. `sigma=2.0, band="low"`.

    Raises:
        KeyError: unknown `name`.
        ValueError: a parameter the strategy does not take, or a value it refuses.
    """
    if name not in MASKING:
        raise KeyError(f"unknown masking {name!r}; known: {', '.join(MASKING)}")
    accepted = list(inspect.signature(MASKING[name]).parameters)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"masking {name!r} has no parameter {', '.join(map(repr, unknown))}; it takes: "
            f"{', '.join(accepted) or 'none'}"
        )
    return MASKING[name](**kwargs)
