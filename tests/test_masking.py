"""Masking strategies: exact visible counts on square and non-square grids, determinism per
(seed, epoch, sample) and exact resume with an informed strategy, the hard-patch head's gradients
kept out of the encoder, and each strategy's characteristic measured on what it should change."""

from __future__ import annotations

import json

import pytest
import torch
from helpers_pretrain import require_fashion_mnist, toy_config
from scipy import ndimage

from benchmarks.masking import pretrain_speed
from mae_core.backbone import ViTBackbone
from mae_core.checkpoint import load_pretrained, save_checkpoint
from mae_core.config import ConfigError, ModelConfig, override
from mae_core.data import FashionMNIST, MaskedViews
from mae_core.engine import mae_from_record, model_record, pretrain
from mae_core.mae import create_mae, extra_parameters
from mae_core.masking import MASKING, FilteredNoiseMasking, LossPredictor, build_masking

STRATEGIES = {
    "random": ("random", {}),
    "block": ("block", {"min_block": 4}),
    "green": ("filtered_noise", {}),
    "red": ("filtered_noise", {"band": "low", "sigma": 2.0}),
    "hard_patches": ("hard_patches", {}),
    "salience": ("salience", {}),
    "sbam": ("salience", {"measure": "attention"}),
}
CPU = torch.device("cpu")


def toy_mae(name: str, args: dict, grid: tuple[int, int], in_chans: int = 3, **kwargs):
    """vit_toy_patch4 (patch 4) on a `grid` of patches, told training is over (full hard share)."""
    model = create_mae("vit_toy_patch4", img_size=(4 * grid[0], 4 * grid[1]), in_chans=in_chans,
                       masking=build_masking(name, **args), **kwargs)
    model.set_progress(1.0)
    return model


def mask_of(scores: torch.Tensor, num_masked: int) -> torch.Tensor:
    """The boolean mask (True = masked) the model makes from scores: the highest `num_masked`."""
    keep = torch.argsort(scores, dim=1)[:, : scores.shape[1] - num_masked]
    return torch.ones_like(scores, dtype=torch.bool).scatter_(1, keep, False)


# ---------------------------------------------------------------- interface


def test_every_strategy_is_registered_and_tested():
    assert {name for name, _ in STRATEGIES.values()} == set(MASKING)


@pytest.mark.parametrize("grid", [(7, 7), (4, 6), (14, 14)])
@pytest.mark.parametrize("label", list(STRATEGIES))
def test_every_sample_keeps_exactly_len_keep_patches(label, grid):
    name, args = STRATEGIES[label]
    model = toy_mae(name, args, grid).train()
    imgs = torch.randn(3, 3, 4 * grid[0], 4 * grid[1])
    length = grid[0] * grid[1]
    for ratio in (0.75, 0.5, 0.9):
        len_keep = model.num_visible(ratio)
        # The model's own draw, and the data pipeline's per-sample draw passed as noise.
        pipeline = torch.cat([model.masking(1, grid, length - len_keep, CPU) for _ in range(3)])
        for noise in (None, pipeline):
            latent, mask, ids_restore = model.forward_encoder(imgs, ratio, noise)
            assert latent.shape == (3, 1 + len_keep, model.embed_dim)
            assert (mask.sum(1) == length - len_keep).all()
            assert torch.equal(torch.sort(ids_restore, 1).values, torch.arange(length).expand(3, -1))
    out = model(imgs)
    assert out.pred.shape == (3, length, 48) and (out.mask.sum(1) == length - model.num_visible(0.75)).all()


@pytest.mark.parametrize("label", ["hard_patches", "salience"])
def test_informed_strategies_work_with_mask_tokens_in_the_encoder(label):
    name, args = STRATEGIES[label]
    model = toy_mae(name, args, (4, 6), mask_tokens_in_encoder=True)
    latent, mask, _ = model.forward_encoder(torch.randn(2, 3, 16, 24), 0.75)
    assert latent.shape == (2, 1 + 24, model.embed_dim) and (mask.sum(1) == 18).all()


def test_noise_is_the_informed_strategys_random_part_and_scores_impose_a_mask():
    model = toy_mae("salience", {}, (7, 7)).eval()
    imgs = torch.randn(2, 3, 28, 28)
    noise = torch.rand(2, 49)
    num_masked = 49 - model.num_visible(0.75)
    first, again = model(imgs, noise=noise), model(imgs, noise=noise.clone())
    assert torch.equal(first.mask, again.mask) and torch.equal(first.loss, again.loss)
    # Only the order of the noise matters, as for argsort with the data-independent strategies.
    assert torch.equal(model(imgs, noise=noise * 5 - 2).mask, first.mask)
    # The noise is combined with the image's salience: the mask is not argsort(noise).
    assert not torch.equal(first.mask.bool(), mask_of(noise, num_masked))
    # Scores impose the mask whatever the strategy.
    assert torch.equal(model(imgs, scores=noise).mask.bool(), mask_of(noise, num_masked))
    with pytest.raises(ValueError, match=r"scores must have shape \(2, 49\)"):
        model(imgs, scores=torch.rand(2, 48))
    with pytest.raises(ValueError, match=r"progress must be in \[0, 1\]"):
        model.set_progress(1.5)


def test_strategies_and_their_parameters_come_from_the_config_and_rebuild_from_the_arch(tmp_path):
    cfg = ModelConfig(arch="vit_toy_patch4", img_size=(16, 24), in_chans=1, masking="hard_patches",
                      masking_args={"hidden": 16, "hard_share": 0.25})
    record = model_record(cfg)
    assert record["masking_args"] == {"hidden": 16, "hard_share": 0.25}
    model = mae_from_record(record)
    assert model.masking.hard_share == 0.25 and extra_parameters(model) > 0
    copy = mae_from_record(record)
    copy.load_state_dict(model.state_dict())  # the head's weights are part of the model
    # The head is a pretraining-only part, named like the decoder: a backbone ignores it on loading.
    save_checkpoint({"model": model.state_dict(), "arch": record}, tmp_path / "hpm.pth")
    backbone = ViTBackbone(img_size=(16, 24), pretrain_img_size=(16, 24), patch_size=4, in_chans=1,
                           embed_dim=model.embed_dim, depth=len(model.blocks),
                           num_heads=model.blocks[0].attn.num_heads)
    report = load_pretrained(backbone, tmp_path / "hpm.pth")
    head_keys = [key for key in model.state_dict() if key.startswith("decoder_loss_pred.")]
    assert head_keys and set(head_keys) <= set(report.ignored) and not report.unexpected
    assert "masking_args" not in model_record(ModelConfig())  # records of earlier runs stay equal
    assert override(ModelConfig(), {"masking_args": {"sigma": 2.0}}).masking_args == {"sigma": 2.0}
    with pytest.raises(ConfigError, match="'masking_args' expects dict"):
        override(ModelConfig(), {"masking_args": 2.0})
    with pytest.raises(ValueError, match=r"'filtered_noise' has no parameter 'sigmaa'; it takes: sigma, ba"):
        mae_from_record(model_record(ModelConfig(arch="vit_toy_patch4", masking="filtered_noise",
                                             masking_args={"sigmaa": 2.0})))
    with pytest.raises(ValueError, match="band must be one of"):
        build_masking("filtered_noise", band="green")


def test_extra_parameters_count_the_loss_head_only():
    hidden = 16
    model = toy_mae("hard_patches", {"hidden": hidden}, (7, 7))
    dim = model.embed_dim
    # LayerNorm (2 dim) + Linear dim -> hidden + Linear hidden -> 1
    assert extra_parameters(model) == 2 * dim + dim * hidden + hidden + hidden + 1
    others = [toy_mae(n, a, (7, 7)) for n, a in STRATEGIES.values() if n != "hard_patches"]
    assert all(extra_parameters(model) == 0 for model in others)
    speed = pretrain_speed({"random": ("random", {}), "hard": ("hard_patches", {})}, img_size=16, batch=4,
                           steps=1, rounds=1)
    assert speed["random"]["extra_params"] == 0 and speed["hard"]["extra_params"] == extra_parameters(
        toy_mae("hard_patches", {}, (4, 4)))
    assert all(s["img_per_s"] > 0 and s["pipeline_ms_per_sample"] > 0 for s in speed.values())


# ---------------------------------------------------------------- determinism and resume


class ImagesOnly(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return torch.full((1, 8, 8), float(index)), 0


@pytest.mark.parametrize("label", list(STRATEGIES))
def test_pipeline_noise_is_a_function_of_seed_epoch_and_sample(label):
    name, args = STRATEGIES[label]
    views = MaskedViews(ImagesOnly(4), build_masking(name, **args), (4, 6), 18, seed=3)
    again = MaskedViews(ImagesOnly(4), build_masking(name, **args), (4, 6), 18, seed=3)
    torch.manual_seed(123)  # the global RNG plays no part
    first = views[(1, 2)][1]
    torch.manual_seed(456)
    assert torch.equal(again[(1, 2)][1], first)
    for other in (views[(0, 2)][1], views[(1, 3)][1],
                  MaskedViews(ImagesOnly(4), build_masking(name, **args), (4, 6), 18, seed=4)[(1, 2)][1]):
        assert not torch.equal(mask_of(other[None], 18), mask_of(first[None], 18))


@pytest.mark.slow
def test_resume_with_hard_patches_equals_the_uninterrupted_run(tmp_path):
    """2 epochs straight == 1 epoch, interruption, resume; the hard share ramps over the 16 steps
    (progress from the restored step count) and the loss head is restored with the model."""
    changes = {"model.masking": "hard_patches", "model.masking_args": {"hidden": 16}}

    class InterruptSecondEpoch:  # raised once epoch 1 has finished, before it is saved
        def on_epoch_end(self, epoch, model):
            if epoch == 1:
                raise KeyboardInterrupt

    straight = pretrain(toy_config(tmp_path / "straight", changes))
    assert straight.model.progress == pytest.approx(15 / 16)
    with pytest.raises(KeyboardInterrupt):
        pretrain(toy_config(tmp_path / "resumed", changes), hooks=[InterruptSecondEpoch()])
    resumed = pretrain(toy_config(tmp_path / "resumed", changes), resume=tmp_path / "resumed" / "last.pth")
    assert len(resumed.losses) == 8 and resumed.iteration == straight.iteration == 16
    assert resumed.losses == pytest.approx(straight.losses[8:], abs=1e-6)
    resumed_state = resumed.model.state_dict()
    assert any(name.startswith("decoder_loss_pred") for name in resumed_state)
    for name, value in straight.model.state_dict().items():
        assert torch.allclose(resumed_state[name], value, atol=1e-6, rtol=0), name
    random_run = pretrain(toy_config(tmp_path / "random", {"epochs": 1}))
    assert random_run.losses != pytest.approx(straight.losses[:8], abs=1e-3)  # the strategy took part
    # The log keeps the head's loss apart from the pixel loss (log_every=1: a record per step).
    steps = [r for r in map(json.loads, (tmp_path / "straight/log.jsonl").read_text().splitlines())
             if "loss" in r]
    assert [r["loss"] for r in steps] == pytest.approx(straight.losses)
    assert all(r["aux_loss"] > 0 and r["pixel_loss"] + r["aux_loss"] == pytest.approx(r["loss"])
               for r in steps)
    assert not any("aux_loss" in r or "pixel_loss" in r
                   for r in map(json.loads, (tmp_path / "random/log.jsonl").read_text().splitlines()))


# ---------------------------------------------------------------- hard patches: head and gradients


def test_the_loss_heads_gradients_do_not_reach_the_encoder():
    model = toy_mae("hard_patches", {}, (7, 7)).train()
    out = model(torch.randn(4, 3, 28, 28))
    assert torch.allclose(out.loss, out.pixel_loss + out.aux_loss)
    out.aux_loss.backward(retain_graph=True)
    head = {n for n, _ in model.named_parameters() if n.startswith("decoder_loss_pred.")}
    assert head
    for name, param in model.named_parameters():
        if name in head:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name  # encoder, decoder: untouched by the head's loss
    model.zero_grad(set_to_none=True)
    out.pixel_loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n in head)
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_loss_head_target_is_the_standardised_loss_of_masked_patches():
    head = LossPredictor(4, 4)
    true_loss = torch.tensor([[1.0, 3.0, 100.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])  # patch 2 is visible: its loss is not a target
    standard = torch.tensor([[-1.0, 0.0, 0.0, 1.0]]) * (3 / 2) ** 0.5  # (1, 3, 5): mean 3, std sqrt(8/3)
    assert head.loss(standard, true_loss, mask).item() == pytest.approx(0.0, abs=1e-5)
    assert head.loss(standard + mask, true_loss, mask).item() == pytest.approx(1.0, abs=1e-5)


def test_hard_patches_masks_the_patches_its_head_learned_are_hard():
    """Half of each image's patches are noise texture, the rest flat: after training, the head's
    hard share of the mask lies on texture, and the hard share ramps with progress."""
    torch.manual_seed(0)
    grid = (7, 7)
    model = toy_mae("hard_patches", {"hidden": 32}, grid, in_chans=1, norm_pix_loss=False).train()

    def batch(n):
        textured = torch.rand(n, *grid) < 0.5
        per_pixel = textured.repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1)
        return torch.where(per_pixel, torch.randn(n, 1, 28, 28), torch.zeros(())), textured.flatten(1)

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        imgs, _ = batch(32)
        model(imgs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    imgs, textured = batch(64)
    num_masked = 49 - model.num_visible(0.75)
    noise = torch.rand(64, 49)
    with torch.no_grad():
        out = model(imgs, noise=noise)
    hard = model.masking.num_hard(num_masked, 1.0)
    assert hard == round(0.5 * num_masked)
    scores = out.mask  # the hard ones are those masked although noise alone would keep them visible
    predicted = model.decoder_loss_pred(model.patch_embed(imgs).flatten(1, 2) + model.pos_embed[:, 1:])
    hardest = torch.topk(predicted, hard, dim=1).indices
    assert scores.gather(1, hardest).bool().all()  # every predicted-hardest patch is masked
    share_textured = textured.gather(1, hardest).float().mean().item()
    assert share_textured > 0.95, share_textured  # against 0.5 of all patches
    # Random masking would mask 37 / 49 = 0.76 of the textured patches; the hard half raises that.
    textured_masked = out.mask.bool()[textured].float().mean().item()
    assert textured_masked > 0.85, textured_masked
    # At the start of training the mask is random: exactly argsort(noise).
    model.set_progress(0.0)
    with torch.no_grad():
        assert torch.equal(model(imgs, noise=noise).mask.bool(), mask_of(noise, num_masked))


# ---------------------------------------------------------------- filtered noise


def spectrum(masks: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The masks' mean spatial power spectrum (mean removed) and each bin's frequency (cycles/patch)."""
    x = masks.reshape(-1, *grid).float()
    power = (torch.fft.fft2(x - x.mean((1, 2), keepdim=True)).abs() ** 2).mean(0)
    fy, fx = torch.fft.fftfreq(grid[0])[:, None], torch.fft.fftfreq(grid[1])[None, :]
    return power, (fy**2 + fx**2).sqrt()


def band_energy(masks: torch.Tensor, grid: tuple[int, int], low: float, high: float) -> float:
    """Share of the masks' spectral energy at frequencies in (low, high]."""
    power, f = spectrum(masks, grid)
    return (power[(f > low) & (f <= high)].sum() / power.sum()).item()


def mean_frequency(masks: torch.Tensor, grid: tuple[int, int]) -> float:
    power, f = spectrum(masks, grid)
    return ((power * f).sum() / power.sum()).item()


def draw_masks(strategy, n: int, grid: tuple[int, int], num_masked: int) -> torch.Tensor:
    return mask_of(strategy(n, grid, num_masked, CPU), num_masked)


@pytest.mark.parametrize("sigma", [1.0, 1.5])
def test_green_noise_masks_concentrate_their_spectrum_in_the_chosen_band(sigma):
    grid, n = (14, 14), 1000
    green = FilteredNoiseMasking(sigma=sigma)
    # The filter's gain is above half its peak for 0.072/sigma..0.269/sigma cycles per patch.
    band = (0.072 / sigma, 0.269 / sigma)
    on_band_green = band_energy(draw_masks(green, n, grid, 147), grid, *band)
    on_band_random = band_energy(draw_masks(build_masking("random"), n, grid, 147), grid, *band)
    assert on_band_green > 1.6 * on_band_random, (on_band_green, on_band_random)
    # Random masks have a flat spectrum: each frequency bin holds its share of the energy.
    fy, fx = torch.fft.fftfreq(14)[:, None], torch.fft.fftfreq(14)[None, :]
    f = (fy**2 + fx**2).sqrt()
    bins_in_band = int(((f > band[0]) & (f <= band[1])).sum())
    assert on_band_random == pytest.approx(bins_in_band / (196 - 1), rel=0.1)
    # The scale is the parameter: the same filter at 1.5 times sigma moves energy to lower frequencies.
    wide = draw_masks(FilteredNoiseMasking(sigma=1.5 * sigma), n, grid, 147)
    assert mean_frequency(wide, grid) < 0.85 * mean_frequency(draw_masks(green, n, grid, 147), grid)


def mean_component_size(masks: torch.Tensor, grid: tuple[int, int]) -> float:
    sizes = []
    for mask in masks.reshape(-1, *grid).numpy():
        labels, count = ndimage.label(mask)
        sizes += [int((labels == i).sum()) for i in range(1, count + 1)]
    return sum(sizes) / len(sizes)


def test_red_noise_masks_form_larger_blobs_than_random_and_green_ones():
    grid, n, num_masked = (14, 14), 200, 98  # half masked: random masks do not merge into one piece
    red = mean_component_size(draw_masks(FilteredNoiseMasking(2.0, "low"), n, grid, num_masked), grid)
    green = mean_component_size(draw_masks(FilteredNoiseMasking(1.0), n, grid, num_masked), grid)
    rand = mean_component_size(draw_masks(build_masking("random"), n, grid, num_masked), grid)
    assert red > 2 * green and green > 2 * rand, (red, green, rand)


def test_filtered_noise_does_not_wrap_around_the_grid_edges():
    """Drawn on a padded grid and cropped: the left and right columns are no more alike than two
    columns as far apart in the middle would be (an FFT's wrap-around would make them neighbours)."""
    fields = FilteredNoiseMasking(2.0, "low")(2000, (14, 14), 98, CPU).reshape(-1, 14, 14)
    edge = torch.corrcoef(torch.stack([fields[:, :, 0].flatten(), fields[:, :, -1].flatten()]))[0, 1]
    neighbours = torch.corrcoef(torch.stack([fields[:, :, 6].flatten(), fields[:, :, 7].flatten()]))[0, 1]
    assert neighbours > 0.8 and abs(edge) < 0.1, (neighbours, edge)


# ---------------------------------------------------------------- salience


@pytest.mark.parametrize("measure", ["contrast", "attention"])
def test_salience_masking_on_items_pasted_on_a_flat_background(measure):
    """Fashion-MNIST items pasted at random places on a flat 56x56 background, a freshly
    initialised toy MAE (14 x 14 patches of 4): `contrast` salience masks the item's patches far
    more often than the background's; SBAM's `attention` salience does the opposite here (the
    many identical background patches attend to each other); random masking has no preference."""
    require_fashion_mnist()
    items = FashionMNIST(split="test").images[:64].float() / 255
    torch.manual_seed(0)
    imgs = torch.zeros(64, 1, 56, 56)
    for i, item in enumerate(items):
        top, left = torch.randint(0, 29, (2,)).tolist()
        imgs[i, :, top : top + 28, left : left + 28] = item
    brightness = torch.nn.functional.avg_pool2d(imgs, 4).flatten(1)  # (64, 196) per patch
    on_item, background = brightness > 0.2, brightness == 0
    imgs = (imgs - 0.286) / 0.353
    noise = torch.rand(64, 196)
    results = {}
    for label, args in (("salience", {"measure": measure}), ("random", {})):
        torch.manual_seed(0)
        model = toy_mae(label, args, (14, 14), in_chans=1).eval()
        with torch.no_grad():
            mask = model(imgs, noise=noise).mask.bool()
        results[label] = (mask[on_item].float().mean().item(), mask[background].float().mean().item())
    item_masked, background_masked = results["salience"]
    if measure == "contrast":
        assert item_masked > 0.95 and background_masked < 0.72, results
    else:
        assert background_masked > item_masked + 0.2, results
    assert results["random"][0] == pytest.approx(results["random"][1], abs=0.05)  # random: no preference
