"""The two ways of computing decomposed relative positions (mae_core.layers REL_POS_PATHS) give the
same outputs and gradients, in windowed and global blocks, with non-zero relative-position tables."""

import copy

import pytest
import torch

from mae_core import layers
from mae_core.backbone import ViTBackbone
from mae_core.layers import Attention, choose_rel_pos_path, set_rel_pos_path

TINY = dict(patch_size=4, embed_dim=32, depth=2, num_heads=2)


def randomise_(module: torch.nn.Module, std: float = 0.2) -> None:
    """Random values everywhere, including the zero-initialised relative-position tables."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=gen))


def outputs_and_grads(model, path, x, *args):
    """Forward output, input gradient and every parameter gradient under `path`, with a random
    upstream gradient (a plain sum would hide errors that cancel over the softmax)."""
    model = copy.deepcopy(model)
    set_rel_pos_path(model, path)
    x = x.clone().requires_grad_()
    out = model(x, *args)
    out = out[0] if isinstance(out, list) else out
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * upstream).sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return out.detach(), x.grad, grads


def assert_equal_within_1e5(actual, expected, name):
    """|difference| <= 1e-5 x the largest |entry| (at least 1): summed gradients such as the
    rel-pos tables' reach ~40, where both fp32 paths are 2e-5 from a float64 reference alike."""
    bound = 1e-5 * max(1.0, expected.abs().max().item())
    diff = (actual - expected).abs().max().item()
    assert diff <= bound, f"{name}: max |difference| {diff:.2e} > {bound:.2e}"


def assert_paths_equal(model, x, *args):
    out_f, dx_f, grads_f = outputs_and_grads(model, "fused", x, *args)
    out_c, dx_c, grads_c = outputs_and_grads(model, "chunked", x, *args)
    assert_equal_within_1e5(out_c, out_f, "output")
    assert_equal_within_1e5(dx_c, dx_f, "input gradient")
    assert grads_f.keys() == grads_c.keys()
    for name in grads_f:
        assert_equal_within_1e5(grads_c[name], grads_f[name], name)
    rel_grads = [g for name, g in grads_f.items() if "rel_pos" in name]
    assert rel_grads and all(g.abs().max() > 1e-3 for g in rel_grads)  # the tables are exercised


@pytest.mark.parametrize("chunk_elements", [2**22, 37])  # one chunk; many, the last one partial
def test_chunked_equals_fused_in_windowed_and_global_blocks(monkeypatch, chunk_elements):
    monkeypatch.setattr(layers, "CHUNK_ELEMENTS", chunk_elements)
    # 6x7 grid: block 0 in padded 3x3 windows, block 1 global with a resampled table.
    net = ViTBackbone(img_size=24, pretrain_img_size=16, window_size=3, global_blocks=(1,), use_rel_pos=True,
                      **TINY)
    randomise_(net)
    assert_paths_equal(net, torch.randn(2, 3, 24, 28))


def test_chunked_equals_fused_for_attention_alone_with_odd_chunks():
    grid = (5, 7)
    attn = Attention(48, 3, rel_pos_size=grid)
    randomise_(attn)
    x = torch.randn(2, grid[0] * grid[1], 48)
    q, k, v = attn.qkv(x).reshape(2, 35, 3, 3, 16).permute(2, 0, 3, 1, 4).unbind(0)
    rel_h, rel_w = attn.rel_pos_terms(q, grid)
    whole = layers.chunked_rel_pos_attention(q, k, v, rel_h, rel_w, 0.25)
    for chunk in (1, 4, 34):
        split = layers.chunked_rel_pos_attention(q, k, v, rel_h, rel_w, 0.25, chunk)
        torch.testing.assert_close(split, whole, atol=1e-5, rtol=1e-5)
    assert_paths_equal(attn, x, grid)


def test_chunked_under_bf16_autocast_is_close_to_fp32():
    grid = (6, 6)
    attn = Attention(32, 2, rel_pos_size=grid)
    randomise_(attn)
    set_rel_pos_path(attn, "chunked")
    x = torch.randn(1, 36, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = attn(x, grid)
    low.float().sum().backward()
    assert low.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()
    torch.testing.assert_close(low.float(), attn(x, grid), atol=3e-2, rtol=3e-2)


def test_path_choice_by_device_tokens_and_head_size(monkeypatch):
    assert choose_rel_pos_path("cuda", 64 * 64, 64) == "fused"
    assert choose_rel_pos_path("cpu", 64 * 64, 64) == "chunked"  # ViT-B global block at 1024 px
    assert choose_rel_pos_path("cpu", 32 * 32, 64) == "fused"  # ViT-B global block at 512 px
    assert choose_rel_pos_path("cpu", 14 * 14, 64) == "fused"  # ViTDet's windows
    calls = []
    chunked = layers.chunked_rel_pos_attention
    monkeypatch.setattr(layers, "chunked_rel_pos_attention", lambda *a: calls.append(1) or chunked(*a))
    attn = Attention(8, 2, rel_pos_size=(6, 7))  # head size 4: chunked on a CPU
    attn(torch.randn(1, 42, 8), (6, 7))
    assert calls == [1]
    set_rel_pos_path(attn, "fused")  # the override wins
    attn(torch.randn(1, 42, 8), (6, 7))
    assert calls == [1]
    with pytest.raises(ValueError, match="not one of"):
        set_rel_pos_path(attn, "flash")
