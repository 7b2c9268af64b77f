"""Checkpoint I/O: atomic saving, safe loading, and reading official MAE, timm and Hugging Face
ViTMAE weights into the toolkit's models with every key accounted for."""

from __future__ import annotations

import argparse

import pytest
import timm
import torch
import torch.nn.functional as F
from mae_layout import official_mae_shapes, random_state_dict

from mae_core.backbone import ViTBackbone
from mae_core.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    IncompleteLoadError,
    export_backbone,
    extract_state_dict,
    load_checkpoint_file,
    load_pretrained,
    resize_patch_embed,
    save_checkpoint,
    to_official_layout,
)
from mae_core.mae import MaskedAutoencoder
from mae_core.vit import VisionTransformer

# ViT-B width and heads at depth 2: the layout is the same as at depth 12, the test is faster.
VIT_B = {"patch_size": 16, "embed_dim": 768, "depth": 2, "num_heads": 12}


def official_checkpoint(tmp_path, with_decoder: bool, **extra) -> tuple:
    shapes = official_mae_shapes(dim=768, depth=2, decoder_dim=512 if with_decoder else None, decoder_depth=1)
    sd = random_state_dict(shapes)
    path = save_checkpoint({"model": {**sd, **extra}}, tmp_path / "mae_pretrain.pth")
    return path, sd


def assert_loaded_exactly(module: torch.nn.Module, sd: dict[str, torch.Tensor], keys) -> None:
    state = module.state_dict()
    for key in keys:
        torch.testing.assert_close(state[key], sd[key], rtol=0, atol=0, msg=key)


def test_official_encoder_only_checkpoint_loads_without_missing_encoder_keys(tmp_path):
    path, sd = official_checkpoint(tmp_path, with_decoder=False)
    vit = VisionTransformer(224, **VIT_B)
    report = load_pretrained(vit, path)
    assert (report.missing, report.unexpected, report.mismatched, report.ignored) == ([], [], [], [])
    assert sorted(report.loaded) == sorted(sd)
    assert_loaded_exactly(vit, sd, sd)

    # Into a full MAE: refused by default (the decoder would stay random), naming the decoder keys
    # and touching nothing; with the explicit opt-in the encoder loads and the decoder is named.
    mae = MaskedAutoencoder(224, **VIT_B, decoder_embed_dim=512, decoder_depth=1, decoder_num_heads=16)
    before = {k: v.clone() for k, v in mae.state_dict().items()}
    decoder_keys = [k for k in mae.state_dict() if k not in sd]
    with pytest.raises(IncompleteLoadError, match=r"mae_pretrain\.pth.*'mask_token'") as refused:
        load_pretrained(mae, path)
    assert decoder_keys and sorted(refused.value.report.problems) == sorted(decoder_keys)
    assert all(torch.equal(v, before[k]) for k, v in mae.state_dict().items())
    report = load_pretrained(mae, path, allow_partial=True)
    report.raise_if_encoder_missing()
    assert sorted(report.missing) == sorted(decoder_keys)
    assert all(k in str(report) for k in decoder_keys)
    assert_loaded_exactly(mae, sd, sd)


def test_official_checkpoint_with_decoder_loads_completely(tmp_path):
    path, sd = official_checkpoint(tmp_path, with_decoder=True)
    mae = MaskedAutoencoder(224, **VIT_B, decoder_embed_dim=512, decoder_depth=1, decoder_num_heads=16)
    report = load_pretrained(mae, path)
    assert (report.missing, report.unexpected, report.mismatched, report.ignored) == ([], [], [], [])
    assert_loaded_exactly(mae, sd, sd)


def test_backbone_reports_pretraining_parts_as_ignored(tmp_path):
    path, sd = official_checkpoint(tmp_path, with_decoder=True)
    backbone = ViTBackbone(img_size=256, pretrain_img_size=224, **VIT_B, use_rel_pos=True, window_size=4)
    report = load_pretrained(backbone, path)
    pretraining_only = [
        k for k in sd if k in ("cls_token", "mask_token") or k.startswith(("norm.", "decoder_"))
    ]
    assert sorted(report.ignored) == sorted(pretraining_only)
    assert report.unexpected == [] and report.mismatched == []
    # Relative positions are new in the backbone (no MAE checkpoint has them): named, not an error.
    assert report.missing and all("rel_pos" in k for k in report.missing)
    assert report.new_parts == report.missing and report.problems == []
    report.raise_if_encoder_missing()
    assert_loaded_exactly(
        backbone, sd, [k for k in sd if k.startswith(("blocks.", "patch_embed", "pos_embed"))]
    )


def test_timm_vit_state_dict_gives_the_same_features():
    timm_vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2).eval()
    vit = VisionTransformer(64, patch_size=16, embed_dim=192, depth=2, num_heads=3).eval()
    report = load_pretrained(vit, timm_vit.state_dict())
    assert report.ignored == ["head.weight", "head.bias"]  # timm's classifier, dropped and reported
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    imgs = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(vit(imgs), timm_vit.forward_features(imgs), rtol=1e-5, atol=1e-5)


def test_position_table_is_resampled_as_mae_fine_tuning_does():
    """A checkpoint trained at 64 px (4x4 grid) loaded at 96 px (6x6) must equal a 96-px timm ViT
    whose table was interpolated the way MAE fine-tuning and ViTDet do it (bicubic, no antialias)."""
    small = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=1).eval()
    vit = VisionTransformer(96, patch_size=16, embed_dim=192, depth=1, num_heads=3).eval()
    report = load_pretrained(vit, small.state_dict())
    assert report.resized == [("pos_embed", (1, 17, 192), (1, 37, 192))]
    assert "pos_embed [1, 17, 192] -> [1, 37, 192]" in str(report)

    grid = small.pos_embed[:, 1:].reshape(1, 4, 4, 192).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    big = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=96, depth=1).eval()
    big.load_state_dict(
        {
            **small.state_dict(),
            "pos_embed": torch.cat([small.pos_embed[:, :1], grid.flatten(2).transpose(1, 2)], 1),
        }
    )
    imgs = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(vit(imgs), big.forward_features(imgs), rtol=1e-5, atol=1e-5)


def test_toolkit_checkpoint_with_a_non_square_grid_is_resampled_in_the_right_orientation():
    small = VisionTransformer((16, 32), patch_size=4, embed_dim=8, depth=1, num_heads=2)
    grid = small.grid_size  # (4, 8)
    table = torch.zeros(1, 1 + grid[0] * grid[1], 8)
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    table[0, 1:, 0] = rows.flatten().float()
    table[0, 1:, 1] = cols.flatten().float()
    table[0, 0] = 7.0
    sd = {**small.state_dict(), "pos_embed": table}
    arch = {"patch_size": 4, "embed_dim": 8, "depth": 1, "num_heads": 2, "img_size": (16, 32)}
    big = VisionTransformer((32, 32), patch_size=4, embed_dim=8, depth=1, num_heads=2)
    report = load_pretrained(big, {"model": sd, "arch": arch})
    assert report.source_format == "toolkit"
    assert report.resized == [("pos_embed", (1, 33, 8), (1, 65, 8))]
    pos = big.pos_embed[0, 1:].reshape(8, 8, 8)
    assert torch.equal(big.pos_embed[0, 0], table[0, 0])
    # Rows were stretched 4 -> 8, columns kept: the row channel varies down, the column one across.
    assert (pos[1:, :, 0] >= pos[:-1, :, 0]).all() and pos[-1, 0, 0] > pos[0, 0, 0]
    torch.testing.assert_close(pos[:, :, 1], cols[0].float().expand(8, 8), rtol=0, atol=1e-5)


def test_patch_kernel_resize_14_to_16_keeps_the_embedding_of_a_resized_patch():
    weight = torch.randn(5, 3, 14, 14)
    resized = resize_patch_embed(weight, 16)
    assert resized.shape == (5, 3, 16, 16)
    patch = torch.randn(2, 3, 14, 14)
    # timm's pseudo-inverse resize is exact for patches upsampled by the same bicubic resize.
    upsampled = F.interpolate(patch, size=(16, 16), mode="bicubic", antialias=True)
    torch.testing.assert_close(F.conv2d(upsampled, resized), F.conv2d(patch, weight), rtol=1e-4, atol=1e-4)


def test_huge_patch14_checkpoint_loads_into_a_patch16_backbone(tmp_path):
    """The ViT-H route: patch-14 weights at 224 px (16x16 grid) into a patch-16 backbone (14x14)."""
    shapes = official_mae_shapes(img_size=224, patch=14, dim=32, depth=1, decoder_dim=None)
    backbone = ViTBackbone(
        img_size=64, pretrain_img_size=224, patch_size=16, embed_dim=32, depth=1, num_heads=2
    )
    report = load_pretrained(backbone, random_state_dict(shapes))
    assert sorted(report.resized) == [
        ("patch_embed.proj.weight", (32, 3, 14, 14), (32, 3, 16, 16)),
        ("pos_embed", (1, 257, 32), (1, 197, 32)),
    ]
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    assert backbone(torch.randn(1, 3, 64, 64))[0].shape == (1, 32, 4, 4)


def hf_config(**overrides):
    from transformers import ViTMAEConfig

    spec = dict(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
        layer_norm_eps=1e-6,
        mask_ratio=0.75,
        norm_pix_loss=True,
    )
    return ViTMAEConfig(**{**spec, **overrides})


def toolkit_mae_like(config) -> MaskedAutoencoder:
    return MaskedAutoencoder(
        config.image_size,
        config.patch_size,
        config.num_channels,
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.intermediate_size / config.hidden_size,
        config.decoder_hidden_size,
        config.decoder_num_hidden_layers,
        config.decoder_num_attention_heads,
        mask_ratio=config.mask_ratio,
        norm_pix_loss=config.norm_pix_loss,
    ).eval()


def assert_same_pretraining_output(hf_model, mae: MaskedAutoencoder, imgs: torch.Tensor) -> None:
    noise = torch.rand(imgs.shape[0], mae.num_patches)
    with torch.no_grad():
        expected = hf_model(pixel_values=imgs, noise=noise)
        out = mae(imgs, noise=noise)
    torch.testing.assert_close(out.loss, expected.loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.pred, expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.mask, expected.mask, rtol=0, atol=0)


def test_hugging_face_vitmae_for_pretraining_gives_the_same_loss(tmp_path):
    from transformers import ViTMAEForPreTraining

    config = hf_config()
    hf_model = ViTMAEForPreTraining(config).eval()
    imgs = torch.randn(2, 3, 32, 32)

    # In memory (transformers 5 names: q_proj, k_proj, v_proj, o_proj, mlp.fc1...).
    mae = toolkit_mae_like(config)
    report = load_pretrained(mae, hf_model.state_dict())
    assert report.source_format == "Hugging Face ViTMAE"
    assert (report.missing, report.unexpected, report.mismatched, report.ignored) == ([], [], [], [])
    assert_same_pretraining_output(hf_model, mae, imgs)

    # As a hub file (model.safetensors with query/key/value, intermediate.dense, output.dense...).
    hf_model.save_pretrained(tmp_path)
    mae = toolkit_mae_like(config)
    report = load_pretrained(mae, tmp_path / "model.safetensors")
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    assert_same_pretraining_output(hf_model, mae, imgs)

    # transformers 5 writes the decoder layers as `decoder.decoder_encoder.layer.N`; the files on
    # the hub (facebook/vit-mae-*, written by transformers 4) say `decoder.decoder_layers.N`.
    from safetensors.torch import load_file

    hub = {k.replace("decoder_encoder.layer.", "decoder_layers."): v for k, v in
           load_file(tmp_path / "model.safetensors").items()}  # fmt: skip
    assert any(k.startswith("decoder.decoder_layers.1.attention.attention.query") for k in hub)
    mae = toolkit_mae_like(config)
    report = load_pretrained(mae, hub)
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    assert_same_pretraining_output(hf_model, mae, imgs)


def test_hugging_face_vitmae_model_without_prefix_loads_the_encoder():
    from transformers import ViTMAEModel

    config = hf_config(num_channels=1, image_size=24, mask_ratio=0.5)
    hf_encoder = ViTMAEModel(config).eval()
    assert not any(k.startswith("vit.") for k in hf_encoder.state_dict())
    mae = toolkit_mae_like(config)
    report = load_pretrained(mae, hf_encoder.state_dict(), allow_partial=True)
    report.raise_if_encoder_missing()
    assert report.missing and all(k.startswith(("decoder_", "mask_token")) for k in report.missing)
    imgs = torch.randn(2, 1, 24, 24)
    noise = torch.rand(2, mae.num_patches)
    with torch.no_grad():
        expected = hf_encoder(pixel_values=imgs, noise=noise).last_hidden_state
        latent, _, _ = mae.forward_encoder(imgs, config.mask_ratio, noise)
    torch.testing.assert_close(latent, expected, rtol=1e-5, atol=1e-5)


def test_report_names_mismatched_keys_and_the_encoder_check_refuses_them():
    vit = VisionTransformer(32, patch_size=8, embed_dim=16, depth=2, num_heads=2)
    sd = vit.state_dict()
    sd["blocks.1.mlp.fc1.weight"] = torch.zeros(32, 16)  # mlp ratio 2 instead of 4
    sd["blocks.1.mlp.fc1.bias"] = torch.zeros(32)
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    with pytest.raises(IncompleteLoadError, match=r"2 problem keys: 'blocks\.1\.mlp\.fc1\.weight'"):
        load_pretrained(vit, sd)
    assert all(torch.equal(v, before[k]) for k, v in vit.state_dict().items())  # nothing loaded
    report = load_pretrained(vit, sd, allow_partial=True)
    assert report.mismatched == [
        ("blocks.1.mlp.fc1.weight", (32, 16), (64, 16)),
        ("blocks.1.mlp.fc1.bias", (32,), (64,)),
    ]
    assert "blocks.1.mlp.fc1.weight checkpoint [32, 16] vs model [64, 16]" in str(report)
    assert torch.equal(vit.blocks[1].mlp.fc1.weight, before["blocks.1.mlp.fc1.weight"])  # left, and said so
    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.fc1\.weight"):
        report.raise_if_encoder_missing()


def test_surplus_blocks_are_unexpected_and_fail_the_encoder_check():
    deep = VisionTransformer(32, patch_size=8, embed_dim=16, depth=3, num_heads=2)
    shallow = VisionTransformer(32, patch_size=8, embed_dim=16, depth=2, num_heads=2)
    with pytest.raises(IncompleteLoadError, match=r"blocks\.2\."):
        load_pretrained(shallow, deep.state_dict())
    report = load_pretrained(shallow, deep.state_dict(), allow_partial=True)
    assert report.unexpected and all(k.startswith("blocks.2.") for k in report.unexpected)
    with pytest.raises(CheckpointError, match=r"blocks\.2\.attn\.qkv\.weight"):
        report.raise_if_encoder_missing()


def test_unrecognised_layout_names_some_keys():
    with pytest.raises(CheckpointError, match=r"unrecognised checkpoint layout.*'backbone\.conv1\.weight'"):
        to_official_layout({"backbone.conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)})


def test_extract_state_dict_unwraps_and_strips_the_ddp_prefix():
    t = torch.ones(2)
    assert extract_state_dict({"state_dict": {"module.blocks.0.norm1.weight": t}}) == {
        "blocks.0.norm1.weight": t
    }
    assert extract_state_dict({"model": {"pos_embed": t}, "epoch": 3}) == {"pos_embed": t}
    with pytest.raises(CheckpointError, match="no state dict found.*'epoch'"):
        extract_state_dict({"epoch": 3, "weights": [t]})


def test_export_backbone_writes_the_encoder_only(tmp_path):
    path, sd = official_checkpoint(tmp_path, with_decoder=True, **{"head.weight": torch.zeros(10, 768)})
    out = export_backbone(path, tmp_path / "encoder.pth", arch_record={"num_heads": 12})
    saved = load_checkpoint_file(out)
    assert sorted(saved["model"]) == sorted(k for k in sd if not k.startswith(("decoder_", "mask_token")))
    assert saved["arch"] == {
        "patch_size": 16,
        "embed_dim": 768,
        "depth": 2,
        "in_chans": 3,
        "mlp_ratio": 4.0,
        "img_size": [224, 224],
        "num_heads": 12,
    }
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    backbone = ViTBackbone(img_size=224, **VIT_B)
    report = load_pretrained(backbone, out)
    assert report.source_format == "toolkit"
    assert sorted(report.ignored) == ["cls_token", "norm.bias", "norm.weight"]
    report.raise_if_encoder_missing()


def test_failed_save_leaves_the_previous_file_and_no_partial_one(tmp_path, monkeypatch):
    path = save_checkpoint({"step": torch.tensor(1)}, tmp_path / "last.pth")

    def save_half_then_fail(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(CheckpointWriteError, match=f"could not write {path}: disk full. Nothing was written"):
        save_checkpoint({"step": torch.tensor(2)}, path, last_good=path)
    with pytest.raises(CheckpointWriteError, match="No checkpoint was written before this one"):
        save_checkpoint({"step": torch.tensor(2)}, tmp_path / "new.pth")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]
    assert load_checkpoint_file(path)["step"].item() == 1


def test_a_file_too_large_for_the_limit_is_named_with_the_os_error_not_torchs(tmp_path):
    """A real failed write inside torch.save (the file-size limit, EFBIG: Python ignores SIGXFSZ),
    which torch reports only as 'unexpected pos': traced back to the OS error, the previous file
    untouched, no partial file."""
    import resource

    path = save_checkpoint({"step": torch.tensor(1)}, tmp_path / "last.pth")
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, limit[1]))
    try:
        with pytest.raises(CheckpointWriteError) as err:
            save_checkpoint({"w": torch.zeros(100_000)}, path, last_good=path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    assert f"could not write {path}: File too large (EFBIG)" in str(err.value)
    assert "the write stopped after 64.0 KiB" in str(err.value)
    assert f"The last good checkpoint is {path}" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]
    assert load_checkpoint_file(path)["step"].item() == 1


def test_legacy_pickle_needs_the_explicit_opt_in(tmp_path):
    vit = VisionTransformer(32, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    path = tmp_path / "official.pth"
    torch.save({"model": vit.state_dict(), "args": argparse.Namespace(lr=1.5e-4)}, path)
    with pytest.raises(CheckpointError, match=r"(?s)official\.pth.*allow_pickle=True"):
        load_pretrained(VisionTransformer(32, patch_size=8, embed_dim=16, depth=1, num_heads=2), path)
    report = load_pretrained(
        VisionTransformer(32, patch_size=8, embed_dim=16, depth=1, num_heads=2), path, allow_pickle=True
    )
    assert (report.missing, report.unexpected) == ([], [])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere\.pth does not exist"):
        load_pretrained(
            VisionTransformer(32, patch_size=8, embed_dim=16, depth=1, num_heads=2), tmp_path / "nowhere.pth"
        )


def test_export_from_a_pretraining_checkpoint_keeps_only_the_encoder_arch(tmp_path):
    mae = MaskedAutoencoder((32, 48), 8, 1, 32, 2, 2, decoder_embed_dim=16, decoder_depth=1)
    arch = {
        "name": "custom", "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 4.0,
        "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2, "img_size": [32, 48],
        "in_chans": 1, "mask_ratio": 0.75, "norm_pix_loss": True, "masking": "random",
    }  # fmt: skip
    run = save_checkpoint({"model": mae.state_dict(), "arch": arch, "epoch": 3}, tmp_path / "last.pth")
    saved = load_checkpoint_file(export_backbone(run, tmp_path / "encoder.pth"))
    assert saved["arch"] == {
        "name": "custom", "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
        "mlp_ratio": 4.0, "img_size": [32, 48], "in_chans": 1,
    }  # fmt: skip
    assert not any(k.startswith(("decoder_", "mask_token")) for k in saved["model"])
    # The non-square 4x6 grid recorded in "arch" lets the table be resampled to a square 6x6 one.
    backbone = ViTBackbone(img_size=48, pretrain_img_size=48, patch_size=8, in_chans=1, embed_dim=32,
                           depth=2, num_heads=2)  # fmt: skip
    report = load_pretrained(backbone, tmp_path / "encoder.pth")
    assert report.resized == [("pos_embed", (1, 25, 32), (1, 37, 32))]
    report.raise_if_encoder_missing()
