"""Classification protocols on real data: k-NN, linear probe, partial / full fine-tuning, the
online k-NN monitor, and tools/eval_cls.py end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mae_app.probe import (
    Classifier,
    KNNMonitor,
    LinearProbe,
    fine_tune,
    freeze_all_but_last_blocks,
    knn_accuracy,
    knn_predict,
    train_linear_probe,
    vit_token_features,
)
from mae_core.catalogue import build_trunk
from mae_core.data import FashionMNIST
from mae_core.mae import create_mae

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fmnist_split():
    """A small fixed split of real Fashion-MNIST: the first 1000 train and 500 test items."""
    train, test = FashionMNIST(split="train"), FashionMNIST(split="test")
    return (train.images[:1000].float() / 255, train.labels[:1000],
            test.images[:500].float() / 255, test.labels[:500])


def test_knn_votes_are_weighted_by_similarity():
    # One very close neighbour of class 0 outvotes two distant ones of class 1 at a low temperature;
    # at a high temperature the votes are nearly equal and the majority wins.
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.3]])
    assert knn_predict(bank, labels, query, 2, k=3, temperature=0.05).argmax().item() == 0
    assert knn_predict(bank, labels, query, 2, k=3, temperature=100.0).argmax().item() == 1
    # cosine: the scale of a feature does not matter
    scaled = knn_predict(bank * 7, labels, query, 2, k=2)
    assert torch.equal(scaled, knn_predict(bank, labels, query * 3, 2, k=2))


def test_knn_and_linear_probe_beat_chance_clearly_on_fashion_mnist(fmnist_split):
    x_train, y_train, x_val, y_val = fmnist_split
    f_train, f_val = x_train.flatten(1), x_val.flatten(1)
    assert knn_accuracy(f_train, y_train, f_val, y_val, 10) > 0.6  # chance is 0.1
    result = train_linear_probe(f_train, y_train, f_val, y_val, 10, epochs=30, lr=0.1)
    assert result.accuracy > 0.65
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_linear_probe_is_batchnorm_without_affine_then_linear():
    probe = LinearProbe(8, 3)
    assert not probe.norm.affine and probe.norm.eps == 1e-6
    assert [name for name, _ in probe.named_parameters()] == ["head.weight", "head.bias"]
    probe.train()
    out = probe(torch.randn(16, 8) * 100 + 50)  # BN removes scale and offset of the features
    assert out.abs().max() < 1.0


def toy_vit_classifier(num_classes: int, depth: int = 2) -> Classifier:
    trunk = build_trunk("vit_random", arch="vit_toy_patch4", img_size=28, depth=depth)
    return Classifier(trunk, trunk.out_channels[-1], num_classes)


def test_partial_fine_tuning_freezes_all_but_the_last_blocks():
    model = toy_vit_classifier(4, depth=4)
    freeze_all_but_last_blocks(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    allowed = ("features.backbone.net.blocks.3.", "fc_norm", "head")
    assert trainable and all(n.startswith(allowed) for n in trainable)
    assert any(n.startswith("features.backbone.net.blocks.3.") for n in trainable)
    freeze_all_but_last_blocks(model, 0)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    with pytest.raises(ValueError, match="trainable_blocks"):
        freeze_all_but_last_blocks(toy_vit_classifier(4, depth=4), 5)
    with pytest.raises(ValueError, match="layer ids"):
        freeze_all_but_last_blocks(torch.nn.Linear(2, 2), 1)


def two_class_loaders(fmnist_split, n_train=256, n_val=128):
    """Trousers vs bags (classes 1 and 8) as 3-channel 28x28 images."""
    x_train, y_train, x_val, y_val = fmnist_split

    def pick(x, y, n):
        keep = ((y == 1) | (y == 8)).nonzero().flatten()[:n]
        return TensorDataset(x[keep].expand(-1, 3, -1, -1).contiguous(), (y[keep] == 8).long())

    return (DataLoader(pick(x_train, y_train, n_train), batch_size=32, shuffle=True),
            DataLoader(pick(x_val, y_val, n_val), batch_size=64))


@pytest.mark.slow
@pytest.mark.parametrize("partial", [False, True])
def test_fine_tuning_learns_a_real_two_class_task(fmnist_split, partial):
    train_loader, val_loader = two_class_loaders(fmnist_split)
    model = toy_vit_classifier(2)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    if partial:
        freeze_all_but_last_blocks(model, 1)
    result = fine_tune(model, train_loader, val_loader, epochs=2, lr=2e-3, layer_decay=0.75, warmup_epochs=0)
    assert result.accuracy > 0.85
    assert len(result.history) == 2
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, frozen_before[n])}
    assert ("features.backbone.net.blocks.0.attn.qkv.weight" in changed) is not partial
    assert "features.backbone.net.blocks.1.attn.qkv.weight" in changed


def test_knn_monitor_runs_on_schedule_without_touching_training_state(fmnist_split):
    x_train, y_train, x_val, y_val = fmnist_split
    mae = create_mae("vit_toy_patch4", img_size=28, in_chans=1)
    train = DataLoader(TensorDataset(x_train[:300], y_train[:300]), batch_size=100)
    val = DataLoader(TensorDataset(x_val[:100], y_val[:100]), batch_size=100)
    monitor = KNNMonitor(train, val, num_classes=10, every=2)
    mae.train()
    rng = torch.get_rng_state()
    wrapped = torch.nn.DataParallel(mae)  # as the engine hands it over (DDP): the model under `.module`
    assert monitor(wrapped, epoch=0) is None
    result = monitor(wrapped, epoch=1)
    assert set(result) == {"knn_acc"} and 0.2 < result["knn_acc"] <= 1.0  # random ViT features of real items
    assert mae.training
    assert torch.equal(torch.get_rng_state(), rng)
    with pytest.raises(ValueError, match="interval"):
        KNNMonitor(train, val, 10, every=0)


def test_token_features_of_mae_equal_those_of_its_encoder():
    from mae_core.vit import vit_from_arch

    mae = create_mae("vit_toy_patch4", img_size=28, in_chans=1).eval()
    vit = vit_from_arch("vit_toy_patch4", img_size=28, in_chans=1).eval()
    vit.load_state_dict({k: v for k, v in mae.state_dict().items() if k in vit.state_dict()})
    images = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(vit_token_features(mae, images), vit_token_features(vit, images))


@pytest.fixture(scope="module")
def tiny_cls(tmp_path_factory) -> Path:
    from mae_app.demo_data import DemoDataSpec, build_demo_data

    spec = DemoDataSpec(scene_size=32, image_size=32, train_scenes=1, val_scenes=1, object_size=(16, 32),
                        pretrain_images=1, cls_train_per_class=6, cls_val_per_class=3)
    return build_demo_data(tmp_path_factory.mktemp("cls"), spec) / "cls"


@pytest.mark.slow
def test_eval_cls_runs_every_protocol_and_saves_a_loadable_supervised_backbone(tiny_cls, tmp_path):
    out, saved = tmp_path / "r", tmp_path / "sup.pth"
    cmd = [sys.executable, str(REPO / "tools/eval_cls.py"), "--data", str(tiny_cls), "--backbone",
           "vit_random",
           "--arch", "vit_toy_patch4", "--img-size", "32", "--mode", "knn", "linear", "partial", "finetune",
           "--epochs", "1", "--probe-epochs", "5", "--batch-size", "16", "--save-backbone", str(saved),
           "--output-dir", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "eval_cls.json").read_text())
    record = json.loads((out / "run.json").read_text())  # what tools/compare.py reads
    described = (record["task"], record["backbone"], record["seed"], record["img_size"])
    assert described == ("cls", "vit_random", 0, 32)
    assert record["eval_data"] == str(tiny_cls / "val") and record["split"] == "val"
    for key in ("knn_acc", "linear_acc", "partial_acc", "finetune_acc"):
        assert 0.0 <= results[key] <= 1.0
    assert results["num_train"] == 60 and results["num_val"] == 30 and results["num_classes"] == 10
    trunk = build_trunk("vit_supervised", str(saved), arch="vit_toy_patch4", img_size=32)
    state = torch.load(saved, weights_only=True)["model"]
    torch.testing.assert_close(trunk.net.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])


def test_eval_cls_refuses_save_backbone_without_fine_tuning(tiny_cls, tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "tools/eval_cls.py"), "--data", str(tiny_cls),
                          "--backbone", "vit_random", "--mode", "knn",
                          "--save-backbone", str(tmp_path / "x.pth")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "--save-backbone needs --mode finetune" in run.stderr


def test_knn_monitor_hook_reads_class_folders_for_the_pretraining_engine(tiny_cls):
    from mae_app.probe import KNNMonitorHook

    hook = KNNMonitorHook(str(tiny_cls / "train"), str(tiny_cls / "val"), img_size=32, every=2, k=5)
    mae = create_mae("vit_toy_patch4", img_size=32).eval()
    assert hook.on_epoch_end(0, mae) is None
    assert 0.0 <= hook.on_epoch_end(1, mae)["knn_acc"] <= 1.0
    with pytest.raises(ValueError, match="one sub-folder per class"):
        KNNMonitorHook(str(tiny_cls / "train" / "00_t-shirt_top"), str(tiny_cls / "val"), img_size=32)
