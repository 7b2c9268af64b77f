"""The segmentation backbone in MMSegmentation's `MAE` layout (cls token in attention, BEiT's
relative-position table, layer scale): converted MMSegmentation weights give MMSegmentation's
outputs, an official MAE checkpoint starts it, and a checkpoint of another layout is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmseg.models.backbones import MAE
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

import segmentation  # noqa: F401  (registers MAEViT)
from mae_core.backbone import ViTBackbone
from mae_core.checkpoint import CheckpointError, load_pretrained, save_checkpoint
from mae_core.layers import RelPosBias, bias_index
from mae_core.mae import create_mae
from mae_core.vit import VisionTransformer

register_all_modules(init_default_scope=True)

DIMS = dict(embed_dim=64, depth=4, num_heads=4)
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "segmentation"
MMSEG_LAYOUT_CONFIG = CONFIGS / "upernet_vit_base_512x512_160k_ade20k_mmseg_layout.py"
# What MMSegmentation's MAE configs use: layer norm eps 1e-6 (the toolkit's), GELU, qkv bias.
MMSEG_NORM = dict(type="LN", eps=1e-6)


def mmseg_mae(img_size: tuple[int, int], patch_size: int) -> MAE:
    """mmseg's MAE with random weights everywhere: tables, layer scale, tokens, position table."""
    net = MAE(
        img_size=img_size, patch_size=patch_size, embed_dims=64, num_layers=4, num_heads=4,
        out_indices=(0, 1, 2, 3), norm_cfg=MMSEG_NORM,
    )
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.normal_(1.0 if name.endswith(("gamma_1", "gamma_2")) else 0.0, 0.3)
    return net


def cls_layout_backbone(img_size: tuple[int, int], patch_size: int, **kwargs) -> ViTBackbone:
    """The toolkit's backbone through MMSegmentation's registry, in MMSegmentation's MAE layout."""
    cfg = dict(
        type="MAEViT", arch="vit_toy_patch4", patch_size=patch_size, img_size=img_size,
        pretrain_img_size=img_size, out_indices=(0, 1, 2, 3), cls_token_in_attention=True,
        rel_pos_bias=True, init_values=0.1, **DIMS,
    )
    return MODELS.build({**cfg, **kwargs})


@pytest.mark.parametrize(("img_size", "patch_size"), [((64, 64), 8), ((48, 80), 16)])
def test_converted_mmseg_mae_weights_give_mmseg_outputs_and_gradients(tmp_path, img_size, patch_size):
    ref = mmseg_mae(img_size, patch_size)
    # A whole segmentor checkpoint as MMSegmentation saves it: backbone, neck and heads.
    sd = {f"backbone.{k}": v for k, v in ref.state_dict().items()}
    sd["decode_head.conv_seg.weight"] = torch.zeros(2, 8, 1, 1)
    path = save_checkpoint({"meta": {}, "state_dict": sd}, tmp_path / "mmseg_mae.pth")
    ours = cls_layout_backbone(img_size, patch_size)
    report = load_pretrained(ours, path)
    assert report.source_format == "MMSegmentation MAE"
    assert sorted(report.loaded) == sorted(ours.state_dict()), str(report)
    assert (report.missing, report.unexpected, report.mismatched, report.resized) == ([], [], [], [])
    assert sorted(report.ignored) == sorted(
        ["decode_head.conv_seg.weight"] + [f"layers.{i}.attn.relative_position_index" for i in range(4)]
    )
    # The index the toolkit rebuilds is the one mmseg saved.
    grid = (img_size[0] // patch_size, img_size[1] // patch_size)
    index = bias_index(grid, True, torch.device("cpu"))
    assert torch.equal(ref.layers[0].attn.relative_position_index, index)

    x = torch.randn(2, 3, *img_size)
    ref.eval(), ours.eval()
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    assert len(got) == len(expected) == 4
    for e, g in zip(expected, got, strict=True):
        assert g.shape == e.shape
        assert float((g - e).abs().max()) < 1e-4
        assert float(e.abs().max()) > 1  # outputs far from zero: the check has teeth
    # Gradients of both (no dropout or drop path anywhere): for the input and for a bias table.
    x.requires_grad_(True)
    sum(o.square().mean() for o in ref(x)).backward()
    grad_ref_x, x.grad = x.grad, None
    sum(o.square().mean() for o in ours(x)).backward()
    torch.testing.assert_close(x.grad, grad_ref_x, atol=1e-4, rtol=1e-4)
    table_ref = ref.layers[1].attn.relative_position_bias_table.grad
    table = ours.blocks[1].attn.rel_pos_bias.relative_position_bias_table.grad
    assert float(table_ref.abs().max()) > 0
    torch.testing.assert_close(table, table_ref, atol=1e-4, rtol=1e-4)


def test_mmseg_checkpoint_of_another_layout_is_refused():
    sd = mmseg_mae((64, 64), 8).state_dict()
    # Without BEiT tables (default layout), without the cls entries, without layer scale.
    for options in (
        dict(cls_token_in_attention=False, rel_pos_bias=False),
        dict(cls_token_in_attention=False),
        dict(init_values=None),
    ):
        with pytest.raises(CheckpointError, match="does not fit the model completely") as info:
            load_pretrained(cls_layout_backbone((64, 64), 8, **options), sd)
        problems = info.value.report.problems
        assert problems and all(k.endswith(("relative_position_bias_table", ".gamma")) for k in problems)
    # A layer of another checkpoint format inside the mmseg layout names the key.
    bad = {**sd, "layers.0.attn.q_bias": torch.zeros(64)}
    with pytest.raises(CheckpointError, match="layers.0.attn.q_bias"):
        load_pretrained(cls_layout_backbone((64, 64), 8), bad)


def test_official_mae_checkpoint_starts_the_cls_layout_with_zero_tables():
    """Pretraining weights hold no relative positions or layer scale: those start as MMSegmentation
    initialises them (tables zero, layer scale 1.0 here), and the backbone is then exactly the
    pretrained encoder on the whole image, cls token included."""
    mae = create_mae("vit_toy_patch4", img_size=32, patch_size=8, **DIMS)
    with torch.no_grad():
        mae.cls_token.normal_(0, 1)
    ours = cls_layout_backbone((32, 32), 8, init_values=1.0, out_indices=(3,), final_norm=True)
    report = load_pretrained(ours, {"model": mae.state_dict()})
    assert "cls_token" in report.loaded and "pos_embed" in report.loaded
    tables = [f"blocks.{i}.attn.rel_pos_bias.relative_position_bias_table" for i in range(4)]
    scales = [f"blocks.{i}.ls{j}.gamma" for i in range(4) for j in (1, 2)]
    assert sorted(report.new_parts) == sorted(tables + scales) and report.problems == []
    assert all(torch.count_nonzero(ours.get_parameter(k)) == 0 for k in tables)
    encoder = VisionTransformer(img_size=32, patch_size=8, **DIMS)
    load_pretrained(encoder, {"model": mae.state_dict()})
    x = torch.randn(2, 3, 32, 32)
    tokens = encoder.eval()(x)[:, 1:].reshape(2, 4, 4, 64).permute(0, 3, 1, 2)
    torch.testing.assert_close(ours.eval()(x)[0], tokens, atol=1e-5, rtol=1e-5)


def beit2mmseg_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What MMSegmentation's tools/model_converters/beit2mmseg.py makes of an official MAE file (the
    pretrained file of its MAE recipe): blocks renamed, `patch_embed.proj` kept beside the new
    `patch_embed.projection`, top-level keys (final `norm`) unchanged."""
    out = {}
    for key, value in sd.items():
        if key.startswith("patch_embed"):
            out[key.replace("patch_embed.proj", "patch_embed.projection")] = value
        if key.startswith("blocks"):
            key = key.replace("blocks", "layers").replace("norm", "ln")
            key = key.replace("mlp.fc1", "ffn.layers.0.0").replace("mlp.fc2", "ffn.layers.1")
        out[key] = value
    return out


def test_official_mae_file_converted_by_mmseg_loads_like_the_original():
    mae = create_mae("vit_toy_patch4", img_size=32, patch_size=8, **DIMS)
    encoder = {k: v for k, v in mae.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    direct, via_mmseg = (cls_layout_backbone((32, 32), 8) for _ in range(2))
    load_pretrained(direct, encoder)
    report = load_pretrained(via_mmseg, beit2mmseg_keys(encoder))
    assert report.source_format == "MMSegmentation MAE" and report.problems == []
    assert report.ignored == ["norm.weight", "norm.bias"]  # the final norm a backbone leaves out
    for key, value in direct.state_dict().items():
        torch.testing.assert_close(via_mmseg.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_bias_tables_follow_other_grids_and_keep_the_cls_entries():
    small = cls_layout_backbone((32, 32), 8)
    with torch.no_grad():
        for blk in small.blocks:
            blk.attn.rel_pos_bias.relative_position_bias_table.normal_(0, 0.5)
    large = cls_layout_backbone((64, 64), 8)
    report = load_pretrained(large, small.state_dict())
    assert [k for k, _, _ in report.resized if "relative_position_bias_table" in k] == [
        f"blocks.{i}.attn.rel_pos_bias.relative_position_bias_table" for i in range(4)
    ]
    old = small.blocks[0].attn.rel_pos_bias.relative_position_bias_table
    new = large.blocks[0].attn.rel_pos_bias.relative_position_bias_table
    assert new.shape == (15 * 15 + 3, 4)
    torch.testing.assert_close(new[-3:], old[-3:])  # cls entries are not offsets: kept as they are
    torch.testing.assert_close(new[7 * 15 + 7], old[3 * 7 + 3])  # zero offset stays at the centre
    # At run time an input of another size resamples the table the same way.
    bias = small.blocks[0].attn.rel_pos_bias
    torch.testing.assert_close(bias((8, 8)), large.blocks[0].attn.rel_pos_bias((8, 8)))
    assert [tuple(m.shape) for m in small.eval()(torch.randn(1, 3, 48, 64))] == [(1, 64, 6, 8)] * 4


@pytest.mark.parametrize(
    "grid, cls_token", [((32, 32), True), ((3, 5), True), ((6, 2), False), ((1, 1), True)]
)
def test_bias_table_gradient_summed_over_offsets_equals_indexing_the_table(grid, cls_token):
    """RelPosBias gathers the (heads, N, N) bias from the table and sums its gradient over offset
    diagonals instead of scattering it back through BEiT's index: the same values and the same
    table gradient as plain indexing (float64, random table and upstream gradient)."""
    bias = RelPosBias(grid, num_heads=3, cls_token=cls_token).double()
    gen = torch.Generator().manual_seed(0)
    table = bias.relative_position_bias_table
    with torch.no_grad():
        table.copy_(torch.randn(table.shape, generator=gen, dtype=torch.float64))
    expected = table[bias_index(grid, cls_token, table.device)].permute(2, 0, 1)
    out = bias(grid)
    assert torch.equal(out, expected)
    upstream = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (grad_expected,) = torch.autograd.grad(expected, table, upstream)
    (grad,) = torch.autograd.grad(out, table, upstream)
    assert float(grad_expected.abs().max()) > 1
    torch.testing.assert_close(grad, grad_expected, atol=1e-12, rtol=1e-12)


def test_cls_layout_refuses_windows_and_two_relative_position_schemes():
    with pytest.raises(ValueError, match="global attention"):
        ViTBackbone(img_size=64, patch_size=8, cls_token_in_attention=True, window_size=4, **DIMS)
    with pytest.raises(ValueError, match="exclude each other"):
        ViTBackbone(img_size=64, patch_size=8, use_rel_pos=True, rel_pos_bias=True, **DIMS)


def test_mmseg_layout_config_builds_the_recipe_backbone_in_that_layout():
    cfg = Config.fromfile(MMSEG_LAYOUT_CONFIG)
    backbone = MODELS.build(cfg.model.backbone)
    assert backbone.cls_token_in_attention and not backbone.blocks[0].attn.use_rel_pos
    assert backbone.blocks[0].attn.rel_pos_bias.relative_position_bias_table.shape == (63 * 63 + 3, 12)
    assert (backbone.out_indices, float(backbone.blocks[0].ls1.gamma[0].detach())) == ((3, 5, 7, 11), 1.0)
