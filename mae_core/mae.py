"""Masked autoencoder (He et al. 2021), read top to bottom: patchify, masking, encoder on the
visible patches only, light decoder with a shared mask token, MSE on the masked patches.

Masking strategies (`mae_core.masking`) score patches; the forward keeps the lowest-scoring
`len_keep`. Informed strategies get the batch, its patch embeddings and, for hard-patch mining, the
prediction of a loss head the model holds (`decoder_loss_pred`) and trains with an auxiliary loss."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .layers import Block
from .masking import MaskingInputs, MaskingStrategy, RandomMasking
from .pos_embed import sincos_2d
from .vit import VisionTransformer, get_arch, layer_norm


def patch_statistics(patches: torch.Tensor, eps: float = 1.0e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of every patch of `patchify`'s output (B, L, P): the norm-pix
    target is `(patch - mean) / std`, and a reconstruction is brought back with `pred * std + mean`.
    `eps` keeps flat patches finite."""
    mean = patches.mean(dim=-1, keepdim=True)
    return mean, (patches.var(dim=-1, keepdim=True) + eps) ** 0.5


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, gh*gw, p*p*C); values inside a patch ordered (row, column, channel) as in
    the official MAE, so its `decoder_pred` weights mean the same here."""
    b, c, h, w = imgs.shape
    p = patch_size
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> torch.Tensor:
    """Inverse of `patchify`: (B, gh*gw, p*p*C) -> (B, C, gh*p, gw*p)."""
    b = x.shape[0]
    p = patch_size
    gh, gw = grid
    x = x.reshape(b, gh, gw, p, p, channels)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, channels, gh * p, gw * p)


class MAEOutput(NamedTuple):
    """What `MaskedAutoencoder.forward` returns; L = gh * gw patches, p the patch size."""

    loss: torch.Tensor  # what is optimised: pixel_loss, plus aux_loss when there is one
    pred: torch.Tensor  # (B, L, p*p*C), in the (normalised) target space
    mask: torch.Tensor  # (B, L), 1 = masked (predicted), 0 = visible
    pixel_loss: torch.Tensor | None = None  # MSE on the masked patches
    aux_loss: torch.Tensor | None = None  # the masking head's own loss (hard_patches), else None


class MaskedAutoencoder(VisionTransformer):
    """ViT encoder (inherited: official key layout at the top level) plus the MAE decoder.

    `mask_tokens_in_encoder=True` is the slow baseline of the paper's speed claim: every patch is
    encoded, masked ones replaced by a learned token, so the encoder sees all L tokens.

    Args:
        img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, drop_path_rate:
            the encoder, as `VisionTransformer`; images must be exactly `img_size`.
        decoder_embed_dim: decoder token width.
        decoder_depth: decoder blocks.
        decoder_num_heads: decoder attention heads.
        mask_ratio: default share of the L = gh * gw patches masked, in [0, 1); at least one
            patch must stay visible and one masked.
        norm_pix_loss: the target is each patch's pixels normalised by its own mean and standard
            deviation (the paper's better target).
        masking: the `mae_core.masking.MaskingStrategy`; None: random masking. A strategy's head
            (`build_head`) becomes `decoder_loss_pred`.
        mask_tokens_in_encoder: encode all patches, masked ones as a learned token (the baseline).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = False,
        masking: MaskingStrategy | None = None,
        mask_tokens_in_encoder: bool = False,
        drop_path_rate: float = 0.0,
    ):
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.decoder_embed_dim = decoder_embed_dim
        super().__init__(
            img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
            drop_path_rate=drop_path_rate,
        )
        self.check_mask_ratio(mask_ratio)
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.masking = masking or RandomMasking()
        self.mask_tokens_in_encoder = mask_tokens_in_encoder
        if mask_tokens_in_encoder:
            self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            nn.init.normal_(self.encoder_mask_token, std=0.02)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            sincos_2d(decoder_embed_dim, self.grid_size, cls_token=True).unsqueeze(0), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, norm_layer=layer_norm)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = layer_norm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(_reinit)
        # A pretraining-only head, named decoder_* so that exports and backbones drop it with the decoder.
        self.decoder_loss_pred = self.masking.build_head(embed_dim)
        self.progress = 0.0

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def num_visible(self, mask_ratio: float) -> int:
        return int(self.num_patches * (1 - mask_ratio))

    def check_mask_ratio(self, mask_ratio: float) -> None:
        """Refuses a ratio that leaves no visible patch (the encoder would see nothing) or no
        masked one (the loss averages over masked patches: 0/0 = NaN), naming the grid and counts."""
        visible = self.num_visible(mask_ratio)
        if not 0 < visible < self.num_patches:
            rows, cols = self.grid_size
            raise ValueError(
                f"mask_ratio {mask_ratio} on the {rows}x{cols} patch grid leaves {visible} visible and "
                f"{self.num_patches - visible} masked of {self.num_patches} patches; both must be at least 1 "
                f"(visible = int({self.num_patches} x (1 - mask_ratio)))"
            )

    def set_progress(self, fraction: float) -> None:
        """Tells the masking how far training is (0 = start, 1 = end); hard_patches ramps with it.
        The engine sets it from the optimizer step before every step, so resume restores it."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"training progress must be in [0, 1], got {fraction}")
        self.progress = float(fraction)

    def _check_scores(self, name: str, values: torch.Tensor, batch: int) -> None:
        if values.shape != (batch, self.num_patches):
            raise ValueError(f"{name} must have shape {(batch, self.num_patches)}, got {tuple(values.shape)}")

    def mask_scores(
        self, imgs: torch.Tensor, tokens: torch.Tensor, num_masked: int, noise: torch.Tensor | None,
        predicted_loss: torch.Tensor | None,
    ) -> torch.Tensor:
        """(B, L) scores from the strategy: its random draw (`noise`, drawn here when None) as is,
        or, for an informed strategy, combined with the batch's signals (no gradient flows)."""
        b = imgs.shape[0]
        if noise is None:
            noise = self.masking(b, self.grid_size, num_masked, imgs.device)
        self._check_scores("noise", noise, b)
        if not self.masking.informed:
            return noise
        with torch.no_grad():
            predicted = None if predicted_loss is None else predicted_loss.detach()
            inputs = MaskingInputs(imgs, tokens.detach(), predicted, self.progress, num_masked)
            return self.masking.scores(noise, inputs)

    @staticmethod
    def mask_from_scores(
        scores: torch.Tensor, len_keep: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keeps the `len_keep` lowest scores per sample: ids_keep (B, len_keep), mask (B, L;
        1 = masked) and ids_restore (B, L)."""
        ids_shuffle = torch.argsort(scores, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        mask = (ids_restore >= len_keep).to(torch.float32)
        return ids_shuffle[:, :len_keep], mask, ids_restore

    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoded tokens (B, 1 + len_keep, D) — or (B, 1 + L, D) with mask tokens in the
        encoder — with the mask and the permutation that restores patch order. `noise` is the
        strategy's random draw (see `mae_core.masking`); `scores`, when given, decide the mask
        alone, whatever the strategy."""
        latent, mask, ids_restore, _ = self.encode(imgs, mask_ratio, noise, scores)
        return latent, mask, ids_restore

    def encode(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None, scores: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`forward_encoder` plus the loss head's prediction (B, L), None without a head. The head
        reads the encoder's input tokens (position included) detached: no gradient into the encoder."""
        self.check_input(imgs, fixed_size=True)
        tokens = self.patch_embed(imgs).flatten(1, 2)
        x = tokens + self.pos_embed[:, 1:]
        b, _, d = x.shape
        len_keep = self.num_visible(mask_ratio)
        predicted_loss = None if self.decoder_loss_pred is None else self.decoder_loss_pred(x.detach())
        if scores is None:
            scores = self.mask_scores(imgs, tokens, self.num_patches - len_keep, noise, predicted_loss)
        self._check_scores("scores", scores, b)
        ids_keep, mask, ids_restore = self.mask_from_scores(scores, len_keep)
        if self.mask_tokens_in_encoder:
            masked = mask.unsqueeze(-1).to(x.dtype)
            x = x * (1 - masked) + (self.encoder_mask_token + self.pos_embed[:, 1:]) * masked
        else:
            x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore, predicted_loss

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(B, L, p*p*C) predictions for every patch, in patch order."""
        x = self.decoder_embed(latent)
        b, n, d = x.shape
        if not self.mask_tokens_in_encoder:
            visible = x[:, 1:]
            fill = self.mask_token.expand(b, ids_restore.shape[1] - visible.shape[1], -1)
            patches = torch.cat([visible, fill.to(x.dtype)], dim=1)
            patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
            x = torch.cat([x[:, :1], patches], dim=1)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """Per-patch pixels, normalised per patch when `norm_pix_loss` (MAE's better target)."""
        target = patchify(imgs, self.patch_size)
        if self.norm_pix_loss:
            mean, std = patch_statistics(target)
            target = (target - mean) / std
        return target

    def per_patch_loss(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """(B, L) squared error of every patch, averaged over its values."""
        return ((pred.float() - self.target(imgs).float()) ** 2).mean(dim=-1)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the masked patches only."""
        return (self.per_patch_loss(imgs, pred) * mask).sum() / mask.sum()

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
    ) -> MAEOutput:
        """Masks, encodes the visible patches, decodes all and scores the reconstruction.

        Args:
            imgs: (B, in_chans, H, W) images of exactly `img_size`, normalised as for the encoder.
            mask_ratio: share of patches to mask; None: the model's `mask_ratio`.
            noise: (B, L) the masking strategy's per-sample random draw (the data pipeline's),
                drawn here when None; for random, block and filtered noise it is the mask's score,
                for informed strategies it is combined with their signal.
            scores: (B, L) a mask imposed whatever the strategy: the highest-scoring patches are
                masked.

        Returns:
            `MAEOutput`: `loss` (scalar, what is optimised), `pred` (B, L, p*p*C) per-patch
            predictions in target space (`unpatchify` makes images of them), `mask` (B, L; 1 =
            masked), `pixel_loss` and, with a masking head, `aux_loss`.
        """
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        self.check_mask_ratio(ratio)
        latent, mask, ids_restore, predicted_loss = self.encode(imgs, ratio, noise, scores)
        pred = self.forward_decoder(latent, ids_restore)
        per_patch = self.per_patch_loss(imgs, pred)
        pixel = (per_patch * mask).sum() / mask.sum()
        if predicted_loss is None:
            return MAEOutput(pixel, pred, mask, pixel)
        aux = self.decoder_loss_pred.loss(predicted_loss, per_patch, mask)
        return MAEOutput(pixel + aux, pred, mask, pixel, aux)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, p*p*C) per-patch values (e.g. `MAEOutput.pred`) -> (B, C, H, W) images."""
        return unpatchify(x, self.patch_size, self.grid_size, self.in_chans)


def _reinit(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# The paper's decoder (8 blocks, 512 wide, 16 heads) unless a toy size names a lighter one.
PAPER_DECODER = {"decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16}
TOY_DECODERS = {
    "vit_toy_patch4": {"decoder_embed_dim": 64, "decoder_depth": 2, "decoder_num_heads": 4},
    "vit_mini_patch4": {"decoder_embed_dim": 128, "decoder_depth": 2, "decoder_num_heads": 4},
}


def decoder_preset(arch: str) -> dict:
    """The decoder of the size preset `arch`: a toy size's lighter one, else the paper's."""
    return dict(TOY_DECODERS.get(arch, PAPER_DECODER))


def create_mae(arch: str, **kwargs) -> MaskedAutoencoder:
    """`create_mae("vit_base_patch16", norm_pix_loss=True)`: the size `arch` (`mae_core.vit.VIT_ARCHS`)
    with its decoder preset (`decoder_preset`); keyword arguments (any `MaskedAutoencoder`
    argument) override both."""
    return MaskedAutoencoder(**{**get_arch(arch).to_dict(), **decoder_preset(arch), **kwargs})


def extra_parameters(model: MaskedAutoencoder) -> int:
    """Trained parameters the masking strategy added to the MAE (its loss head); 0 for most. The
    masking sweep's report tables it per strategy."""
    head = model.decoder_loss_pred
    return 0 if head is None else sum(p.numel() for p in head.parameters())
