"""The backbone catalogue: every entry builds, framework-agnostic and inside Detectron2 and
MMSegmentation, and returns the pyramid strides; checkpoints load into the right entries."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mae_core.catalogue import PYRAMID_STRIDES, CatalogueError, build_pyramid, build_trunk
from mae_core.checkpoint import CheckpointError, save_checkpoint
from mae_core.layer_decay import param_groups
from mae_core.mae import create_mae

# Small settings per entry so that each builds and runs in a second on one core.
VIT = dict(arch="vit_toy_patch4", img_size=64, patch_size=8)
ENTRIES = {
    "vit_mae": VIT,
    "vit_random": VIT,
    "vit_supervised": VIT,
    "resnet50_fpn": {},
    "convnext_atto": {},
    "timm:resnet18": {},  # any timm model by name: stride-2 level dropped, 4-32 kept
}
H, W = 64, 96  # not square, multiples of 32


@pytest.fixture(scope="module")
def mae_checkpoint(tmp_path_factory):
    """A real (randomly initialised) toolkit MAE saved as pretraining saves it: the encoder and decoder."""
    torch.manual_seed(1)
    mae = create_mae("vit_toy_patch4", img_size=64, patch_size=8)
    path = tmp_path_factory.mktemp("ckpt") / "mae.pth"
    save_checkpoint({"model": mae.state_dict()}, path)
    return path, mae


def build(name, mae_checkpoint, builder=build_pyramid, **extra):
    checkpoint = str(mae_checkpoint[0]) if name in ("vit_mae", "vit_supervised") else None
    return builder(name, checkpoint, **ENTRIES[name], **extra)


@pytest.mark.parametrize("name", ENTRIES)
def test_every_entry_gives_the_pyramid_with_the_expected_strides(name, mae_checkpoint):
    model = build(name, mae_checkpoint, out_channels=32).eval()
    assert model.strides == PYRAMID_STRIDES
    with torch.no_grad():
        out = model(torch.randn(2, 3, H, W))
    assert list(out) == list(PYRAMID_STRIDES)
    for level, stride in PYRAMID_STRIDES.items():
        assert out[level].shape == (2, 32, -(-H // stride), -(-W // stride)), level  # p6 rounds up
    # trainable end to end
    outs = build(name, mae_checkpoint, out_channels=32)(torch.randn(1, 3, H, W))
    sum(o.mean() for o in outs.values()).backward()


def test_vit_mae_loads_the_pretrained_encoder_and_vit_random_does_not(mae_checkpoint):
    _, mae = mae_checkpoint
    loaded = build_trunk("vit_mae", str(mae_checkpoint[0]), **VIT)
    random = build_trunk("vit_random", **VIT)
    for key in ("blocks.0.attn.qkv.weight", "blocks.3.mlp.fc2.weight", "patch_embed.proj.weight"):
        torch.testing.assert_close(loaded.net.state_dict()[key], mae.state_dict()[key])
        assert not torch.equal(random.net.state_dict()[key], mae.state_dict()[key])


def test_layer_decay_sees_the_vit_inside_the_pyramid(mae_checkpoint):
    groups = param_groups(build("vit_random", mae_checkpoint), weight_decay=0.05, layer_decay=0.5)
    ids = {g["layer_id"] for g in groups}
    assert ids == set(range(0, 4 + 2))  # embeddings, 4 blocks, then the neck on top
    neck = [g for g in groups if any(n.startswith("neck.") for n in g["param_names"])]
    assert neck and all(g["lr_scale"] == 1.0 for g in neck)


def test_clear_errors_for_bad_names_and_missing_checkpoints(tmp_path):
    with pytest.raises(CatalogueError, match="known: vit_mae, vit_random"):
        build_pyramid("vit_nope")
    with pytest.raises(CatalogueError, match="needs checkpoint"):
        build_pyramid("vit_mae", **VIT)
    with pytest.raises(CatalogueError, match="timm cannot build 'no_such_model'"):
        build_pyramid("timm:no_such_model")
    with pytest.raises(CatalogueError, match="patch size 32"):
        build_pyramid("vit_random", arch="vit_toy_patch4", img_size=64, patch_size=32)
    bad = tmp_path / "bad.pth"
    save_checkpoint({"model": {"conv1.weight": torch.zeros(1)}}, bad)
    with pytest.raises(CheckpointError, match="not a torchvision ResNet-50"):
        build_pyramid("resnet50_fpn", str(bad))


def test_resnet_checkpoint_loads_with_frozen_batchnorm(tmp_path):
    from torchvision.models import resnet50

    reference = resnet50(weights=None)
    path = tmp_path / "r50.pth"
    save_checkpoint(reference.state_dict(), path)
    trunk = build_trunk("resnet50_fpn", str(path))
    torch.testing.assert_close(trunk.net.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert type(trunk.net.bn1).__name__ == "FrozenBatchNorm2d"
    assert type(build_trunk("resnet50_fpn").net.bn1) is torch.nn.GroupNorm


# --- Detectron2 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENTRIES)
def test_detectron2_backbone_reports_and_returns_the_strides(name, mae_checkpoint):
    from detectron2.modeling import Backbone

    from detection.catalogue import DetectronCatalogueBackbone

    checkpoint = str(mae_checkpoint[0]) if name in ("vit_mae", "vit_supervised") else None
    backbone = DetectronCatalogueBackbone(name, checkpoint, out_channels=32, options=ENTRIES[name]).eval()
    assert isinstance(backbone, Backbone)
    shapes = backbone.output_shape()
    assert {k: s.stride for k, s in shapes.items()} == PYRAMID_STRIDES
    assert {s.channels for s in shapes.values()} == {32}
    assert backbone.size_divisibility == 32
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, H, W))
    for level, spec in shapes.items():
        assert out[level].shape[-2:] == (-(-H // spec.stride), -(-W // spec.stride))


@pytest.mark.slow
def test_mask_rcnn_trains_a_step_with_a_catalogue_backbone(mae_checkpoint):
    """The ViTDet Mask R-CNN of the toolkit's configs, its backbone swapped by name: losses are finite
    and gradients reach the backbone; the MAE loader of tools/train_det.py finds the ViT."""
    from detectron2.config import LazyConfig, instantiate
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    from detection.catalogue import DetectronCatalogueBackbone
    from detection.engine import init_backbone_from_mae

    cfg = LazyConfig.load("configs/detection/mask_rcnn_vit_tiny_cpu.py")
    cfg.model.backbone = {"_target_": DetectronCatalogueBackbone, "name": "vit_random", "options": VIT}
    model = instantiate(cfg.model)
    init_backbone_from_mae(model, str(mae_checkpoint[0])).raise_if_encoder_missing()
    model.train()
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[:, 10:40, 20:50] = True
    inst = Instances((64, 64), gt_boxes=Boxes(torch.tensor([[20.0, 10.0, 50.0, 40.0]])),
                     gt_classes=torch.tensor([1]), gt_masks=BitMasks(mask))
    with EventStorage():
        losses = model([{"image": torch.randint(0, 255, (3, 64, 64)).float(), "instances": inst,
                         "height": 64, "width": 64}])
    total = sum(losses.values())
    assert torch.isfinite(total) and {"loss_mask", "loss_cls", "loss_rpn_cls"} <= set(losses)
    total.backward()
    assert model.backbone.net.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


# --- MMSegmentation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENTRIES)
def test_mmseg_backbone_builds_from_the_registry_and_returns_the_strides(name, mae_checkpoint):
    from mmseg.registry import MODELS

    import segmentation.catalogue  # noqa: F401  registers MMSegCatalogueBackbone

    checkpoint = str(mae_checkpoint[0]) if name in ("vit_mae", "vit_supervised") else None
    backbone = MODELS.build(dict(type="MMSegCatalogueBackbone", name=name, checkpoint=checkpoint,
                                 out_channels=32, options=ENTRIES[name])).eval()
    assert backbone.strides == (4, 8, 16, 32)
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, H, W))
        odd = backbone(torch.randn(1, 3, H - 8, W - 8))  # padded inside, cropped back to cover the input
    assert [o.shape[-2:] for o in outs] == [(H // s, W // s) for s in backbone.strides]
    assert [o.shape[-2:] for o in odd] == [(-(-(H - 8) // s), -(-(W - 8) // s)) for s in backbone.strides]


@pytest.mark.slow
def test_upernet_computes_losses_with_a_catalogue_backbone():
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules

    import segmentation.catalogue  # noqa: F401

    register_all_modules(init_default_scope=True)
    model = MODELS.build(dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", size=(64, 64), pad_val=0, seg_pad_val=255),
        backbone=dict(type="MMSegCatalogueBackbone", name="convnext_atto", out_channels=32),
        decode_head=dict(type="UPerHead", in_channels=[32] * 4, in_index=[0, 1, 2, 3], pool_scales=(1, 2),
                         channels=16, num_classes=3, norm_cfg=dict(type="BN", requires_grad=True),
                         loss_decode=dict(type="CrossEntropyLoss", loss_weight=1.0)),
    ))
    sample = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 3, (1, 64, 64))),
                           metainfo={"img_shape": (64, 64), "pad_shape": (64, 64), "ori_shape": (64, 64)})
    data = model.data_preprocessor({"inputs": [torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)] * 2,
                                    "data_samples": [sample, sample]}, training=True)
    losses = model(**data, mode="loss")
    assert torch.isfinite(losses["decode.loss_ce"])


def test_timm_entry_loads_a_local_checkpoint(tmp_path):
    import timm

    torch.manual_seed(3)
    reference = timm.create_model("convnext_atto")
    path = tmp_path / "convnext_atto.pth"
    torch.save(reference.state_dict(), path)
    expected = reference.stages[2].blocks[0].conv_dw.weight
    loaded = build_trunk("convnext_atto", str(path)).net.stages_2.blocks[0].conv_dw.weight
    torch.testing.assert_close(loaded, expected)
    assert not torch.equal(build_trunk("convnext_atto").net.stages_2.blocks[0].conv_dw.weight, expected)


# --- A catalogue backbone on the ViT-B configs: the heads' widths follow it -------------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("out_channels", [None, 128])
def test_catalogue_backbone_on_the_vit_b_mask_rcnn_config_needs_no_width_edit(tmp_path, out_channels):
    """The README's swap on configs/detection/mask_rcnn_vit_base_100ep.py (heads stated 256 wide):
    the RPN, box and mask heads take the backbone's width, also one other than 256, and the
    model runs on a small image."""
    import shutil

    from detectron2.config import instantiate

    from detection.overrides import load_lazy_config

    shutil.copytree(REPO / "configs/detection", tmp_path, dirs_exist_ok=True)  # beside its base, as a user's
    (tmp_path / "my_run.py").write_text(
        "from detection.catalogue import DetectronCatalogueBackbone\n"
        "from detectron2.config import LazyCall as L\n"
        "from .mask_rcnn_vit_base_100ep import dataloader, lr_multiplier, model, optimizer, train\n"
        'model.backbone = L(DetectronCatalogueBackbone)(name="convnext_atto")\n')
    overrides = [] if out_channels is None else [f"+model.backbone.out_channels={out_channels}"]
    cfg = load_lazy_config(str(tmp_path / "my_run.py"), overrides)
    width = out_channels or 256
    assert cfg.model.proposal_generator.head.in_channels == width
    assert cfg.model.roi_heads.box_head.input_shape.channels == width
    assert cfg.model.roi_heads.mask_head.input_shape.channels == width
    model = instantiate(cfg.model).eval()
    assert model.backbone.output_shape()["p2"].channels == width
    with torch.no_grad():
        [out] = model([{"image": torch.randint(0, 255, (3, 64, 96)).float(), "height": 64, "width": 96}])
    assert out["instances"].image_size == (64, 96)


@pytest.mark.slow
@pytest.mark.parametrize("out_channels", [None, 128])
def test_catalogue_backbone_on_the_vit_b_upernet_config_needs_no_width_edit(tmp_path, out_channels):
    """The README's swap on configs/segmentation/upernet_vit_base_512x512_160k_ade20k.py (heads
    768 wide in): the decode and auxiliary heads read the backbone's width, and the model runs."""
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    from segmentation.train import load_mmseg_config

    config = tmp_path / "my_run.py"
    config.write_text(
        f'_base_ = ["{REPO}/configs/segmentation/upernet_vit_base_512x512_160k_ade20k.py"]\n'
        'custom_imports = dict(imports=["segmentation", "segmentation.catalogue"])\n'
        'model = dict(backbone=dict(_delete_=True, type="MMSegCatalogueBackbone", name="convnext_atto"), '
        "neck=None)\n")
    options = None if out_channels is None else {"+model.backbone.out_channels": out_channels}
    cfg = load_mmseg_config(str(config), cfg_options=options)
    width = out_channels or 256
    assert cfg.model.decode_head.in_channels == [width] * 4 and cfg.model.auxiliary_head.in_channels == width
    assert cfg.model.decode_head.channels == 768  # the recipe's head is kept
    with DefaultScope.overwrite_default_scope("mmseg"):
        model = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64), mode="tensor")
    assert logits.shape == (1, 150, 16, 16)
