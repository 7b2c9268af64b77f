"""The framework-free half of the data check (`tools/check_data.py`): what a split holds, what is
wrong with its files, and one error listing every fault, so that a tree is verified in seconds
before a run of days rather than failing in its first data-loader worker.

Images are checked by their headers only (present, decodable header, a pixel scale the readers
accept, the size the annotations expect): reading headers is what keeps the check to seconds on
COCO's 118k images. The frameworks' own checks (categories, class counts, annotation structure)
live in `detection.data` and `segmentation.data`, which fill the reports' problems with the same
messages training gives."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from .data import ImageReadError, check_image_scale
from .errors import UserError

# Faults listed per kind before "... N more": the first ones name the pattern, the count the size.
SHOWN_PER_KIND = 5


class DataCheckError(UserError):
    """A dataset tree that a run would fail on (or train wrongly from); lists every fault found."""


@dataclass
class SplitReport:
    """One split of a dataset as a run would read it."""

    split: str  # the config's name for it: "train", "test", "val_dataloader", ...
    source: str  # the annotation file or folder
    images: int = 0
    annotations: int = 0  # instance annotations, or label maps
    annotation_kind: str = "annotations"
    classes: int | None = None
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        classes = "" if self.classes is None else f", {self.classes} classes"
        verdict = "ok" if not self.problems else f"{len(self.problems)} problem(s)"
        return (f"{self.split}: {self.source}: {self.images} images, {self.annotations} "
                f"{self.annotation_kind}{classes}: {verdict}")


def image_problems(images: Iterable[tuple[str | os.PathLike, tuple[int, int] | None]],
                   what: str = "image", expected_from: str = "its annotation") -> list[str]:
    """Each missing or unreadable file of (path, expected (height, width) or None), and each
    whose header gives another size than expected (by `expected_from`); at most `SHOWN_PER_KIND`
    per kind named, then a count."""
    missing, unreadable, resized = [], [], []
    for path, expected in images:
        if not os.path.isfile(path):
            missing.append(f"{what} {path} does not exist")
            continue
        try:
            size = check_image_scale(path)
        except ImageReadError as exc:
            unreadable.append(str(exc))
            continue
        if expected is not None and tuple(expected) != size:
            resized.append(f"{what} {path} is {size[0]}x{size[1]} (height x width), but {expected_from} "
                           f"is {expected[0]}x{expected[1]}")
    return [line for kind in (missing, unreadable, resized) for line in shown(kind)]


def shown(problems: list[str]) -> list[str]:
    """The first `SHOWN_PER_KIND` problems, and how many more of the same kind there are."""
    more = len(problems) - SHOWN_PER_KIND
    return problems[:SHOWN_PER_KIND] + ([f"... and {more} more like the one above"] if more > 0 else [])


def raise_if_problems(reports: list[SplitReport], extra: list[str] = ()) -> None:
    """`DataCheckError` listing every split's problems (and `extra`, those of no one split, such as
    the model's class count against the data)."""
    lines = [f"{r.split}: {p}" for r in reports for p in r.problems] + list(extra)
    if lines:
        raise DataCheckError(f"{len(lines)} problem(s) in the data:\n  " + "\n  ".join(lines))


__all__ = ["DataCheckError", "SplitReport", "image_problems", "raise_if_problems", "shown"]
