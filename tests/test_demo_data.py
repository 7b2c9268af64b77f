"""The demo data builder: deterministic bytes, valid COCO instances, valid label maps, disjoint
sources for train and val, and held-out scenes whose items and photos no train or val file shows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mae_app.demo_data import (
    BACKGROUND_PHOTOS,
    FASHION_CLASSES,
    HELDOUT_PHOTOS,
    DemoDataBuilder,
    DemoDataSpec,
    build_demo_data,
    compose,
)

REPO = Path(__file__).resolve().parents[1]
TINY = DemoDataSpec(seed=3, scene_size=64, image_size=32, train_scenes=6, val_scenes=4, object_size=(16, 32),
                    pretrain_images=6, cls_train_per_class=1, cls_val_per_class=1, heldout_scenes=5)


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_demo_data(tmp_path_factory.mktemp("demo") / "a", TINY)


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tiny, tmp_path):
    again = files_of(build_demo_data(tmp_path / "b", TINY))
    first = files_of(tiny)
    assert set(first) == set(again)
    assert [name for name in first if first[name] != again[name]] == []
    other = files_of(build_demo_data(tmp_path / "c", DemoDataSpec(**{**TINY.__dict__, "seed": 4})))
    assert other["coco/annotations/instances_train.json"] != first["coco/annotations/instances_train.json"]


def test_layout_and_counts(tiny):
    assert len(list((tiny / "pretrain/images").glob("*.png"))) == TINY.pretrain_images
    for split, per_class in (("train", TINY.cls_train_per_class), ("val", TINY.cls_val_per_class)):
        folders = sorted(p for p in (tiny / "cls" / split).iterdir())
        assert len(folders) == len(FASHION_CLASSES)
        assert all(len(list(f.glob("*.png"))) == per_class for f in folders)
    splits = (("train", "training", TINY.train_scenes), ("val", "validation", TINY.val_scenes),
              ("heldout", "heldout", TINY.heldout_scenes))
    for split, ade_split, count in splits:
        assert len(list((tiny / "coco" / split).glob("*.png"))) == count
        assert len(list((tiny / "ade/images" / ade_split).glob("*.png"))) == count
        assert len(list((tiny / "ade/annotations" / ade_split).glob("*.png"))) == count
    with Image.open(next((tiny / "cls/train").rglob("*.png"))) as img:
        assert img.size == (TINY.image_size, TINY.image_size) and img.mode == "RGB"


@pytest.mark.parametrize("split", ["train", "val", "heldout"])
def test_coco_json_loads_with_pycocotools_and_is_consistent(tiny, split):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    coco = COCO(str(tiny / "coco/annotations" / f"instances_{split}.json"))
    assert sorted(coco.getCatIds()) == list(range(1, 11))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(FASHION_CLASSES)
    assert len(coco.getImgIds()) == {"train": TINY.train_scenes, "val": TINY.val_scenes,
                                     "heldout": TINY.heldout_scenes}[split]
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) >= len(coco.getImgIds())  # at least one object per scene
    for ann in anns:
        img = coco.loadImgs(ann["image_id"])[0]
        with Image.open(tiny / "coco" / split / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"])
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= img["width"] and y + h <= img["height"]
        mask = coco.annToMask(ann)
        assert mask.shape == (img["height"], img["width"])
        assert mask.sum() == ann["area"] > 0
        ys, xs = np.nonzero(mask)
        assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == ann["bbox"]
        assert mask_utils.area(ann["segmentation"]) == ann["area"]
    # instances of one image never overlap
    for image_id in coco.getImgIds():
        masks = [coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id))]
        assert np.sum(masks, axis=0).max() <= 1


@pytest.mark.parametrize("split", ["train", "val", "heldout"])
def test_label_maps_hold_valid_ids_and_match_instances(tiny, split):
    from pycocotools.coco import COCO

    ade_split = DemoDataBuilder.ADE_SPLITS[split]
    coco = COCO(str(tiny / "coco/annotations" / f"instances_{split}.json"))
    seen = set()
    for img in coco.loadImgs(coco.getImgIds()):
        with Image.open(tiny / "ade/annotations" / ade_split / img["file_name"]) as im:
            assert im.mode == "L"
            label = np.asarray(im)
        seen |= set(np.unique(label).tolist())
        assert label.max() <= len(FASHION_CLASSES)
        expected = np.zeros_like(label)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            expected[coco.annToMask(ann) > 0] = ann["category_id"]
        np.testing.assert_array_equal(label, expected)
        assert (tiny / "ade/images" / ade_split / img["file_name"]).read_bytes() == (
            tiny / "coco" / split / img["file_name"]).read_bytes()
    assert 0 in seen and len(seen) > 2


def test_dataset_info_describes_the_build(tiny):
    info = json.loads((tiny / "dataset_info.json").read_text())
    assert info["spec"]["seed"] == TINY.seed
    assert info["ade"]["classes"] == ["background", *FASHION_CLASSES]


@pytest.mark.parametrize("blanked, unchanged", [("train", "val"), ("val", "train")])
def test_train_and_val_draw_from_disjoint_sources(tiny, tmp_path, blanked, unchanged):
    """Blanking the Fashion-MNIST items of one split leaves the other split's files byte-identical:
    train files come only from train items, val files only from test items."""
    builder = DemoDataBuilder(TINY)
    images, labels = builder.items[blanked]
    builder.items[blanked] = (np.zeros_like(images), labels)
    root = builder.build(tmp_path / "blank")
    ade = {"train": "training", "val": "validation"}
    for sub in (f"coco/{unchanged}", f"cls/{unchanged}", f"ade/annotations/{ade[unchanged]}"):
        assert files_of(root / sub) == files_of(tiny / sub)
    blank = json.loads((root / f"coco/annotations/instances_{blanked}.json").read_text())
    assert blank["annotations"] == []


def blank_test_items_but(builder: DemoDataBuilder, keep: set[int]) -> None:
    images, labels = builder.items["val"]
    blank = np.zeros_like(images)
    blank[sorted(keep)] = images[sorted(keep)]
    builder.items["val"] = (blank, labels)


def test_heldout_scenes_show_no_item_and_no_photo_of_train_or_val(tiny, tmp_path):
    """`drawn` names every test item a split shows (blanking the others leaves its files
    byte-identical), val and held-out draw disjoint items, and the held-out files stay identical
    when every train/val photo and train item is blanked; blanking the held-out photos changes
    only held-out files. The held-out COCO json has the train one's categories."""
    assert not set(HELDOUT_PHOTOS) & set(BACKGROUND_PHOTOS)
    first = DemoDataBuilder(TINY)
    first.build(tmp_path / "first")
    val, heldout = first.drawn["val"], first.drawn["heldout"]
    assert heldout and not heldout & val

    builder = DemoDataBuilder(TINY)
    blank_test_items_but(builder, val)
    root = builder.build(tmp_path / "val_items_only")
    for sub in ("coco/val", "cls/val", "ade/annotations/validation", "coco/annotations/instances_val.json"):
        assert files_of(root / sub) == files_of(tiny / sub), sub

    builder = DemoDataBuilder(TINY)
    blank_test_items_but(builder, val | heldout)
    builder.backgrounds.photos = [np.zeros_like(p) for p in builder.backgrounds.photos]
    builder.items["train"] = (np.zeros_like(builder.items["train"][0]), builder.items["train"][1])
    root = builder.build(tmp_path / "heldout_sources_only")
    held = ("coco/heldout", "ade/images/heldout", "ade/annotations/heldout",
            "coco/annotations/instances_heldout.json")
    for sub in held:
        assert files_of(root / sub) == files_of(tiny / sub), sub
    assert files_of(root / "coco/val") != files_of(tiny / "coco/val")  # the blanking did something

    builder = DemoDataBuilder(TINY)
    builder.heldout_backgrounds.photos = [np.zeros_like(p) for p in builder.heldout_backgrounds.photos]
    root = builder.build(tmp_path / "no_heldout_photos")
    changed = {name for name, data in files_of(root).items() if files_of(tiny)[name] != data}
    assert changed and all(name.startswith(held[:3]) for name in changed), changed

    train = json.loads((tiny / "coco/annotations/instances_train.json").read_text())
    held_json = json.loads((tiny / "coco/annotations/instances_heldout.json").read_text())
    assert held_json["categories"] == train["categories"]
    assert len(held_json["annotations"]) >= TINY.heldout_scenes


def test_compose_keeps_earlier_items_mostly_visible():
    rng = np.random.default_rng(0)
    item = np.full((28, 28), 200, np.uint8)
    scene = compose(np.zeros((40, 40, 3), np.uint8), [(item, 1)] * 6, [24] * 6, rng, min_visible=0.6)
    areas = [(scene.instances == k + 1).sum() for k in range(len(scene.labels))]
    assert len(scene.labels) >= 2
    assert min(areas) >= 0.6 * 24 * 24
    assert set(np.unique(scene.instances)) == set(range(len(scene.labels) + 1))


def test_bad_spec_is_refused_with_the_field_name():
    with pytest.raises(ValueError, match="object_size"):
        DemoDataSpec(object_size=(4, 300))


@pytest.mark.slow
def test_command_line_builds_and_reports(tmp_path):
    out = tmp_path / "cli"
    run = subprocess.run(
        [sys.executable, str(REPO / "tools/make_demo_data.py"), "--output-dir", str(out), "--seed", "3",
         "--scene-size", "64", "--image-size", "32", "--train-scenes", "6", "--val-scenes", "4",
         "--object-size", "16", "32",
         "--pretrain-images", "6", "--cls-train-per-class", "1", "--cls-val-per-class", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert str(out) in run.stdout
    assert (out / "coco/annotations/instances_val.json").is_file()
