"""mae_app.runs / report / jobs and tools/compare.py: collects Detectron2 / MMEngine / eval_cls run
folders, measures backbones and writes a report whose every column is filled, with seeds and spread."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import helpers_tools
import numpy as np
import pytest

from mae_app.demo_data import FASHION_CLASSES
from mae_app.jobs import execute_plan
from mae_app.report import VERDICT_RULE, aggregate, cell, separation
from mae_app.runs import RunError, load_run, mmseg_metrics

REPO = Path(__file__).resolve().parents[1]
SEG_TINY = "configs/segmentation/upernet_vit_tiny_cpu.py"

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


def noisy_maps(scenes: Path, flip: float, seed: int, num_classes: int = 11) -> list[tuple]:
    """(prediction, truth) of every val label map, the prediction a copy with a fraction `flip` of its
    pixels relabelled at random."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pairs = []
    for path in sorted((scenes / "ade/annotations/validation").glob("*.png")):
        truth = np.asarray(Image.open(path)).astype(int)
        pred = truth.copy()
        noisy = rng.random(truth.shape) < flip
        pred[noisy] = rng.integers(0, num_classes, noisy.sum())
        pairs.append((pred, truth))
    return pairs


def class_iou(pairs, num_classes: int = 11) -> np.ndarray:
    """IoU (in %) per class over all pairs, counted here; nan for a class in neither map."""
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for pred, truth in pairs:
        for c in range(num_classes):
            inter[c] += np.sum((pred == c) & (truth == c))
            union[c] += np.sum((pred == c) | (truth == c))
    with np.errstate(invalid="ignore"):
        return 100 * inter / union


def miou_of_noisy_maps(scenes: Path, flip: float, seed: int) -> float:
    """Mean IoU (in %) of the val label maps against copies with a fraction `flip` of pixels relabelled."""
    return float(np.nanmean(class_iou(noisy_maps(scenes, flip, seed))))


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


def write_mmseg_evaluation(folder: Path, pairs, name: str, test: bool = False) -> dict:
    """MMSegmentation's IoUMetric on `pairs`, logging through an MMEngine logger into the work dir
    as a run does (`<timestamp>/<timestamp>.log`, its per-class table in it); the returned means in
    `vis_data/scalars.json` as training writes them, or with `test` in `<timestamp>.json` as
    tools/test_seg.py does. Returns them."""
    import torch
    from mmengine.logging import MMLogger
    from mmengine.structures import PixelData
    from mmseg.evaluation import IoUMetric
    from mmseg.structures import SegDataSample

    run = folder / "20260101_000000"
    (run / "vis_data").mkdir(parents=True)
    logger = MMLogger.get_instance(name, log_file=str(run / "20260101_000000.log"))
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": ["background", *FASHION_CLASSES]}
    samples = [SegDataSample(pred_sem_seg=PixelData(data=torch.from_numpy(pred)[None]),
                             gt_sem_seg=PixelData(data=torch.from_numpy(truth)[None])).to_dict()
               for pred, truth in pairs]
    metric.process({}, samples)
    metrics = {key: float(value) for key, value in metric.compute_metrics(metric.results).items()}
    for handler in logger.handlers:
        handler.flush()
    if test:
        (run / "20260101_000000.json").write_text(json.dumps({**metrics, "time": 0.05}))
    else:
        (run / "vis_data/scalars.json").write_text(json.dumps({**metrics, "step": 3}) + "\n")
    return metrics


def test_per_class_iou_is_read_from_the_table_mmseg_logs(scenes, tmp_path):
    """The per-class IoU of a run is the table IoUMetric logged for it (it returns only the mean):
    it matches an independent count on the same maps, nan (a class in neither map) becoming None;
    a table cut short stops with the log's name."""
    # label 9 ("bag") taken out of every map, so one class is in neither
    pairs = [(np.where(p == 9, 0, p), np.where(t == 9, 0, t)) for p, t in noisy_maps(scenes, 0.3, seed=0)]
    metrics = write_mmseg_evaluation(tmp_path / "seg", pairs, "per_class")
    found = mmseg_metrics(tmp_path / "seg")
    assert list(found["class_IoU"]) == ["background", *FASHION_CLASSES]
    for value, (name, got) in zip(class_iou(pairs), found["class_IoU"].items(), strict=True):
        assert got is None if np.isnan(value) else got == pytest.approx(value, abs=0.006), name
    assert found["class_IoU"]["bag"] is None and 0 < found["class_IoU"]["background"] < 100
    assert found["mIoU"] == pytest.approx(metrics["mIoU"])

    log = tmp_path / "seg/20260101_000000/20260101_000000.log"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-3]) + "\n")  # killed while writing the table
    with pytest.raises(RunError, match=r"000000\.log: the table after its last 'per class results:'"):
        mmseg_metrics(tmp_path / "seg")


def test_report_puts_heldout_beside_val_and_judges_every_metric_by_the_rule(scenes, tmp_path):
    """Three seeds of MAE and random init, each trained run also evaluated on held-out scenes (a
    record with "split": "heldout", segmentation as tools/test_seg.py logs): the tables hold val and
    held-out numbers in their own columns, the per-class IoU of every row and data, and one verdict
    table whose every cell is the rule applied to the runs' values."""
    from mae_app.report import VERDICT_CELL, cell, verdict_cell, write_report

    measured = {"params": 0.8, "flops": 2.2, "latency": 15.0, "img_size": 64, "batch_size": 2}
    quality = {("vit_mae", "val"): 0.05, ("vit_random", "val"): 0.4,
               ("vit_mae", "heldout"): 0.3, ("vit_random", "heldout"): 0.35}
    runs = []
    for (backbone, split), q in quality.items():
        for seed in (0, 1, 2):
            record = {"backbone": backbone, "seed": seed, **measured,
                      **({"split": split} if split == "heldout" else {})}
            det = tmp_path / f"det_{backbone}_{split}_{seed}"
            write_det_run(det, backbone, seed, coco_eval_of_jittered_truth(scenes, q, seed), VIT)
            (det / "run.json").write_text(json.dumps({"task": "det", **record}))
            seg = tmp_path / f"seg_{backbone}_{split}_{seed}"
            write_mmseg_evaluation(seg, noisy_maps(scenes, q, seed), seg.name, test=split == "heldout")
            (seg / "run.json").write_text(json.dumps({"task": "seg", **record}))
            runs += [load_run(det, measure=False), load_run(seg, measure=False)]
    for backbone, knn in (("vit_mae", 40.0), ("vit_random", 39.5)):
        for seed in (0, 1, 2):
            folder = tmp_path / f"cls_{backbone}_{seed}"
            folder.mkdir()
            (folder / "eval_cls.json").write_text(json.dumps({"knn_acc": (knn + seed) / 100}))
            (folder / "run.json").write_text(json.dumps({"task": "cls", "backbone": backbone, "seed": seed}))
            runs.append(load_run(folder))

    report = write_report(runs, tmp_path / "report").read_text()

    def values(task, backbone, split, metric):
        return [r[metric] for r in runs if r["task"] == task and r["backbone"] == backbone
                and r.get("split", "val") == split]

    det = report.split("## Detection (Mask R-CNN)")[1].split("\n\n")[2].splitlines()
    assert det[0] == ("| backbone | seeds | box AP | mask AP | box AP held-out | mask AP held-out | "
                      "params (M) | GFLOPs | train img/s | latency (ms) |")
    mae = [c.strip() for c in det[2].strip("|").split("|")]
    assert mae[:6] == ["vit_mae", "0, 1, 2", cell(values("det", "vit_mae", "val", "box_AP"), 1),
                       cell(values("det", "vit_mae", "val", "mask_AP"), 1),
                       cell(values("det", "vit_mae", "heldout", "box_AP"), 1),
                       cell(values("det", "vit_mae", "heldout", "mask_AP"), 1)]
    assert mae[6] == "0.80"  # the backbone's cost once, from the trained runs
    seg = report.split("## Semantic segmentation (UperNet)")[1]
    assert "| backbone | seeds | mIoU | mIoU held-out |" in seg
    per_class = seg.split("### Per-class IoU")[1].split("\n\n")[2].splitlines()
    assert per_class[0] == "| backbone, data | background | " + " | ".join(FASHION_CLASSES) + " |"
    assert [line.split(" | ")[0] for line in per_class[2:]] == [
        "| vit_mae, val", "| vit_random, val", "| vit_mae, held-out", "| vit_random, held-out"]
    background = [r["class_IoU"]["background"] for r in runs
                  if r["task"] == "seg" and r["backbone"] == "vit_random" and r.get("split") == "heldout"]
    assert per_class[5].split(" | ")[1] == cell(background, 1)

    section = report.split("## MAE vs random initialisation")[1].split("\n## ")[0]
    assert VERDICT_CELL in section and VERDICT_RULE in section
    table = section.split("\n\n")[2].splitlines()
    assert table[0] == ("| comparison | box AP | mask AP | mIoU | box AP held-out | mask AP held-out | "
                        "mIoU held-out | k-NN acc |")
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    compared = (("det", "box_AP", "val"), ("det", "mask_AP", "val"), ("seg", "mIoU", "val"),
                ("det", "box_AP", "heldout"), ("det", "mask_AP", "heldout"), ("seg", "mIoU", "heldout"),
                ("cls", "knn_acc", "val"))
    expected = []
    for task, key, split in compared:
        result = separation(values(task, "vit_mae", split, key), values(task, "vit_random", split, key))
        expected.append(verdict_cell(result, 1))
    assert cells == ["vit_mae vs vit_random", *expected]
    assert cells[1].endswith("**ahead**") and cells[-1].endswith("does not separate")
    assert "| det | vit_mae | 0 | heldout |" in report  # the runs' table names the data


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
    run = helpers_tools.run_tool("compare.py", "--runs", *folders, "--output-dir", out)
    assert run.returncode == 0, run.stdout[-3000:]
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
    # the better predictions are judged better by the rule (two seeds: a spread, a verdict)
    verdicts = report.split("## MAE vs random initialisation")[1].split("\n\n")[2].splitlines()
    box = verdicts[2].strip("|").split("|")[1].strip()
    assert verdicts[2].startswith("| vit_mae vs vit_random | +") and box.endswith("**ahead**"), verdicts
    runs = json.loads((out / "runs.json").read_text())
    det = next(r for r in runs if r["task"] == "det")
    assert det["train_throughput"] == pytest.approx(2 / 0.22)  # batch 2 / median time, truncated line skipped
    assert det["params"] > 0.1 and det["flops"] > 0.01 and det["latency"] > 0
    det_row = next(line for line in report.splitlines() if line.startswith("| vit_mae | 0, 1 |"))
    assert "±" not in det_row.split("|")[5]  # params: one measurement, no made-up spread


def test_verdict_rule_is_the_difference_of_means_against_twice_its_standard_error():
    """Two seeds a side, of the size a two-seed demo run gives (inputs, not a measurement):
    box AP separates, mIoU does not; more runs, no spread or a single run change the verdict as the
    rule says."""
    box = separation([5.29, 3.15], [0.52, 0.42])  # MAE init vs random init: 4.22 ± 1.51 vs 0.47 ± 0.07
    # difference 3.75; standard error sqrt(1.513²/2 + 0.0707²/2) = 1.0712
    assert box.difference == pytest.approx(3.75) and box.standard_error == pytest.approx(1.0712, abs=1e-4)
    assert box.judgement == "ahead"
    assert separation([0.52, 0.42], [5.29, 3.15]).judgement == "behind"
    miou = separation([10.59, 11.14], [9.38, 10.64])  # 10.87 ± 0.39 vs 10.01 ± 0.89
    # +0.855 against 2 SE = 2 sqrt(0.389²/2 + 0.891²/2) = 1.375
    assert miou.standard_error == pytest.approx(0.6874, abs=1e-4) and miou.judgement == "does not separate"
    # either side of the margin: SE = sqrt(2 / 2) = 1 (sample std sqrt(2) for n = 2), so 2 SE = 2
    assert separation([2.0, 4.0], [1.1, 1.1]).judgement == "does not separate"  # difference 1.9
    assert separation([2.0, 4.0], [0.9, 0.9]).judgement == "ahead"  # 2.1
    assert separation([2.0, 4.0, 3.0], [1.1, 1.1]).judgement == "ahead"  # 1.9 > 2 sqrt(1/3) = 1.15
    assert "no spread" in separation([17.3, 17.3], [16.5, 16.5]).judgement
    assert separation([16.5, 16.5], [16.5, 16.5]).judgement == "no difference"
    assert "single run" in separation([60.0], [10.0, 11.0]).judgement
    assert "twice the standard error" in VERDICT_RULE and "√(s_A²/n_A + s_B²/n_B)" in VERDICT_RULE
    table = aggregate([{"backbone": "a", "seed": s, "mIoU": v} for s, v in enumerate((50.0, 52.0))])
    assert table["a"]["values"]["mIoU"] == [50.0, 52.0] and table["a"]["seeds"] == {0, 1}


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
    def entry(name, code, record=None):
        """A command that leaves results and a run record as tools/eval_cls.py does."""
        folder = tmp_path / name
        record = record or {"task": "cls", "backbone": "vit_random", "seed": 0}
        script = (f"import json, pathlib; d = pathlib.Path({str(folder)!r}); "
                  f"(d / 'eval_cls.json').write_text(json.dumps({{'knn_acc': 0.5}})); "
                  f"(d / 'run.json').write_text(json.dumps({record!r})); "
                  f"print('ran {name}'); raise SystemExit({code})")
        return {"run": {"task": "cls", "backbone": "vit_random", "seed": 0}, "adds": {"pretrain_seed": 7},
                "output_dir": str(folder), "command": [sys.executable, "-c", script]}

    plan = [entry("a", 0), entry("b", 0), entry("c", 0)]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / ".done").touch()  # finished before: not run again
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    folders = execute_plan(plan_file, jobs=2)
    assert folders == [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    assert (tmp_path / "a" / "stdout.txt").read_text() == "ran a\n"
    assert not (tmp_path / "c" / "stdout.txt").exists()
    run = load_run(tmp_path / "a")
    assert run["knn_acc"] == 50.0 and run["pretrain_seed"] == 7  # the tool's record, with the plan's adds

    plan_file.write_text(json.dumps([entry("e", 0, {"task": "cls", "backbone": "vit_mae", "seed": 0})]))
    with pytest.raises(RunError, match=r"e/run.json: the tool ran something other .*'vit_mae', planned"):
        execute_plan(plan_file)
    subset = entry("f", 0)
    subset["run"]["label_fraction"] = 0.1  # the plan's protocol, which the tool did not record
    plan_file.write_text(json.dumps([subset]))
    with pytest.raises(RunError, match=r"f/run.json: .*label_fraction None, planned 0.1"):
        execute_plan(plan_file)
    plan_file.write_text(json.dumps([entry("d", 3)]))
    with pytest.raises(RunError, match="exit code 3.*d/stdout.txt"):
        execute_plan(plan_file)
    assert not (tmp_path / "d" / ".done").exists()


def run_tool(name: str, *args) -> str:
    proc = helpers_tools.run_tool(name, *args)
    assert proc.returncode == 0, f"{name} {args}:\n{proc.stdout[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_compare_reads_the_folders_that_the_tools_made(tmp_path):
    """The issue's done-when: two seeds each of detection and segmentation, trained with the tools
    directly on a small custom dataset (tiny CPU configs, two iterations), and a segmentation test
    on another data set; `compare.py --runs` makes one report of both tasks with seeds "0, 1", the
    other data's mIoU in its own column, apart from val."""
    from helpers_coco import make_coco
    from helpers_seg import make_shapes_dataset, shapes_label, write_sample

    train_json, images = make_coco(tmp_path / "coco", "train", 4)
    val_json, _ = make_coco(tmp_path / "coco", "val", 2, seed=1)
    ade = make_shapes_dataset(tmp_path / "ade")
    rng = np.random.default_rng(5)
    for i in range(2):  # another test set, in the same layout
        write_sample(ade, "test", f"test_{i}", shapes_label((72, 96), rng), seed=10 + i)
    det_data = [f"dataloader.train.dataset.json_file={train_json}",
                f"dataloader.train.dataset.image_root={images}",
                f"dataloader.test.dataset.json_file={val_json}",
                f"dataloader.test.dataset.image_root={images}"]
    seg_data = [f"{loader}_dataloader.dataset.data_root={ade}" for loader in ("train", "val", "test")]
    det_config, seg_config = "configs/detection/mask_rcnn_vit_tiny_cpu.py", SEG_TINY
    folders = []
    for seed in (0, 1):
        det = tmp_path / "output/det" / f"s{seed}"
        run_tool("train_det.py", "--config-file", det_config, *det_data, "train.max_iter=2",
                 "train.eval_period=2", "train.log_period=1", f"train.seed={seed}", f"train.output_dir={det}")
        seg = tmp_path / "output/seg" / f"s{seed}"
        run_tool("train_seg.py", seg_config, "--work-dir", seg, "--cfg-options", *seg_data,
                 "train_cfg.max_iters=2", "train_cfg.val_interval=2", "default_hooks.checkpoint.interval=2",
                 "default_hooks.logger.interval=1", f"randomness.seed={seed}")
        folders += [det, seg]
    other = tmp_path / "output/seg_test/s0"
    run_tool("test_seg.py", seg_config, tmp_path / "output/seg/s0/iter_2.pth", "--work-dir", other,
             "--cfg-options", *seg_data, "test_dataloader.dataset.data_prefix.img_path=images/test",
             "test_dataloader.dataset.data_prefix.seg_map_path=annotations/test")
    records = {f: json.loads((f / "run.json").read_text()) for f in [*folders, other]}
    assert records[other]["split"] == "test"
    assert records[other]["trained_in"] == str(tmp_path / "output/seg/s0")
    assert records[folders[0]]["eval_data"] == str(val_json) and records[folders[1]]["split"] == "val"

    report_dir = tmp_path / "report"
    out = run_tool("compare.py", "--runs", *folders, other, "--output-dir", report_dir)
    report = (report_dir / "report.md").read_text()
    assert str(report_dir / "report.md") in out
    det_rows = report.split("## Detection (Mask R-CNN)")[1].split("\n\n")[2].splitlines()
    seg_rows = report.split("## Semantic segmentation (UperNet)")[1].split("\n\n")[2].splitlines()
    assert seg_rows[0].startswith("| backbone | seeds | mIoU | mIoU held-out |")
    for rows, backbone in ((det_rows, "ViTDetBackbone("), (seg_rows, "MAEViT(vit_toy_patch4")):
        [row] = rows[2:]  # one setting: both seeds in one row
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0].startswith(backbone) and cells[0].endswith("(random init)"), row
        assert cells[1] == "0, 1", row
    runs = json.loads((report_dir / "runs.json").read_text())
    miou = [r["mIoU"] for r in runs if r["task"] == "seg" and r.get("split", "val") == "val"]
    seg_cells = [c.strip() for c in seg_rows[2].strip("|").split("|")]
    assert seg_cells[2] == cell(miou, 1)  # val: the two training runs only
    held = next(r for r in runs if r.get("split") == "test")
    assert seg_cells[3] == f"{held['mIoU']:.1f}"  # the other data, in a column of its own
    assert "| seg | MAEViT" in report and "| test |" in report  # the runs' table names the data


def test_a_configs_own_backbone_is_judged_against_itself_at_random_init(tmp_path):
    """Config backbones (not catalogue names) make one row per initial checkpoint; the rule compares
    the one from a checkpoint with the same backbone at random initialisation; an evaluation on
    val of a compared training run is not counted as another seed."""
    from mae_app.report import write_report

    runs = []
    for checkpoint, mious in (("out/mae/last.pth", (30.0, 31.0, 32.0)), (None, (10.0, 11.0, 12.0))):
        for seed, miou in enumerate(mious):
            runs.append({"task": "seg", "backbone": "MAEViT(vit_toy_patch4)", "config_backbone": True,
                         "checkpoint": checkpoint, "seed": seed, "mIoU": miou, "params": 0.5,
                         "source": f"{tmp_path}/{checkpoint is None}{seed}/run.json"})
    runs.append({**runs[0], "trained_in": f"{tmp_path}/False0", "source": f"{tmp_path}/eval/run.json"})
    report = write_report(runs, tmp_path / "report").read_text()
    rows = report.split("## Semantic segmentation (UperNet)")[1].split("\n\n")[2].splitlines()[2:]
    assert [row.split(" | ")[:2] for row in rows] == [["| MAEViT(vit_toy_patch4) (from last.pth)", "0, 1, 2"],
                                                      ["| MAEViT(vit_toy_patch4) (random init)", "0, 1, 2"]]
    assert "| 31.0 ± 1.0 |" in rows[0]  # the evaluation repeating seed 0's run is not a fourth value
    verdicts = report.split("## MAE vs random initialisation")[1].split("\n\n")[2].splitlines()
    assert verdicts[2].startswith("| MAEViT(vit_toy_patch4) (from last.pth) vs MAEViT(vit_toy_patch4) "
                                  "(random init) | +20.0") and verdicts[2].endswith("**ahead** |")
