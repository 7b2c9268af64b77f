"""The masked autoencoder against the paper's definitions: masking, loss, targets, patch order,
position embeddings, the encoder on visible tokens, and the official parameter layout."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from mae_layout import official_mae_shapes

from mae_core.mae import MaskedAutoencoder, create_mae, patchify, unpatchify
from mae_core.masking import BlockMasking
from mae_core.pos_embed import resample_pos_embed, sincos_2d

TINY = dict(
    img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2,
    decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
)  # fmt: skip


def tiny_mae(**overrides) -> MaskedAutoencoder:
    return MaskedAutoencoder(**{**TINY, **overrides}).eval()


def test_every_sample_keeps_exactly_len_keep_tokens_and_mask_matches_ids_restore():
    mae = tiny_mae(img_size=(32, 48))  # 4 x 6 = 24 patches
    imgs = torch.randn(5, 3, 32, 48)
    for ratio in (0.75, 0.5, 0.6):
        len_keep = int(24 * (1 - ratio))
        latent, mask, ids_restore = mae.forward_encoder(imgs, ratio)
        assert latent.shape == (5, 1 + len_keep, 32)
        assert (mask.sum(1) == 24 - len_keep).all()
        # ids_restore is a permutation; its first len_keep shuffled positions are the visible ones.
        ids_shuffle = torch.argsort(ids_restore, dim=1)
        assert torch.equal(torch.sort(ids_restore, dim=1).values, torch.arange(24).expand(5, -1))
        visible = torch.zeros_like(mask).scatter_(1, ids_shuffle[:, :len_keep], 1.0)
        assert torch.equal(visible, 1 - mask)


def test_decoder_puts_every_visible_token_back_at_its_patch():
    """With an identity decoder path the unshuffle is observable: row i of the decoder input must
    be the encoded token of patch i when visible, the mask token when masked."""
    mae = tiny_mae()
    latent = torch.randn(3, 1 + 4, 16)
    noise = torch.rand(3, 16)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    captured = {}
    mae.decoder_blocks[0].register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    mae.decoder_embed = torch.nn.Identity()
    mae.forward_decoder(latent, ids_restore)
    tokens = captured["x"][:, 1:] - mae.decoder_pos_embed[:, 1:]
    for b in range(3):
        for rank, patch in enumerate(ids_shuffle[b].tolist()):
            expected = latent[b, 1 + rank] if rank < 4 else mae.mask_token[0, 0]
            torch.testing.assert_close(tokens[b, patch], expected)


def test_predictions_on_visible_patches_do_not_change_the_loss():
    mae = tiny_mae()
    imgs = torch.randn(2, 3, 32, 32)
    out = mae(imgs)
    visible = (out.mask == 0).unsqueeze(-1)
    changed_visible = out.pred + 100.0 * visible
    torch.testing.assert_close(mae.forward_loss(imgs, changed_visible, out.mask), out.loss, rtol=0, atol=0)
    changed_masked = out.pred + 1.0 * ~visible
    assert mae.forward_loss(imgs, changed_masked, out.mask) > out.loss + 0.5


def test_loss_is_mean_squared_error_over_masked_patches():
    mae = tiny_mae()
    imgs = torch.randn(2, 3, 32, 32)
    out = mae(imgs)
    target = patchify(imgs, 8)
    masked = out.mask.bool()
    expected = ((out.pred[masked] - target[masked]) ** 2).mean()
    torch.testing.assert_close(out.loss, expected)


def test_norm_pix_loss_target_has_zero_mean_and_unit_variance_per_patch():
    mae = tiny_mae(norm_pix_loss=True)
    imgs = torch.rand(2, 3, 32, 32) * 5 + 3
    target = mae.target(imgs)
    assert target.shape == (2, 16, 8 * 8 * 3)
    torch.testing.assert_close(target.mean(-1), torch.zeros(2, 16), rtol=0, atol=1e-5)
    torch.testing.assert_close(target.var(-1), torch.ones(2, 16), rtol=0, atol=1e-4)
    assert torch.equal(tiny_mae().target(imgs), patchify(imgs, 8))


@pytest.mark.parametrize("channels", [1, 3])
def test_patchify_round_trip_and_order_for_non_square_images(channels):
    imgs = torch.randn(2, channels, 12, 20)
    patches = patchify(imgs, 4)
    assert patches.shape == (2, 3 * 5, 4 * 4 * channels)
    # Patch (row 2, column 3) is number 2*5+3; inside it values run (row, column, channel).
    b, pr, pc, c = 1, 3, 1, channels - 1
    assert patches[b, 2 * 5 + 3, (pr * 4 + pc) * channels + c] == imgs[b, c, 2 * 4 + pr, 3 * 4 + pc]
    assert torch.equal(unpatchify(patches, 4, (3, 5), channels), imgs)


def test_grayscale_non_square_mae_trains():
    mae = tiny_mae(img_size=(16, 40), in_chans=1).train()
    imgs = torch.randn(2, 1, 16, 40)
    out = mae(imgs)
    assert out.pred.shape == (2, 2 * 5, 8 * 8) and out.mask.shape == (2, 10)
    out.loss.backward()
    assert mae.patch_embed.proj.weight.grad.abs().sum() > 0
    assert mae.unpatchify(out.pred).shape == imgs.shape


def test_sincos_values_follow_the_formula():
    dim, grid = 16, (3, 5)
    table = sincos_2d(dim, grid, cls_token=True)
    assert table.shape == (1 + 15, dim) and torch.equal(table[0], torch.zeros(dim))
    quarter = dim // 4
    for row in range(3):
        for col in range(5):
            emb = table[1 + row * 5 + col]
            for i in range(quarter):
                freq = 1.0 / 10000 ** (i / quarter)
                # First half: the column (x) coordinate, second half: the row (y), as in MAE.
                expected = [
                    (i, math.sin(col * freq)),
                    (quarter + i, math.cos(col * freq)),
                    (2 * quarter + i, math.sin(row * freq)),
                    (3 * quarter + i, math.cos(row * freq)),
                ]
                for channel, value in expected:
                    assert emb[channel].item() == pytest.approx(value, abs=1e-6)


def test_pos_embed_resampling_to_a_new_grid():
    table = sincos_2d(32, (4, 6), cls_token=True).unsqueeze(0)
    assert resample_pos_embed(table, (4, 6), (4, 6)) is table
    resampled = resample_pos_embed(table, (8, 12), (4, 6))
    assert resampled.shape == (1, 1 + 96, 32)
    assert torch.equal(resampled[:, 0], table[:, 0])
    grid = resampled[0, 1:].reshape(8, 12, 32)
    # Channel 16 is sin(row * 1): constant along a row, so the grid was not transposed; channel 0
    # is sin(col) and varies along the row.
    assert grid[:, :, 16].std(dim=1).max() < 1e-6
    assert grid[:, :, 0].std(dim=1).min() > 0.1
    # Downsampling a doubled grid back gives values close to the original table.
    back = resample_pos_embed(resample_pos_embed(table, (8, 12), (4, 6)), (4, 6), (8, 12))
    torch.testing.assert_close(back[:, 1:], table[:, 1:], rtol=0, atol=0.15)


def test_encoder_on_visible_tokens_equals_a_plain_vit_on_the_gathered_tokens():
    """timm's ViT (an independent implementation) with the same weights, run on the tokens of the
    visible patches only, gives the MAE encoder's output."""
    mae = tiny_mae(img_size=64, patch_size=16, embed_dim=48, num_heads=3, depth=2)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=64, embed_dim=48,
                            depth=2, num_heads=3, num_classes=0).eval()  # fmt: skip
    encoder_keys = vit.state_dict().keys()
    vit.load_state_dict({k: v for k, v in mae.state_dict().items() if k in encoder_keys})
    imgs = torch.randn(3, 3, 64, 64)
    noise = torch.rand(3, 16)
    with torch.no_grad():
        latent, mask, _ = mae.forward_encoder(imgs, 0.75, noise)
        tokens = vit.patch_embed(imgs) + vit.pos_embed[:, 1:]
        keep = torch.argsort(noise, dim=1)[:, :4]
        tokens = torch.stack([tokens[b, keep[b]] for b in range(3)])
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(3, -1, -1)
        expected = vit.norm(vit.blocks(torch.cat([cls, tokens], dim=1)))
    torch.testing.assert_close(latent, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(mask.gather(1, keep), torch.zeros(3, 4))


def test_vit_base_state_dict_matches_the_official_layout():
    mae = create_mae("vit_base_patch16")
    shapes = {k: tuple(v.shape) for k, v in mae.state_dict().items()}
    assert shapes == official_mae_shapes()
    assert sum(p.numel() for p in mae.parameters()) == sum(math.prod(s) for s in shapes.values())
    # The position tables are fixed, as in MAE.
    assert not mae.pos_embed.requires_grad and not mae.decoder_pos_embed.requires_grad


def test_block_masking_masks_exactly_the_requested_count():
    mae = tiny_mae(img_size=(56, 56), patch_size=4, masking=BlockMasking(min_block=4))  # 14 x 14
    imgs = torch.randn(4, 3, 56, 56)
    for ratio in (0.4, 0.75):
        _, mask, _ = mae.forward_encoder(imgs, ratio)
        assert (mask.sum(1) == 196 - int(196 * (1 - ratio))).all()
    noise = BlockMasking(min_block=4)(2, (14, 14), 78, torch.device("cpu"))
    blocks = noise >= 1  # the patches covered by rectangles are masked first
    assert (blocks.sum(1) <= 78).all() and (blocks.sum(1) > 0).all()
    _, mask, _ = mae.forward_encoder(imgs[:2], 0.4, noise)
    assert (mask.bool() | ~blocks).all()


def test_noise_makes_masking_and_loss_reproducible():
    mae = tiny_mae()
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    first, second = mae(imgs, noise=noise), mae(imgs, noise=noise.clone())
    assert torch.equal(first.mask, second.mask) and torch.equal(first.loss, second.loss)
    other = mae(imgs, noise=torch.rand(2, 16))
    assert not torch.equal(other.mask, first.mask)
    with pytest.raises(ValueError, match=r"noise must have shape \(2, 16\)"):
        mae(imgs, noise=torch.rand(2, 15))


def test_mask_tokens_in_the_encoder_encode_every_patch():
    mae = tiny_mae(mask_tokens_in_encoder=True)
    imgs = torch.randn(2, 3, 32, 32)
    latent, mask, _ = mae.forward_encoder(imgs, 0.75)
    assert latent.shape == (2, 17, 32) and (mask.sum(1) == 12).all()
    assert mae(imgs).pred.shape == (2, 16, 192)


def test_bad_inputs_are_named():
    mae = tiny_mae()
    with pytest.raises(ValueError, match=r"expected 32x32 images, got 32x40"):
        mae(torch.randn(1, 3, 32, 40))
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\)"):
        mae(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="mask_ratio"):
        tiny_mae(mask_ratio=1.0)
    with pytest.raises(ValueError, match="mask_ratio 0.0 on the 4x4 patch grid leaves 16 visible and 0"):
        mae(torch.randn(1, 3, 32, 32), mask_ratio=0.0)
    latent, mask, _ = mae.forward_encoder(torch.randn(1, 3, 32, 32), 0.0)  # features of every patch
    assert latent.shape == (1, 17, 32) and not mask.any()
