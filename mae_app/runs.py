"""Reading runs: a run folder's `run.json` (mae_core.run_record: written by the tools that train or
evaluate, tools/train_det.py, train_seg.py, test_seg.py and eval_cls.py, at the end of a successful
run) completed from the logs its tool left (Detectron2's `eval_results.json` and `metrics.json`;
MMEngine's `*/vis_data/scalars.json`, or a test's `*/<timestamp>.json`, and the per-class IoU table
in its log; tools/eval_cls.py's `eval_cls.json`) and by measuring the catalogue backbone
(parameters, FLOPs, latency).

The record's fields are listed in mae_core/run_record.py; callers may add their own, as the demo
adds its MAE pretraining's settings:
     "mask_ratio": 0.75, "masking": "block", "pretrain_seed": 0,
     "pretrain_dir": "...",             # the MAE pretraining, for its speed and extra parameters
The transfer protocol, where not the default (every label, fine-tuned):
     "label_fraction": 0.1, "subset_seed": 0,  # a labelled subset
     "frozen": true,                    # the backbone fixed (linear / head-only transfer)
A catalogue backbone is measured (mae_core/catalogue.py) at `img_size`; a config's own backbone
(`"config_backbone": true`) comes with the parameter count the tool counted, and no FLOPs or
latency."""

from __future__ import annotations

import itertools
import json
import math
import statistics
import time
from pathlib import Path

from mae_app.flops import flop_count
from mae_core.errors import UserError
from mae_core.run_record import RUN_FILE

CLS_RESULTS = "eval_cls.json"  # tools/eval_cls.py's results, in its --output-dir beside run.json
# (key, column title, digits); AP and mIoU in percent as Detectron2 and MMSeg report them.
DENSE_METRICS = [("box_AP", "box AP", 1), ("mask_AP", "mask AP", 1), ("mIoU", "mIoU", 1)]
COST_METRICS = [("params", "params (M)", 2), ("flops", "GFLOPs", 2), ("train_throughput", "train img/s", 2),
                ("latency", "latency (ms)", 1)]
CLS_METRICS = [("knn_acc", "k-NN acc", 1), ("linear_acc", "linear acc", 1)]
# Of the MAE pretraining a run starts from (`pretrain_dir`), read by `pretraining_metrics`.
PRETRAIN_METRICS = [("pretrain_img_per_s", "pretrain img/s", 0), ("extra_params", "extra params", 0)]


class RunError(UserError, ValueError):
    """A run folder or record that cannot be used; the message names the file and key."""


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{path} is not valid JSON: {exc}") from exc


def json_lines(path: Path) -> list[dict]:
    """A JSON-lines log (Detectron2's metrics.json, MMEngine's scalars.json); bad lines are skipped:
    a run killed mid-write leaves a truncated last line."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def detectron2_metrics(folder: Path) -> dict:
    """Box / mask AP from eval_results.json; seconds per iteration (median) from metrics.json.
    A model that predicted nothing gets AP 0 (Detectron2 writes NaN and no mask entry then)."""
    out = {}
    results = folder / "eval_results.json"
    if results.is_file():
        data = read_json(results)
        box = data.get("bbox", {}).get("AP")
        if box is not None or "bbox" in data:
            if is_number(box):
                out["box_AP"] = box
                if is_number(data.get("segm", {}).get("AP")):
                    out["mask_AP"] = data["segm"]["AP"]
            else:
                out.update(box_AP=0.0, mask_AP=0.0, notes="no predictions: AP counted as 0")
    log = folder / "metrics.json"
    if log.is_file():
        times = [row["time"] for row in json_lines(log) if "time" in row]
        if times:
            out["seconds_per_iter"] = statistics.median(times)
    return out


def mmseg_metrics(folder: Path) -> dict:
    """Of the newest MMEngine run under the work dir (a `<timestamp>` folder): mIoU of its last
    evaluation and the median seconds per training iteration, from a training's
    `vis_data/scalars.json` or a test's (tools/test_seg.py) `<timestamp>.json`; per-class IoU
    from its text log (`mmseg_class_iou`)."""
    runs = sorted(p for p in folder.glob("*/") if (p / "vis_data/scalars.json").is_file()
                  or (p / f"{p.name}.json").is_file())
    if not runs:
        return {}
    newest = runs[-1]
    scalars = newest / "vis_data/scalars.json"
    rows = json_lines(scalars if scalars.is_file() else newest / f"{newest.name}.json")
    out = {}
    evals = [row for row in rows if "mIoU" in row]
    if evals:
        out["mIoU"] = evals[-1]["mIoU"]
        per_class = mmseg_class_iou(newest / f"{newest.name}.log")
        if per_class:
            out["class_IoU"] = per_class
    times = [row["time"] for row in rows if "time" in row and "mIoU" not in row]
    if times:
        out["seconds_per_iter"] = statistics.median(times)
    return out


def mmseg_class_iou(log: Path) -> dict[str, float | None]:
    """Per-class IoU (in %) of the last evaluation in an MMEngine text log. MMSegmentation's
    IoUMetric returns only the means; the per-class values it prints, as a table after "per class
    results:". A class with no pixel in the labels or the predictions (nan) gets None."""
    if not log.is_file():
        return {}
    lines = log.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.endswith("per class results:")]
    if not starts:
        return {}
    table: list[str] = []
    for line in lines[starts[-1] + 1:]:
        if line.startswith(("|", "+")):
            table.append(line)
        elif table:
            break
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table if line.startswith("|")]
    if len(table) < 4 or not table[-1].startswith("+") or not {"Class", "IoU"} <= set(rows[0]):
        raise RunError(f"{log}: the table after its last 'per class results:' is not a whole table with "
                       "Class and IoU columns (a log cut short?)")
    name, iou = rows[0].index("Class"), rows[0].index("IoU")
    out = {}
    for row in rows[1:]:
        try:
            value = float(row[iou])
        except (ValueError, IndexError) as exc:
            raise RunError(f"{log}: the per-class IoU of {row[name]!r} is not a number: {row}") from exc
        out[row[name]] = None if math.isnan(value) else value
    return out


def classification_metrics(folder: Path) -> dict:
    path = folder / CLS_RESULTS
    if not path.is_file():
        return {}
    data = read_json(path)
    return {k: 100 * data[k] for k, _, _ in CLS_METRICS if k in data}


def pretraining_metrics(folder: Path) -> dict:
    """Of a tools/pretrain.py output folder: images per second of training and the parameters
    the masking strategy added (its loss head; mae_core.mae.extra_parameters on the model
    its checkpoint's arch record builds). The speed comes from the run's own TensorBoard loss
    scalars: steps over wall time summed over consecutive log lines of one epoch, so epoch-end
    monitors and checkpoint saves are left out and the data pipeline (masking noise included) is
    counted in. Too few log lines within an epoch (log_every >= steps per epoch): no speed."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mae_core.checkpoint import load_checkpoint_file
    from mae_core.engine import LAST_CHECKPOINT, mae_from_record
    from mae_core.mae import extra_parameters

    path = folder / LAST_CHECKPOINT
    checkpoint = load_checkpoint_file(path)
    for key in ("arch", "config", "rng"):
        if key not in checkpoint:
            raise RunError(f"{path}: missing {key!r} (not a checkpoint of tools/pretrain.py)")
    out = {"extra_params": extra_parameters(mae_from_record(checkpoint["arch"]))}
    config = checkpoint["config"]
    # images per optimizer step; one RNG state is saved per process
    per_step = config.get("effective_batch") or config["batch_size"] * len(checkpoint["rng"])
    events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    if "train/loss" not in tags:
        raise RunError(f"{folder / 'tensorboard'}: no train/loss scalars")
    ends = [e.step for e in events.Scalars("epoch/train_loss")] if "epoch/train_loss" in tags else []
    lines = sorted(events.Scalars("train/loss"), key=lambda e: e.step)
    steps = seconds = 0.0
    for a, b in itertools.pairwise(lines):
        if not any(a.step <= end < b.step for end in ends):
            steps += b.step - a.step
            seconds += b.wall_time - a.wall_time
    if steps and seconds > 0:
        out["pretrain_img_per_s"] = per_step * steps / seconds
    return out


def measure_backbone(backbone: str, input_size: int, repeats: int = 5, **kwargs) -> dict:
    """Parameters (millions), GFLOPs (mae_app.flops: 2 per multiply-accumulate, attention
    included; one image) and median latency (ms, one image, one thread as configured) of the
    catalogue backbone + pyramid on `input_size` square images; `kwargs` go to `build_pyramid`
    (a ViT's `img_size` defaults to `input_size`)."""
    import torch

    from mae_core.catalogue import build_pyramid, get_entry

    if get_entry(backbone).kind == "vit":
        if get_entry(backbone).needs_checkpoint:
            raise RunError(f"measure {backbone} as vit_random: the counts do not depend on the weights")
        kwargs.setdefault("img_size", input_size)
    model = build_pyramid(backbone, **kwargs).eval()
    image = torch.randn(1, 3, input_size, input_size)
    with torch.no_grad():
        gflops = flop_count(model, (image,))[0] / 1e9
        model(image)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(image)
            times.append(time.perf_counter() - start)
    return {"params": sum(p.numel() for p in model.parameters()) / 1e6, "flops": gflops,
            "latency": 1000 * statistics.median(times)}


def load_run(path: Path, measure: bool = True, cache: dict | None = None) -> dict:
    """The run record of a folder (its run.json) or of a JSON file, completed from the folder's
    logs and by measuring the backbone."""
    from mae_core.catalogue import CatalogueError, get_entry

    path = Path(path)
    record_file = path / RUN_FILE if path.is_dir() else path
    if not record_file.is_file():
        raise RunError(f"{record_file} does not exist: a run folder needs the {RUN_FILE} that the tools "
                       "write at the end of a successful run (train_det.py, train_seg.py, test_seg.py, "
                       "eval_cls.py)")
    run = read_json(record_file)
    for key in ("task", "backbone"):
        if key not in run:
            raise RunError(f"{record_file}: missing key {key!r} "
                           "(task is det, seg or cls; backbone a catalogue name)")
    if run["task"] not in ("det", "seg", "cls"):
        raise RunError(f"{record_file}: task must be 'det', 'seg' or 'cls', got {run['task']!r}")
    try:
        kind = None if run.get("config_backbone") else get_entry(run["backbone"]).kind
    except CatalogueError as exc:
        raise RunError(f"{record_file}: {exc}") from exc
    folder = Path(run.get("output_dir") or record_file.parent)
    reader = {"det": detectron2_metrics, "seg": mmseg_metrics, "cls": classification_metrics}[run["task"]]
    found = reader(folder)
    run = {**found, **run}
    if run.get("pretrain_dir"):
        run = {**pretraining_metrics(Path(run["pretrain_dir"])), **run}
    if "train_throughput" not in run and "seconds_per_iter" in run and run.get("batch_size"):
        run["train_throughput"] = run["batch_size"] / run["seconds_per_iter"]
    measured = all(k in run for k in ("params", "flops", "latency"))
    if measure and kind and run["task"] != "cls" and not measured:
        if "img_size" not in run:
            raise RunError(f"{record_file}: needs 'img_size' to measure params, FLOPs and latency")
        # ViT entries differ in weights only: one measurement serves them all.
        name = "vit_random" if kind == "vit" else run["backbone"]
        key = json.dumps([name, run["img_size"], run.get("backbone_kwargs", {})], sort_keys=True)
        cache = {} if cache is None else cache
        if key not in cache:
            cache[key] = measure_backbone(name, run["img_size"], **run.get("backbone_kwargs", {}))
        run = {**cache[key], **run}
    run["source"] = str(record_file)
    return run
