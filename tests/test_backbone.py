"""The framework-agnostic ViT backbone and simple feature pyramid (mae_core), on tiny sizes."""

import math

import pytest
import torch

from mae_core.backbone import ViTBackbone, create_backbone
from mae_core.checkpoint import load_pretrained
from mae_core.layers import Attention
from mae_core.mae import create_mae
from mae_core.pos_embed import resample_pos_embed
from mae_core.pyramid import SimpleFeaturePyramid

TINY = dict(patch_size=4, embed_dim=32, depth=2, num_heads=2)


def randomise_(module: torch.nn.Module, std: float = 0.2) -> None:
    """Random values everywhere, including the zero-initialised relative-position tables."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)


def explicit_attention(attn: Attention, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Reference: softmax(q k^T / sqrt(d) + bias) v with the decomposed relative bias built from
    explicit offset tables, bias[(i, j), (k, l)] = q_ij . Rh[i - k] + q_ij . Rw[j - l]."""
    b, n, dim = x.shape
    heads, c = attn.num_heads, dim // attn.num_heads
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).reshape(b, n, 3, heads, c).permute(2, 0, 3, 1, 4)
    logits = (q / math.sqrt(c)) @ k.transpose(-2, -1)
    if attn.use_rel_pos:
        gh, gw = grid
        off_h = torch.arange(gh)[:, None] - torch.arange(gh)[None, :] + gh - 1
        off_w = torch.arange(gw)[:, None] - torch.arange(gw)[None, :] + gw - 1
        table_h, table_w = attn.rel_pos_h[off_h], attn.rel_pos_w[off_w]  # (gh, gh, c), (gw, gw, c)
        q_map = q.reshape(b, heads, gh, gw, c)
        bias = torch.zeros(b, heads, gh, gw, gh, gw)
        for i in range(gh):
            for j in range(gw):
                bias[:, :, i, j] += (q_map[:, :, i, j, None, :] * table_h[i][None, None]).sum(-1)[..., None]
                bias[:, :, i, j] += (q_map[:, :, i, j, None, :] * table_w[j][None, None]).sum(-1)[:, :, None]
        logits = logits + bias.reshape(b, heads, n, n)
    out = logits.softmax(-1) @ v
    return out.transpose(1, 2).reshape(b, n, dim) @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize("use_rel_pos", [False, True])
def test_sdpa_attention_equals_explicit_matmul_softmax(use_rel_pos):
    grid = (4, 5)
    attn = Attention(32, 2, rel_pos_size=grid if use_rel_pos else None)
    randomise_(attn)
    x = torch.randn(2, grid[0] * grid[1], 32)
    torch.testing.assert_close(attn(x, grid), explicit_attention(attn, x, grid), atol=1e-5, rtol=1e-5)


def test_window_covering_the_whole_grid_equals_global_attention():
    windowed = ViTBackbone(img_size=16, pretrain_img_size=16, window_size=4, use_rel_pos=True, **TINY)
    global_ = ViTBackbone(img_size=16, pretrain_img_size=16, window_size=0, use_rel_pos=True, **TINY)
    assert all(blk.window_size == 4 for blk in windowed.blocks)
    randomise_(windowed)
    global_.load_state_dict(windowed.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(windowed(x)[0], global_(x)[0], atol=1e-5, rtol=1e-5)


def test_zero_relative_bias_equals_no_bias():
    with_rel = ViTBackbone(
        img_size=24, pretrain_img_size=16, window_size=3, global_blocks=(1,), use_rel_pos=True, **TINY
    )
    without = ViTBackbone(img_size=24, pretrain_img_size=16, window_size=3, global_blocks=(1,), **TINY)
    randomise_(without)
    missing, unexpected = with_rel.load_state_dict(without.state_dict(), strict=False)
    assert not unexpected and missing and all(k.endswith(("rel_pos_h", "rel_pos_w")) for k in missing)
    assert all(float(with_rel.state_dict()[k].abs().max()) == 0 for k in missing)
    x = torch.randn(1, 3, 24, 28)  # 6x7 grid: windows padded, global table resampled
    torch.testing.assert_close(with_rel(x)[0], without(x)[0], atol=1e-5, rtol=1e-5)


def test_position_table_resampling():
    table = torch.randn(1, 1 + 16, 8)
    assert resample_pos_embed(table, (4, 4), (4, 4)) is table
    constant = torch.ones(1, 1 + 16, 8) * torch.arange(8.0)
    resampled = resample_pos_embed(constant, (6, 7), (4, 4))
    assert resampled.shape == (1, 1 + 42, 8)
    torch.testing.assert_close(resampled, torch.ones(1, 43, 8) * torch.arange(8.0))

    # The backbone resamples its pretraining table to the input grid, cls position dropped: a
    # backbone pretrained on 16 px run on 24 px equals one whose table is already at 24 px.
    small = ViTBackbone(img_size=24, pretrain_img_size=16, **TINY)
    large = ViTBackbone(img_size=24, pretrain_img_size=24, **TINY)
    randomise_(small)
    state = small.state_dict()
    state["pos_embed"] = resample_pos_embed(state["pos_embed"], (6, 6), (4, 4))
    large.load_state_dict(state)
    x = torch.randn(1, 3, 24, 24)
    torch.testing.assert_close(small(x)[0], large(x)[0])


def test_mae_checkpoint_loads_and_shared_blocks_match_the_encoder():
    mae = create_mae("vit_toy_patch4", img_size=16).eval()
    backbone = create_backbone("vit_toy_patch4", img_size=16, pretrain_img_size=16).eval()
    report = load_pretrained(backbone, mae.state_dict())
    assert report.encoder_problems == [] and not report.missing, str(report)
    for name, value in backbone.state_dict().items():
        torch.testing.assert_close(value, mae.state_dict()[name], rtol=0, atol=0, msg=name)

    imgs = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens = mae.patch_embed(imgs).flatten(1, 2) + mae.pos_embed[:, 1:]
        for blk in mae.blocks:
            tokens = blk(tokens)
        out = backbone(imgs)[0]
    assert out.shape == (2, 96, 4, 4)
    torch.testing.assert_close(out, tokens.transpose(1, 2).reshape(2, 96, 4, 4), atol=1e-5, rtol=1e-5)

    # The ViTDet layout (windows, relative positions) loads the same encoder; only the new
    # relative-position tables are left at their zero start.
    vitdet = create_backbone(
        "vit_toy_patch4",
        img_size=32,
        pretrain_img_size=16,
        window_size=2,
        global_blocks=(1, 3),
        use_rel_pos=True,
    )
    report = load_pretrained(vitdet, mae.state_dict())
    assert report.encoder_problems == [], str(report)
    assert report.missing and all(k.endswith(("rel_pos_h", "rel_pos_w")) for k in report.missing)


@pytest.mark.parametrize("size", [(64, 96), (80, 48)])
def test_pyramid_shapes_and_strides_on_non_square_inputs(size):
    net = ViTBackbone(
        img_size=64,
        pretrain_img_size=32,
        patch_size=16,
        embed_dim=32,
        depth=2,
        num_heads=2,
        window_size=2,
        global_blocks=(1,),
        use_rel_pos=True,
    )
    pyramid = SimpleFeaturePyramid(32, in_stride=16, out_channels=24)
    assert pyramid.strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    feats = pyramid(net(torch.randn(2, 3, *size))[-1])
    assert list(feats) == ["p2", "p3", "p4", "p5", "p6"]
    h, w = size
    expected = {f"p{k}": (h // 2**k, w // 2**k) for k in range(2, 6)}
    expected["p6"] = (math.ceil(h // 32 / 2), math.ceil(w // 32 / 2))  # stride-2 subsampling of p5
    assert {k: tuple(v.shape) for k, v in feats.items()} == {k: (2, 24, *hw) for k, hw in expected.items()}

    no_top = SimpleFeaturePyramid(
        32, in_stride=16, out_channels=24, scale_factors=(2.0, 1.0), top_level=False
    )
    assert no_top.strides == {"p3": 8, "p4": 16}
    assert list(no_top(torch.randn(1, 32, 4, 6))) == ["p3", "p4"]


def test_pyramid_rejects_unsupported_scales():
    with pytest.raises(ValueError, match="power-of-two strides"):
        SimpleFeaturePyramid(32, scale_factors=(4.0, 3.0))
    with pytest.raises(ValueError, match="scale factor 8"):
        SimpleFeaturePyramid(32, scale_factors=(8.0, 4.0))
    with pytest.raises(ValueError, match="grow by 2"):
        SimpleFeaturePyramid(32, scale_factors=(4.0, 1.0))
