"""mae_app.runs / report / jobs and tools/compare.py: collects Detectron2 / MMEngine / eval_cls run
folders, measures backbones and writes a report whose every column is filled, with seeds and spread."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mae_app.jobs import execute_plan
from mae_app.report import aggregate, verdict
from mae_app.runs import RunError, load_run

REPO = Path(__file__).resolve().parents[1]

VIT = {"arch": "vit_toy_patch4", "patch_size": 8}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from mae_app.demo_data import DemoDataSpec, build_demo_data

    spec = DemoDataSpec(scene_size=64, image_size=32, train_scenes=1, val_scenes=6, object_size=(16, 32),
                        pretrain_images=1, cls_train_per_class=1, cls_val_per_class=1)
    return build_demo_data(tmp_path_factory.mktemp("scenes"), spec)


def coco_eval_of_jittered_truth(scenes: Path, jitter: float, seed: int) -> dict:
    """Real COCO evaluation (pycocotools) of predictions made by moving the ground-truth boxes and
    masks of the val scenes by up to `jitter` of their size: AP as Detectron2 reports it (in %)."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(scenes / "coco/annotations/instances_val.json"))
        preds = []
        for ann in gt.loadAnns(gt.getAnnIds()):
            x, y, w, h = ann["bbox"]
            dx, dy = (int(round(v)) for v in rng.uniform(-jitter, jitter, 2) * (w, h))
            mask = np.roll(gt.annToMask(ann), (dy, dx), axis=(0, 1))
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode()
            preds.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                          "bbox": [x + dx, y + dy, w, h], "segmentation": rle,
                          "score": float(rng.uniform(0.5, 1))})
        dt = gt.loadRes(preds)
        results = {}
        for iou_type, key in (("bbox", "bbox"), ("segm", "segm")):
            ev = COCOeval(gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            results[key] = {"AP": 100 * float(ev.stats[0]), "AP50": 100 * float(ev.stats[1])}
    return results


def miou_of_noisy_maps(scenes: Path, flip: float, seed: int, num_classes: int = 11) -> float:
    """Mean IoU (in %) of the val label maps against copies with a fraction `flip` of pixels relabelled."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for path in sorted((scenes / "ade/annotations/validation").glob("*.png")):
        truth = np.asarray(Image.open(path)).astype(int)
        pred = truth.copy()
        noisy = rng.random(truth.shape) < flip
        pred[noisy] = rng.integers(0, num_classes, noisy.sum())
        for c in range(num_classes):
            inter[c] += np.sum((pred == c) & (truth == c))
            union[c] += np.sum((pred == c) | (truth == c))
    present = union > 0
    return float(100 * np.mean(inter[present] / union[present]))


def write_det_run(folder: Path, backbone: str, seed: int, results: dict, kwargs: dict) -> None:
    """A Detectron2 output folder as tools/train_det.py leaves it, plus the run record."""
    folder.mkdir(parents=True)
    (folder / "eval_results.json").write_text(json.dumps({"iteration": 20, **results}))
    lines = "".join(json.dumps({"iteration": i, "time": 0.2 + 0.01 * i}) + "\n" for i in range(5))
    (folder / "metrics.json").write_text(lines + '{"iteration": 5, "ti')  # a run killed mid-line
    (folder / "run.json").write_text(json.dumps({"task": "det", "backbone": backbone, "seed": seed,
                                                 "img_size": 64, "batch_size": 2, "backbone_kwargs": kwargs}))


def write_seg_run(folder: Path, backbone: str, seed: int, miou: float, kwargs: dict) -> None:
    """An MMEngine work dir as tools/train_seg.py leaves it, plus the run record."""
    logs = folder / "20260101_000000/vis_data"
    logs.mkdir(parents=True)
    rows = [{"iter": i, "time": 0.1, "loss": 1.0 / (i + 1), "step": i} for i in range(1, 4)]
    rows.append({"aAcc": 90.0, "mIoU": miou, "mAcc": 80.0, "step": 3})
    (logs / "scalars.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "run.json").write_text(json.dumps({"task": "seg", "backbone": backbone, "seed": seed,
                                                 "img_size": 64, "batch_size": 4, "backbone_kwargs": kwargs}))


@pytest.mark.slow
def test_report_of_two_backbones_and_two_seeds_has_every_column_filled(scenes, tmp_path):
    folders = []
    for backbone, quality in (("vit_mae", 0.05), ("vit_random", 0.4)):
        for seed in (0, 1):
            det = tmp_path / f"det_{backbone}_{seed}"
            write_det_run(det, backbone, seed, coco_eval_of_jittered_truth(scenes, quality, seed), VIT)
            seg = tmp_path / f"seg_{backbone}_{seed}"
            write_seg_run(seg, backbone, seed, miou_of_noisy_maps(scenes, quality, seed), VIT)
            folders += [det, seg]
    for ratio, acc in ((0.5, 40.0), (0.75, 45.0)):
        cls = tmp_path / f"cls_{ratio}"
        cls.mkdir()
        (cls / "eval_cls.json").write_text(json.dumps({"knn_acc": acc / 100, "linear_acc": (acc + 5) / 100}))
        (cls / "run.json").write_text(json.dumps({"task": "cls", "backbone": "vit_mae", "mask_ratio": ratio}))
        folders.append(cls)

    out = tmp_path / "report"
    run = subprocess.run([sys.executable, str(REPO / "tools/compare.py"), "--runs", *map(str, folders),
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert str(out / "report.md") in run.stdout
    sections = ("## Detection (Mask R-CNN)", "## Semantic segmentation (UperNet)", "## Classification probes")
    for section in sections:
        table = report.split(section)[1].split("\n\n")[2].splitlines()
        header, rows = table[0], table[2:]
        assert len(rows) >= 2
        for row in rows:
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert len(cells) == header.count("|") - 1
            assert all(c and c != "—" for c in cells), row
            if not section.startswith("## Classification"):
                metrics = 2 if "Detection" in section else 1
                assert cells[1] == "0, 1" and all("±" in c for c in cells[2 : 2 + metrics]), row
    for png in ("det.png", "seg.png", "mask_ratio_sweep.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the better predictions are judged better, beyond the seeds' spread
    assert "**box AP**: vit_mae − vit_random = +" in report and "beyond the seeds' spread" in report
    runs = json.loads((out / "runs.json").read_text())
    det = next(r for r in runs if r["task"] == "det")
    assert det["train_throughput"] == pytest.approx(2 / 0.22)  # batch 2 / median time, truncated line skipped
    assert det["params"] > 0.1 and det["flops"] > 0.01 and det["latency"] > 0
    det_row = next(line for line in report.splitlines() if line.startswith("| vit_mae | 0, 1 |"))
    assert "±" not in det_row.split("|")[5]  # params: one measurement, no made-up spread


def test_verdict_needs_two_seeds_and_a_margin_beyond_the_spread():
    table = aggregate([
        {"backbone": "a", "seed": 0, "mIoU": 50.0}, {"backbone": "a", "seed": 1, "mIoU": 52.0},
        {"backbone": "b", "seed": 0, "mIoU": 49.0}, {"backbone": "b", "seed": 1, "mIoU": 51.0},
    ])
    assert "within the seeds' spread" in verdict(table, "a", "b", "mIoU")
    assert verdict(table, "b", "a", "mIoU").endswith(": no")
    single = aggregate([{"backbone": "a", "mIoU": 60.0}, {"backbone": "b", "mIoU": 10.0}])
    assert "single seed" in verdict(single, "a", "b", "mIoU")


def test_bad_run_records_name_the_file_and_key(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"backbone": "vit_mae"}))
    with pytest.raises(RunError, match=r"run.json: missing key 'task'"):
        load_run(tmp_path)
    with pytest.raises(RunError, match="does not exist"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "run.json").write_text(json.dumps({"backbone": "vit_mae", "task": "det"}))
    with pytest.raises(RunError, match="needs 'img_size'"):
        load_run(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"backbone": "vit_nope", "task": "seg"}))
    with pytest.raises(RunError, match="run.json: unknown backbone 'vit_nope'"):
        load_run(tmp_path)


def test_plan_runs_unfinished_entries_in_parallel_and_stops_on_a_failure(tmp_path):
    def entry(name, code):
        folder = tmp_path / name
        script = (f"import json, pathlib; pathlib.Path({str(folder)!r}, 'eval_cls.json').write_text("
                  f"json.dumps({{'knn_acc': 0.5}})); print('ran {name}'); raise SystemExit({code})")
        return {"run": {"task": "cls", "backbone": "vit_random", "seed": 0}, "output_dir": str(folder),
                "command": [sys.executable, "-c", script]}

    plan = [entry("a", 0), entry("b", 0), entry("c", 0)]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / ".done").touch()  # finished before: not run again
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    folders = execute_plan(plan_file, jobs=2)
    assert folders == [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    assert (tmp_path / "a" / "stdout.txt").read_text() == "ran a\n"
    assert not (tmp_path / "c" / "stdout.txt").exists()
    assert load_run(tmp_path / "a")["knn_acc"] == 50.0

    plan_file.write_text(json.dumps([entry("d", 3)]))
    with pytest.raises(RunError, match="exit code 3.*d/stdout.txt"):
        execute_plan(plan_file)
    assert not (tmp_path / "d" / ".done").exists()
