"""Transfer protocols beside full fine-tuning on every label, framework-free: a labelled subset of
the training set (label efficiency) and a frozen backbone (linear or head-only transfer).

Labelled subsets are nested and shared: one seeded permutation of the sorted image ids, of which a
fraction takes a prefix, so the 10 % subset lies inside the 25 % one, and every backbone and
training seed sees the same images at one fraction (the subset seed is not the training seed).

A frozen module keeps its weights (no gradient, so no optimizer group: `mae_core.layer_decay`
leaves parameters without `requires_grad` out) and stays in eval mode whatever `train()` the
framework calls, so its norms use their stored statistics and drop path and dropout stay off.
Detection and segmentation wrap this with their config keys (`model.backbone.freeze=True`,
`dataloader.train.dataset.label_fraction` / `train_dataloader.dataset.label_fraction`)."""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable

from torch import nn

from .errors import UserError


class SubsetError(UserError):
    """A labelled fraction or count that selects no image or more than there are."""


def subset_size(total: int, fraction: float | None = None, count: int | None = None) -> int:
    """How many of `total` images a fraction (rounded, at least one) or a count selects."""
    if (fraction is None) == (count is None):
        raise SubsetError(f"give a label fraction or a label count, not both or neither "
                          f"(label_fraction={fraction}, label_count={count})")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise SubsetError(f"label_fraction={fraction}: must be in (0, 1]")
        return max(1, round(fraction * total))
    if not 0 < count <= total:
        raise SubsetError(f"label_count={count}: must be between 1 and the {total} training images")
    return count


def label_subset(ids: Iterable[Hashable], fraction: float | None = None, count: int | None = None,
                 seed: int = 0) -> list:
    """The labelled subset of `ids` (image ids or file stems, in any order): a prefix of one
    permutation of the sorted ids drawn from `seed`, so subsets of one seed are nested and
    independent of the order the dataset lists its images in. Returned in sorted order."""
    ordered = sorted(set(ids))
    if len(ordered) == 0:
        raise SubsetError("no training images to take a labelled subset of")
    n = subset_size(len(ordered), fraction, count)
    permutation = list(ordered)
    random.Random(seed).shuffle(permutation)
    return sorted(permutation[:n])


def freeze(module: nn.Module) -> nn.Module:
    """Fixes `module`'s weights (no gradients) and puts it in eval mode; a module that must stay
    frozen through the framework's `train()` calls also uses `FreezableMixin`."""
    module.requires_grad_(False)
    nn.Module.train(module, False)
    return module


class FreezableMixin:
    """For a backbone with a `freeze` switch: `frozen_part()` is what stays fixed (the trunk, not
    a pyramid built on it); after `set_frozen(True)` every `train()` leaves that part in eval mode."""

    frozen = False

    def frozen_part(self) -> nn.Module:
        return self

    def set_frozen(self, frozen: bool) -> None:
        self.frozen = bool(frozen)
        if self.frozen:
            freeze(self.frozen_part())

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            nn.Module.train(self.frozen_part(), False)
        return self


def trainable_summary(model: nn.Module) -> str:
    """One log line: trainable parameters of all (what a frozen run fits)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"trainable parameters: {trainable:,} of {total:,} ({total - trainable:,} frozen)"


__all__ = ["FreezableMixin", "SubsetError", "freeze", "label_subset", "subset_size", "trainable_summary"]
