"""How good is an encoder for classification: k-NN, linear probe, partial and full fine-tuning,
and an online k-NN monitor that pretraining can call every few epochs.

Every protocol works on any backbone that returns a list (or dict) of feature maps — the
toolkit's ViT, a torchvision ResNet, a timm model — through `GlobalPool` on its last map.
The linear probe follows MAE: a BatchNorm without affine parameters before the linear layer
(features of MAE encoders have very different scales per channel; the BN removes that without
adding capacity). It is trained on features computed once, without augmentation, which makes it
seconds on a CPU instead of hours; fine-tuning trains the whole network (or its last k blocks)
with layer-wise learning-rate decay."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mae_core.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from mae_core.data import ImageFolder, eval_transform, pretrain_transform
from mae_core.distributed import unwrap
from mae_core.engine import LRSchedule
from mae_core.layer_decay import find_layered_modules, param_groups
from mae_core.vit import VisionTransformer, layer_norm


class GlobalPool(nn.Module):
    """Backbone -> (B, C) features: the global average of its last (coarsest) feature map."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.backbone(images)
        last = list(maps.values())[-1] if isinstance(maps, dict) else maps[-1]
        return last.mean(dim=(2, 3))


def labelled_loader(
    root,
    img_size: int,
    batch_size: int = 128,
    train: bool = False,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    num_workers: int = 0,
    seed: int = 0,
) -> DataLoader:
    """An image folder with one sub-folder per class (ImageNet's layout; the demo's `cls/train`).
    Training views are random resized crops (area 0.5-1) with flips; evaluation views are the
    resized centre. Shuffling follows `seed`."""
    cfg = DataConfig(mean=tuple(mean), std=tuple(std), min_scale=0.5)
    transform = pretrain_transform(cfg, img_size, 3) if train else eval_transform(cfg, img_size, 3)
    dataset = ImageFolder(root, 3, transform)
    if not dataset.classes:
        raise ValueError(f"{root}: classification needs the images in one sub-folder per class "
                         "(root/<class>/<image>), found images directly under it")
    return DataLoader(dataset, batch_size, shuffle=train, drop_last=train and len(dataset) > batch_size,
                      num_workers=num_workers, generator=torch.Generator().manual_seed(seed))


def vit_token_features(vit: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """Mean of the final (normalised) patch tokens of a ViT encoder or a masked autoencoder, every
    patch visible. Calls `VisionTransformer.forward` explicitly: a `MaskedAutoencoder` overrides
    `forward` with the masked loss, and random masking would consume the training RNG."""
    return VisionTransformer.forward(unwrap(vit), images)[:, 1:].mean(dim=1)


@torch.no_grad()
def extract_features(
    encode: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) float features and (N,) labels of every (images, labels) batch of `loader`."""
    feats, labels = [], []
    for images, targets in loader:
        feats.append(encode(images.to(device)).float().cpu())
        labels.append(targets)
    if not feats:
        raise ValueError("the data loader yielded no batch: is the dataset empty?")
    return torch.cat(feats), torch.cat(labels)


def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    query_feats: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Weighted k-NN on cosine similarity (Wu et al. 2018, DINO): each of the k nearest training
    samples votes for its class with weight exp(similarity / temperature). Returns class scores."""
    if len(train_feats) == 0:
        raise ValueError("k-NN needs at least one training feature")
    k = min(k, len(train_feats))
    bank = F.normalize(train_feats.float(), dim=1)
    scores = []
    for start in range(0, len(query_feats), chunk):
        query = F.normalize(query_feats[start : start + chunk].float(), dim=1)
        sim, idx = (query @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(query), num_classes)
        votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp())
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(train_feats, train_labels, query_feats, query_labels, num_classes: int, k: int = 20,
                 temperature: float = 0.07) -> float:
    scores = knn_predict(train_feats, train_labels, query_feats, num_classes, k, temperature)
    return (scores.argmax(dim=1) == query_labels).float().mean().item()


class LinearProbe(nn.Module):
    """MAE's linear classifier: BatchNorm1d without affine parameters, then a linear layer."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(feats))


@dataclass
class TrainedClassifier:
    """What training a classifier gave (a linear probe on features, or a fine-tuned encoder with its
    head): the final val accuracy and the per-epoch history."""

    accuracy: float
    history: list[dict] = field(default_factory=list)


def train_linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    val_feats: torch.Tensor,
    val_labels: torch.Tensor,
    num_classes: int,
    epochs: int = 90,
    lr: float = 0.1,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> TrainedClassifier:
    """SGD with momentum and a cosine schedule on fixed features; accuracy on the val features."""
    generator = torch.Generator().manual_seed(seed)
    probe = LinearProbe(train_feats.shape[1], num_classes)
    opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train_feats) / batch_size)
    total = epochs * steps_per_epoch
    history = []
    schedule = LRSchedule(peak=lr, min_lr=0.0, warmup_steps=0, total_steps=total)
    step = 0
    for epoch in range(epochs):
        probe.train()
        order = torch.randperm(len(train_feats), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            for group in opt.param_groups:
                group["lr"] = schedule(step)
            loss = F.cross_entropy(probe(train_feats[idx]), train_labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        history.append({"epoch": epoch, "loss": loss.item()})
    probe.eval()
    with torch.no_grad():
        accuracy = (probe(val_feats).argmax(dim=1) == val_labels).float().mean().item()
    return TrainedClassifier(accuracy, history)


class Classifier(nn.Module):
    """Backbone -> global average of its last map -> LayerNorm -> linear head (MAE's global-pool
    fine-tuning head). Layer decay sees the backbone's layer ids; the head is the top layer."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.features = GlobalPool(backbone)
        self.fc_norm = layer_norm(feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    @property
    def backbone(self) -> nn.Module:
        return self.features.backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(self.features(images)))


def freeze_all_but_last_blocks(model: nn.Module, trainable_blocks: int) -> int:
    """Partial fine-tuning: parameters of layered backbones (see `layer_decay`) whose layer id is
    at most `num_layers - trainable_blocks` stop training; norms above the blocks and heads keep
    training. Returns how many parameter tensors were frozen."""
    layered = find_layered_modules(model)
    if not layered:
        raise ValueError(f"{type(model).__name__} contains no backbone reporting layer ids "
                         "(num_layers / layer_id); partial fine-tuning needs them")
    frozen = 0
    for module in layered.values():
        if not 0 <= trainable_blocks <= module.num_layers:
            raise ValueError(f"trainable_blocks must be in [0, {module.num_layers}], got {trainable_blocks}")
        for name, param in module.named_parameters():
            if module.layer_id(name) <= module.num_layers - trainable_blocks:
                param.requires_grad_(False)
                frozen += 1
    return frozen


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader: Iterable, device="cpu") -> float:
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += (model(images.to(device)).argmax(dim=1).cpu() == labels).sum().item()
        total += len(labels)
    if total == 0:
        raise ValueError("the evaluation loader yielded no sample")
    return correct / total


def fine_tune(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    epochs: int,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    warmup_epochs: int = 1,
    label_smoothing: float = 0.1,
    device="cpu",
    progress: Callable | None = None,
) -> TrainedClassifier:
    """AdamW over `param_groups` (layer-wise lr decay, no decay on norms/biases/tokens), cosine
    schedule with warmup; only parameters with requires_grad train. Val accuracy after each
    epoch goes into the history; the result holds the last one."""
    groups = param_groups(model, weight_decay, layer_decay)
    if not groups:
        raise ValueError("no trainable parameter: everything is frozen")
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    steps_per_epoch = len(train_loader)
    total, warmup = epochs * steps_per_epoch, warmup_epochs * steps_per_epoch
    schedule = LRSchedule(peak=lr, min_lr=0.0, warmup_steps=warmup, total_steps=total)
    step, history = 0, []
    epochs_iter = progress(range(epochs)) if progress else range(epochs)
    for epoch in epochs_iter:
        model.train()
        running = 0.0
        for images, labels in train_loader:
            scheduled = schedule(step)
            for group in opt.param_groups:
                group["lr"] = scheduled * group["lr_scale"]
            logits = model(images.to(device))
            loss = F.cross_entropy(logits, labels.to(device), label_smoothing=label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running += loss.item()
            step += 1
        accuracy = evaluate_classifier(model, val_loader, device)
        history.append({"epoch": epoch, "loss": running / max(1, steps_per_epoch), "val_acc": accuracy})
    accuracy = history[-1]["val_acc"] if history else evaluate_classifier(model, val_loader, device)
    return TrainedClassifier(accuracy, history)


class KNNMonitor:
    """Online k-NN accuracy during pretraining, every `every` epochs on a held-out split: a
    pretraining-quality signal that needs no labels in the pretraining loss and costs one pass
    over two small labelled sets. Call it with the (possibly DDP-wrapped) model after an epoch;
    it returns {"knn_acc": ...} when it ran, None otherwise, and leaves the training mode and the
    global RNG as they were (so a run with the monitor trains exactly like one without)."""

    def __init__(self, train_loader: Iterable, val_loader: Iterable, num_classes: int, every: int = 1,
                 k: int = 20, temperature: float = 0.07,
                 encode: Callable[[nn.Module, torch.Tensor], torch.Tensor] = vit_token_features):
        if every < 1:
            raise ValueError(f"k-NN monitor interval must be >= 1 epoch, got {every}")
        self.train_loader, self.val_loader = train_loader, val_loader
        self.num_classes, self.every, self.k, self.temperature = num_classes, every, k, temperature
        self.encode = encode

    def due(self, epoch: int) -> bool:
        """Epochs count from 0; runs after epochs every-1, 2*every-1, ..."""
        return (epoch + 1) % self.every == 0

    def __call__(self, model: nn.Module, epoch: int, device="cpu") -> dict | None:
        if not self.due(epoch):
            return None
        model = unwrap(model)
        was_training = model.training
        model.eval()
        encode = lambda images: self.encode(model, images)
        # Iterating a DataLoader draws from the global RNG; forking keeps pretraining's stream intact.
        try:
            with torch.random.fork_rng(devices=[]):
                train = extract_features(encode, self.train_loader, device)
                val = extract_features(encode, self.val_loader, device)
        finally:
            model.train(was_training)
        return {"knn_acc": knn_accuracy(*train, *val, self.num_classes, self.k, self.temperature)}


class KNNMonitorHook:
    """The k-NN monitor as a pretraining epoch hook (`PretrainConfig.epoch_hooks`):

        epoch_hooks=({"target": "mae_app.probe.KNNMonitorHook", "train_root": "data/demo/cls/train",
                      "val_root": "data/demo/cls/val", "img_size": 64, "every": 2},)

    Images are normalised with the pretraining's mean and std; the result is logged as `knn_acc`."""

    def __init__(self, train_root: str, val_root: str, img_size: int, every: int = 1, k: int = 20,
                 temperature: float = 0.07, batch_size: int = 256, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        common = dict(img_size=img_size, batch_size=batch_size, mean=tuple(mean), std=tuple(std))
        train = labelled_loader(train_root, **common)
        val = labelled_loader(val_root, **common)
        self.monitor = KNNMonitor(train, val, len(train.dataset.classes), every, k, temperature)

    def on_epoch_end(self, epoch: int, model: nn.Module) -> dict | None:
        device = next(unwrap(model).parameters()).device
        return self.monitor(model, epoch, device)


__all__ = [
    "Classifier", "GlobalPool", "KNNMonitor", "KNNMonitorHook", "LinearProbe", "TrainedClassifier",
    "evaluate_classifier",
    "extract_features", "labelled_loader", "fine_tune", "freeze_all_but_last_blocks", "knn_accuracy",
    "knn_predict",
    "train_linear_probe", "vit_token_features",
]
