#!/usr/bin/env python
"""Compares backbones on detection and segmentation (and classification probes): collects the
runs, measures each backbone's parameters, FLOPs (fvcore) and latency, and writes `report.md`
with PNG plots, every number given as mean ± spread over the seeds that were run.

    # collect finished runs (each folder holds a run.json, see below)
    python tools/compare.py --runs out/det/vit_mae_s0 out/det/vit_random_s0 ... --out out/report
    # run what a plan lists (skipping finished runs), then collect
    python tools/compare.py --plan out/plan.json --out out/report

A run is described by `run.json` in its folder:
    {"task": "det" | "seg" | "cls", "backbone": "vit_mae", "seed": 0,
     "backbone_kwargs": {...}, "checkpoint": "...", "img_size": 128, "batch_size": 2,
     "mask_ratio": 0.75,                # optional, for pretraining sweeps
     "box_AP": ..., "mask_AP": ..., "mIoU": ..., "knn_acc": ..., "linear_acc": ...}
Metrics that are absent are read from the folder: Detectron2's `eval_results.json` and
`metrics.json` (tools/train_det.py), MMEngine's `*/vis_data/scalars.json` (tools/train_seg.py),
tools/eval_cls.py's `eval_cls.json`; params, FLOPs and latency are measured on the catalogue
backbone (mae_core/catalogue.py) at `img_size`. A plan is a JSON list of
{"run": {...run.json...}, "output_dir": DIR, "command": [argv...]}."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RUN_FILE = "run.json"
# (key, column title, digits); AP and mIoU in percent as Detectron2 and MMSeg report them.
DENSE_METRICS = [("box_AP", "box AP", 1), ("mask_AP", "mask AP", 1), ("mIoU", "mIoU", 1)]
COST_METRICS = [("params", "params (M)", 2), ("flops", "GFLOPs", 2), ("train_throughput", "train img/s", 2),
                ("latency", "latency (ms)", 1)]
CLS_METRICS = [("knn_acc", "k-NN acc", 1), ("linear_acc", "linear acc", 1)]


class RunError(ValueError):
    """A run folder or record that cannot be used; the message names the file and key."""


# --- Reading runs ------------------------------------------------------------------------------------


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
    """mIoU of the last validation and the median seconds per iteration from the newest
    `<timestamp>/vis_data/scalars.json` under the work dir."""
    logs = sorted(folder.glob("*/vis_data/scalars.json"))
    if not logs:
        return {}
    rows = json_lines(logs[-1])
    out = {}
    evals = [row for row in rows if "mIoU" in row]
    if evals:
        out["mIoU"] = evals[-1]["mIoU"]
    times = [row["time"] for row in rows if "time" in row and "mIoU" not in row]
    if times:
        out["seconds_per_iter"] = statistics.median(times)
    return out


def measure_backbone(backbone: str, input_size: int, repeats: int = 5, **kwargs) -> dict:
    """Parameters (millions), GFLOPs (fvcore, one image) and median latency (ms, one image, one
    thread as configured) of the catalogue backbone + pyramid on `input_size` square images;
    `kwargs` go to `build_pyramid` (a ViT's `img_size` defaults to `input_size`)."""
    import torch
    from fvcore.nn import FlopCountAnalysis

    from mae_core.catalogue import build_pyramid, get_entry

    if get_entry(backbone).kind == "vit":
        if get_entry(backbone).needs_checkpoint:
            raise RunError(f"measure {backbone} as vit_random: the counts do not depend on the weights")
        kwargs.setdefault("img_size", input_size)
    model = build_pyramid(backbone, **kwargs).eval()
    image = torch.randn(1, 3, input_size, input_size)
    with torch.no_grad():
        flops = FlopCountAnalysis(model, image)
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        gflops = flops.total() / 1e9
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
        raise RunError(f"{record_file} does not exist: a run folder needs a {RUN_FILE} (see --help)")
    run = read_json(record_file)
    for key in ("task", "backbone"):
        if key not in run:
            raise RunError(f"{record_file}: missing key {key!r} "
                           "(task is det, seg or cls; backbone a catalogue name)")
    if run["task"] not in ("det", "seg", "cls"):
        raise RunError(f"{record_file}: task must be 'det', 'seg' or 'cls', got {run['task']!r}")
    try:
        kind = get_entry(run["backbone"]).kind
    except CatalogueError as exc:
        raise RunError(f"{record_file}: {exc}") from exc
    folder = Path(run.get("output_dir") or record_file.parent)
    reader = {"det": detectron2_metrics, "seg": mmseg_metrics, "cls": classification_metrics}[run["task"]]
    found = reader(folder)
    run = {**found, **run}
    if "train_throughput" not in run and "seconds_per_iter" in run and run.get("batch_size"):
        run["train_throughput"] = run["batch_size"] / run["seconds_per_iter"]
    if measure and run["task"] != "cls" and not all(k in run for k in ("params", "flops", "latency")):
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


def classification_metrics(folder: Path) -> dict:
    path = folder / "eval_cls.json"
    if not path.is_file():
        return {}
    data = read_json(path)
    return {k: 100 * data[k] for k, _, _ in CLS_METRICS if k in data}


# --- Aggregating and reporting ------------------------------------------------------------------------


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(runs: list[dict], key: str = "backbone") -> dict[str, dict]:
    """Per `key` value: every metric's values over its runs, and the seeds used."""
    table: dict[str, dict] = defaultdict(lambda: {"seeds": set(), "values": defaultdict(list)})
    for run in runs:
        row = table[run[key]]
        row["seeds"].add(run.get("seed", 0))
        for metric, _, _ in DENSE_METRICS + COST_METRICS + CLS_METRICS:
            if run.get(metric) is not None:
                row["values"][metric].append(float(run[metric]))
    return dict(table)


def cell(values: list[float], digits: int) -> str:
    if not values:
        return "—"
    mean, std = spread(values)
    if len(set(values)) == 1:  # one run, or a measurement repeated per seed
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def verdict(table: dict, better: str, worse: str, metric: str) -> str | None:
    """Does `better` beat `worse` on `metric`, beyond the seeds' spread?"""
    a = table.get(better, {}).get("values", {}).get(metric)
    b = table.get(worse, {}).get("values", {}).get(metric)
    if not a or not b:
        return None
    (ma, sa), (mb, sb) = spread(a), spread(b)
    diff = ma - mb
    if len(a) < 2 or len(b) < 2:
        judgement = "single seed: no spread to judge by"
    elif sa + sb == 0 and abs(diff) >= 1e-9:
        judgement = "every seed gave the same result: no spread to judge by"
    elif abs(diff) < 1e-9:
        judgement = "no difference"
    elif diff > sa + sb:
        judgement = "yes, beyond the seeds' spread"
    elif diff > 0:
        judgement = "higher, but within the seeds' spread"
    else:
        judgement = "no"
    return (f"{better} − {worse} = {diff:+.2f} ({ma:.2f} ± {sa:.2f} vs {mb:.2f} ± {sb:.2f}, "
            f"n = {len(a)}/{len(b)}): {judgement}")


def render_table(table: dict, metrics: list[tuple[str, str, int]], first: str = "backbone") -> list[str]:
    lines = [f"| {first} | seeds | " + " | ".join(title for _, title, _ in metrics) + " |",
             "|" + "---|" * (len(metrics) + 2)]
    for name, row in table.items():
        seeds = ", ".join(str(s) for s in sorted(row["seeds"]))
        cells = [cell(row["values"].get(m, []), d) for m, _, d in metrics]
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    return lines


def plot_metrics(table: dict, metrics, path: Path) -> Path | None:
    """One panel per metric: mean bar, ± std error bar, and every seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if any(row["values"].get(m[0]) for row in table.values())]
    if not metrics:
        return None
    names = list(table)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6), squeeze=False)
    for ax, (metric, title, _) in zip(axes[0], metrics, strict=True):
        for i, name in enumerate(names):
            values = table[name]["values"].get(metric, [])
            if not values:
                continue
            mean, std = spread(values)
            ax.bar(i, mean, yerr=std, capsize=4, color=f"C{i}", alpha=0.7)
            ax.scatter([i] * len(values), values, color="k", s=12, zorder=3)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_sweep(runs: list[dict], path: Path) -> Path | None:
    """Probe accuracy against the pretraining mask ratio (runs that record one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = [r for r in runs if r["task"] == "cls" and r.get("mask_ratio") is not None]
    if len({r["mask_ratio"] for r in swept}) < 2:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, (metric, title, _) in enumerate(CLS_METRICS):
        by_ratio = defaultdict(list)
        for r in swept:
            if r.get(metric) is not None:
                by_ratio[r["mask_ratio"]].append(r[metric])
        ratios = sorted(by_ratio)
        stats = [spread(by_ratio[x]) for x in ratios]
        ax.errorbar([100 * x for x in ratios], [m for m, _ in stats], yerr=[s for _, s in stats], marker="o",
                    capsize=4, color=f"C{i}", label=title)
    ax.set_xlabel("mask ratio (%)")
    ax.set_ylabel("accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def probe_row_name(run: dict) -> str:
    ratio = run.get("mask_ratio")
    return run["backbone"] + (f" (mask {100 * ratio:.0f}%)" if ratio is not None else "")


def write_report(runs: list[dict], out: Path, title: str = "Backbone comparison") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    dense = [r for r in runs if r["task"] in ("det", "seg")]
    cls = [r for r in runs if r["task"] == "cls"]
    lines = [f"# {title}", ""]
    for task, title_, metrics in (("det", "Detection (Mask R-CNN)", DENSE_METRICS[:2]),
                                  ("seg", "Semantic segmentation (UperNet)", DENSE_METRICS[2:])):
        runs_of_task = [r for r in dense if r["task"] == task]
        if not runs_of_task:
            continue
        table = aggregate(runs_of_task)
        lines += [f"## {title_}", "",
                  "Mean ± sample standard deviation over the seeds listed (AP and mIoU in %). Parameters, "
                  "FLOPs and latency are those of the backbone with its feature pyramid for one image at the "
                  "task's image size; throughput is of the whole model in training.", ""]
        lines += render_table(table, metrics + COST_METRICS) + [""]
        if plot_metrics(table, metrics + COST_METRICS, out / f"{task}.png"):
            lines += [f"![{task}]({task}.png)", ""]
    if dense:
        table = aggregate(dense)
        if "vit_mae" in table and "vit_random" in table:
            lines += ["## Does MAE pretraining beat random initialisation?", ""]
            for metric, title_, _ in DENSE_METRICS:
                text = verdict(table, "vit_mae", "vit_random", metric)
                if text:
                    lines.append(f"- **{title_}**: {text}")
            if lines[-1] == "":
                lines.append("Not enough results to compare (both need box AP, mask AP or mIoU).")
            lines.append("")
    if cls:
        labelled = [{**r, "probe_row": probe_row_name(r)} for r in cls]
        table = aggregate(labelled, key="probe_row")
        lines += ["## Classification probes", "",
                  "Accuracy in % on the val split, mean ± std over seeds.", ""]
        lines += render_table(table, CLS_METRICS, first="encoder") + [""]
        if "vit_random" in table:
            for row in (name for name in table if name.startswith("vit_mae")):
                for metric, title_, _ in CLS_METRICS:
                    text = verdict(table, row, "vit_random", metric)
                    if text:
                        lines.append(f"- **{title_}**: {text}")
            lines.append("")
        if plot_sweep(cls, out / "mask_ratio_sweep.png"):
            lines += ["![mask ratio sweep](mask_ratio_sweep.png)", ""]
    lines += ["## Runs", "", "| task | backbone | seed | source | notes |", "|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['backbone']} | {r.get('seed', 0)} | {r['source']} | {r.get('notes', '')} |"
              for r in runs]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (out / "runs.json").write_text(json.dumps(runs, indent=2, sort_keys=True, default=str) + "\n")
    return report


def thread_env(threads: int) -> dict[str, str]:
    """This process's environment for a child tool that may use `threads` torch threads (OpenMP
    reads OMP_NUM_THREADS once, when torch starts)."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


def run_entry(entry: dict, threads: int = 1) -> int:
    """Writes the run record, runs the command with its output in `stdout.txt` and `threads` torch
    threads, marks success."""
    folder = Path(entry["output_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_FILE).write_text(json.dumps({**entry["run"], "output_dir": str(folder)}, indent=2))
    with open(folder / "stdout.txt", "w") as log:
        code = subprocess.call(entry["command"], stdout=log, stderr=subprocess.STDOUT,
                               env=thread_env(threads))
    if code == 0:
        (folder / ".done").touch()
    return code


def execute_plan(plan_file: Path, rerun: bool = False, jobs: int = 1) -> list[Path]:
    """Runs every plan entry whose output folder has no finished run yet, `jobs` at a time, the
    cores shared out between them; returns the run folders in plan order."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm import tqdm

    plan = read_json(plan_file)
    if not isinstance(plan, list):
        raise RunError(f"{plan_file}: expected a JSON list of {{run, output_dir, command}}")
    for i, entry in enumerate(plan):
        missing = {"run", "output_dir", "command"} - set(entry)
        if missing:
            raise RunError(f"{plan_file}: entry {i} lacks {sorted(missing)}")
    todo = [e for e in plan if rerun or not (Path(e["output_dir"]) / ".done").is_file()]
    with tqdm(total=len(plan), initial=len(plan) - len(todo), desc="runs", unit="run") as bar, \
            ThreadPoolExecutor(max(1, jobs)) as pool:
        threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
        futures = {pool.submit(run_entry, entry, threads): entry for entry in todo}
        for future in as_completed(futures):
            entry, code = futures[future], future.result()
            run = entry["run"]
            if code != 0:
                pool.shutdown(cancel_futures=True)
                raise RunError(f"run {' '.join(entry['command'])} failed with exit code {code}; "
                               f"see {Path(entry['output_dir']) / 'stdout.txt'}")
            bar.set_postfix_str(f"finished {run.get('task')} {run.get('backbone')} seed {run.get('seed', 0)}")
            bar.update(1)
    return [Path(e["output_dir"]) for e in plan]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="*", type=Path, default=[], help="run folders or run JSON files")
    p.add_argument("--plan", type=Path, help="run the commands of this plan first (see above)")
    p.add_argument("--rerun", action="store_true", help="with --plan: rerun finished runs too")
    p.add_argument("--jobs", type=int, default=1, help="with --plan: runs at a time (cores shared out)")
    p.add_argument("--out", type=Path, required=True, help="folder for report.md and the plots")
    p.add_argument("--title", default="Backbone comparison")
    args = p.parse_args(argv)
    try:
        folders = list(args.runs) + (execute_plan(args.plan, args.rerun, args.jobs) if args.plan else [])
        if not folders:
            p.error("give --runs and/or --plan")
        cache: dict = {}
        runs = [load_run(f, cache=cache) for f in folders]
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = write_report(runs, args.out, args.title)
    print(report.read_text())
    print(f"report written to {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
