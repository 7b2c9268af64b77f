"""The comparison report: runs (mae_app.runs) aggregated per row (a backbone, and the pretraining's
settings where they vary) into markdown tables with mean ± sample standard deviation over seeds,
verdicts by one stated rule (VERDICT_RULE, `separation`) of MAE against random initialisation,
per-class IoU of every segmentation row, and PNG plots. A run evaluated on the held-out scenes
(`"split": "heldout"`, mae_app.demo) fills its row's held-out columns beside the val ones. Runs of
pretrainings that differ in one setting (a `Sweep`: the mask ratio, the masking strategy) get a
section of their own: a row per value with every metric, the pretraining's speed and extra
parameters, verdicts against the reference value, and a plot."""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mae_app.curves import column, curve_row, curves_section, is_default_protocol, protocol
from mae_app.demo_data import HELDOUT
from mae_app.runs import CLS_METRICS, COST_METRICS, DENSE_METRICS, PRETRAIN_METRICS

# A held-out evaluation's AP and mIoU, under these keys in its training run's row.
HELDOUT_METRICS = [(f"{key}_{HELDOUT}", f"{title} held-out", digits) for key, title, digits in DENSE_METRICS]
ALL_METRICS = DENSE_METRICS + HELDOUT_METRICS + COST_METRICS + CLS_METRICS + PRETRAIN_METRICS

VERDICT_RULE = (
    "Verdict rule: A is **ahead** of B on a metric when the difference of their means exceeds twice the "
    "standard error of that difference, √(s_A²/n_A + s_B²/n_B), s being the sample standard deviation over "
    "the n runs of each (seeds; pretraining seeds × seeds where several pretrainings share a row); "
    "**behind** when it is below minus twice that; otherwise A and B **do not separate** on that metric. "
    "A side with a single run, or two sides without any spread, get no verdict.")


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Separation:
    """A − B on one metric, judged by VERDICT_RULE."""

    difference: float
    standard_error: float
    judgement: str  # "ahead", "behind", "does not separate", or why there is no verdict


def separation(a: list[float], b: list[float]) -> Separation:
    """VERDICT_RULE on the per-run values of A and B: the one place the report judges. Twice the
    standard error is about a 95 % margin for many runs; with three a side it is looser (Welch's t
    with about 4 degrees of freedom puts it near p = 0.1)."""
    (ma, sa), (mb, sb) = spread(a), spread(b)
    difference = ma - mb
    error = math.sqrt(sa**2 / len(a) + sb**2 / len(b))
    if len(a) < 2 or len(b) < 2:
        judgement = "single run: no spread to judge by"
    elif abs(difference) < 1e-9:
        judgement = "no difference"
    elif error == 0:
        judgement = "every run gave the same result: no spread to judge by"
    elif difference > 2 * error:
        judgement = "ahead"
    elif difference < -2 * error:
        judgement = "behind"
    else:
        judgement = "does not separate"
    return Separation(difference, error, judgement)


VERDICT_CELL = "Each cell: the difference of the means A − B, twice its standard error (2 SE), the verdict."


def verdict_cell(result: Separation, digits: int) -> str:
    """`+3.3 (2 SE 1.4): **ahead**`: the difference, the margin it is judged against, the verdict."""
    word = f"**{result.judgement}**" if result.judgement in ("ahead", "behind") else result.judgement
    return f"{result.difference:+.{digits}f} (2 SE {2 * result.standard_error:.{digits}f}): {word}"


def row_name(run: dict) -> str:
    """The backbone, with the settings of the MAE pretraining it starts from (mask ratio, a masking
    strategy other than random); the pretraining seed is left out, so a row spans them. A config's
    own backbone (not a catalogue name, which says its initialisation) adds the checkpoint it
    starts from, or random init."""
    settings = [f"mask {100 * run['mask_ratio']:.0f}%"] if run.get("mask_ratio") is not None else []
    if run.get("masking", "random") != "random":
        settings.append(run["masking"])
    if run.get("config_backbone"):
        settings.append(f"from {Path(run['checkpoint']).name}" if run.get("checkpoint") else RANDOM_INIT)
    return run["backbone"] + (f" ({', '.join(settings)})" if settings else "")


RANDOM_INIT = "random init"


def mae_vs_random_pairs(runs: list[dict]) -> list[tuple[str, str]]:
    """The rows compared by the rule: every vit_mae row against vit_random, and every config
    backbone started from a checkpoint against the same backbone at random initialisation."""
    names = list(dict.fromkeys(run["row"] for run in runs))
    pairs = [(name, "vit_random") for name in names if name.startswith("vit_mae")]
    for run in runs:
        if run.get("config_backbone") and run.get("checkpoint"):
            pair = (run["row"], row_name({**run, "checkpoint": None}))
            if pair[1] in names and pair not in pairs:
                pairs.append(pair)
    return pairs


def is_other_data(run: dict) -> bool:
    """An evaluation on data other than val (the demo's held-out scenes, another test set)."""
    return run.get("split", "val") != "val"


def data_label(run: dict) -> str:
    split = run.get("split", "val")
    return "held-out" if split == HELDOUT else split


def repeats_its_training(run: dict, folders: set[str]) -> bool:
    """An evaluation on val of a trained run that is itself compared: its numbers are that run's
    again, not another seed."""
    return not is_other_data(run) and run.get("trained_in") in folders


def on_heldout(run: dict) -> dict:
    """A held-out evaluation's record with its AP and mIoU under the held-out keys, so it joins its
    training run's row; its cost is that of the training run's backbone and is not counted twice."""
    metrics = {key for key, _, _ in ALL_METRICS}
    moved = {key: value for key, value in run.items() if key not in metrics}
    return {**moved, **{f"{key}_{HELDOUT}": run[key] for key, _, _ in DENSE_METRICS if key in run}}


def aggregate(runs: list[dict], key: str = "backbone") -> dict[str, dict]:
    """Per `key` value: every metric's values over its runs, the seeds and the pretraining seeds."""
    table: dict[str, dict] = defaultdict(lambda: {"seeds": set(), "pretrain_seeds": set(),
                                                  "values": defaultdict(list)})
    for run in runs:
        row = table[run[key]]
        row["seeds"].add(run.get("seed", 0))
        if run.get("pretrain_seed") is not None:
            row["pretrain_seeds"].add(run["pretrain_seed"])
        for metric, _, _ in ALL_METRICS:
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


def verdict_table(table: dict, pairs: list[tuple[str, str]], metrics, first: str) -> list[str]:
    """A row per (A, B) pair of `table` rows that share a metric, a column per metric a pair shares,
    each cell A − B judged by `separation`; no lines when no pair shares a metric."""
    def values(name, metric):
        return table.get(name, {}).get("values", {}).get(metric)

    def shared(a, b, metric):
        return bool(values(a, metric) and values(b, metric))

    pairs = [(a, b) for a, b in pairs if any(shared(a, b, m) for m, _, _ in metrics)]
    metrics = [m for m in metrics if any(shared(a, b, m[0]) for a, b in pairs)]
    if not pairs:
        return []
    lines = [f"| {first} | " + " | ".join(title for _, title, _ in metrics) + " |",
             "|" + "---|" * (len(metrics) + 1)]
    for a, b in pairs:
        cells = [verdict_cell(separation(values(a, m), values(b, m)), d) if shared(a, b, m) else "—"
                 for m, _, d in metrics]
        lines.append(f"| {a} vs {b} | " + " | ".join(cells) + " |")
    return lines


def seeds_cell(row: dict) -> str:
    """`0, 1, 2`, or `0, 1, 2 × pretraining 0, 1` where the row spans several pretrainings."""
    seeds = ", ".join(str(s) for s in sorted(row["seeds"]))
    if len(row["pretrain_seeds"]) > 1:
        seeds += " × pretraining " + ", ".join(str(s) for s in sorted(row["pretrain_seeds"]))
    return seeds


def render_table(table: dict, metrics: list[tuple[str, str, int]], first: str = "backbone") -> list[str]:
    lines = [f"| {first} | seeds | " + " | ".join(title for _, title, _ in metrics) + " |",
             "|" + "---|" * (len(metrics) + 2)]
    for name, row in table.items():
        seeds = seeds_cell(row)
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


@dataclass(frozen=True)
class Sweep:
    """A run field that pretrainings vary (mae_app.demo's sweeps): its runs are compared value by
    value, each against `reference`; a numeric field is plotted as lines over its values, another
    as bars per value."""

    key: str
    title: str
    column: str
    reference: object
    label: Callable[[object], str]
    plot_file: str

    @property
    def numeric(self) -> bool:
        return isinstance(self.reference, (int, float))


SWEEPS = (
    Sweep("mask_ratio", "Mask-ratio sweep", "mask ratio", 0.75, lambda v: f"{100 * v:.0f} %",
          "mask_ratio_sweep.png"),
    Sweep("masking", "Masking strategies", "masking", "random", str, "masking_sweep.png"),
)
PERCENT_METRICS = CLS_METRICS + DENSE_METRICS + HELDOUT_METRICS
SPEED_RATIO = "pretrain_speed_ratio"  # a sweep row's pretraining img/s over the reference's


def sweep_rows(runs: list[dict], sweep: Sweep) -> dict | None:
    """MAE runs by the value of `sweep.key` (in order: numbers ascending, names as first seen),
    aggregated like `aggregate`, and a "random init" row from vit_random runs; None unless the
    runs hold at least two values."""
    swept = [r for r in runs if r["backbone"] == "vit_mae" and r.get(sweep.key) is not None]
    values = list(dict.fromkeys(r[sweep.key] for r in swept))
    if len(values) < 2:
        return None
    if sweep.numeric:
        values.sort()
    table = aggregate(swept, key=sweep.key)
    rows = {value: table[value] for value in values}
    baseline = [r for r in runs if r["backbone"] == "vit_random"]
    if baseline:
        rows["random init"] = aggregate(baseline)["vit_random"]
    reference = rows.get(sweep.reference, {}).get("values", {}).get("pretrain_img_per_s")
    for value in values:
        speed = rows[value]["values"].get("pretrain_img_per_s")
        if speed and reference:
            rows[value]["values"][SPEED_RATIO] = [statistics.fmean(speed) / statistics.fmean(reference)]
    return rows


def sweep_section(runs: list[dict], sweep: Sweep, out: Path) -> list[str]:
    """The markdown of one sweep: table, verdicts against the reference value, plot."""
    rows = sweep_rows(runs, sweep)
    if rows is None:
        return []
    named = {sweep.label(v) if v != "random init" else v: row for v, row in rows.items()}
    metrics = [m for m in PERCENT_METRICS if any(row["values"].get(m[0]) for row in named.values())]
    speed = [*PRETRAIN_METRICS[:1], (SPEED_RATIO, f"img/s vs {sweep.label(sweep.reference)}", 2),
             *PRETRAIN_METRICS[1:]]
    lines = [f"## {sweep.title}", "",
             "Mean ± std over the runs of each row (accuracy, AP and mIoU in %): its seeds, times its "
             "pretraining seeds where it has several (the seeds column). Pretraining img/s is read from each "
             "pretraining's own log (log lines within an epoch); extra params are those its masking strategy "
             "adds (a loss head).", ""]
    lines += render_table(named, metrics + speed, first=sweep.column) + [""]
    reference = sweep.label(sweep.reference)
    pairs = [(name, reference) for name in named if name not in (reference, "random init")]
    table = verdict_table(named, [*pairs, (reference, "random init")], metrics, first="comparison")
    if table:
        lines += [f"Each {sweep.column} against {reference}, and {reference} against random init. "
                  f"{VERDICT_CELL} {VERDICT_RULE}", "", *table, ""]
    path = out / sweep.plot_file
    plotted = plot_sweep_lines(rows, metrics, path) if sweep.numeric else plot_metrics(named, metrics, path)
    if plotted:
        lines += [f"![{sweep.title}]({sweep.plot_file})", ""]
    return lines


def plot_sweep_lines(rows: dict, metrics, path: Path) -> Path | None:
    """Each metric against the swept number (x 100: ratios in %), mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [v for v in rows if v != "random init"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, (metric, title, _) in enumerate(metrics):
        xs = [x for x in values if rows[x]["values"].get(metric)]
        stats = [spread(rows[x]["values"][metric]) for x in xs]
        ax.errorbar([100 * x for x in xs], [m for m, _ in stats], yerr=[s for _, s in stats], marker="o",
                    capsize=4, color=f"C{i}", label=title)
    ax.set_xlabel("mask ratio (%)")
    ax.set_ylabel("%")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def stack_pictures(rows: dict[str, list[Path]], path: Path) -> Path:
    """One PNG: a row per key, its label on the left, then its pictures side by side (for the
    masking sweep: each strategy's tools/visualize_mae.py panels of the same images)."""
    from PIL import Image, ImageDraw

    pictures = {label: [Image.open(p).convert("RGB") for p in paths] for label, paths in rows.items()}
    if not all(pictures.values()):
        raise FileNotFoundError(f"no pictures for {[k for k, v in pictures.items() if not v]}")
    gap, label_width = 6, 110
    row_height = max(im.height for ims in pictures.values() for im in ims)
    width = label_width + max(sum(im.width + gap for im in ims) for ims in pictures.values())
    canvas = Image.new("RGB", (width, len(pictures) * (row_height + gap) + gap), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, ims) in enumerate(pictures.items()):
        top = gap + i * (row_height + gap)
        draw.text((4, top + row_height // 2), label, fill="black")
        left = label_width
        for im in ims:
            canvas.paste(im, (left, top))
            left += im.width + gap
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def class_iou_section(seg_runs: list[dict]) -> list[str]:
    """Per-class IoU (mae_app.runs.mmseg_class_iou) of every segmentation row, on val and held out."""
    rows: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for run in sorted(seg_runs, key=is_other_data):
        label = f"{run['row']}, {data_label(run)}"
        for name, value in (run.get("class_IoU") or {}).items():
            rows[label].setdefault(name, []).extend([] if value is None else [value])
    if not rows:
        return []
    classes = list(dict.fromkeys(name for row in rows.values() for name in row))
    lines = ["### Per-class IoU", "",
             "IoU in % per class, mean ± std over seeds, from each run's last evaluation (MMSegmentation's "
             "per-class table in its log); — where no run of the row saw the class in its labels or "
             "predictions.", "", "| backbone, data | " + " | ".join(classes) + " |",
             "|" + "---|" * (len(classes) + 1)]
    lines += [f"| {label} | " + " | ".join(cell(row.get(name, []), 1) for name in classes) + " |"
              for label, row in rows.items()]
    return lines + [""]


DENSE_TEXT = ("Mean ± sample standard deviation over the seeds listed (AP and mIoU in %) on the val "
              "split{held}. Parameters, FLOPs and latency are those of the backbone with its feature pyramid "
              "for one image at the task's image size; throughput is of the whole model in training.")
OTHER_DATA_TEXT = (", and held out: the same trained models evaluated on other data ({}; run.json's "
                   "eval_data names it)")
HELDOUT_TEXT = (", and held out: the same trained models on the held-out scenes (Fashion-MNIST test items "
                "and photos that no train or val file shows)")


def write_report(runs: list[dict], out: Path, title: str = "Backbone comparison",
                 figures: dict[str, Path] | None = None) -> Path:
    """report.md (and its plots, runs.json) in `out`; `figures` (title: picture) are shown at the end."""
    out.mkdir(parents=True, exist_ok=True)
    folders = {str(Path(run["source"]).parent) for run in runs if run.get("source")}
    runs = [{**run, "row": row_name(run)} for run in runs if not repeats_its_training(run, folders)]
    curves = curves_section(runs, out)  # labelled fractions and frozen backbones: their own section
    main = [run for run in runs if is_default_protocol(run)]
    joined = [on_heldout(r) if is_other_data(r) else r for r in main]
    lines = [f"# {title}", ""]
    for task, title_, metrics in (("det", "Detection (Mask R-CNN)", DENSE_METRICS[:2]),
                                  ("seg", "Semantic segmentation (UperNet)", DENSE_METRICS[2:])):
        runs_of_task = [r for r in joined if r["task"] == task]
        if not runs_of_task:
            continue
        table = aggregate(runs_of_task, key="row")
        keys = {key for key, _, _ in metrics}
        held = [m for m in HELDOUT_METRICS if m[0].removesuffix(f"_{HELDOUT}") in keys
                and any(row["values"].get(m[0]) for row in table.values())]
        others = sorted({r["split"] for r in runs_of_task if is_other_data(r)})
        other_text = HELDOUT_TEXT if others == [HELDOUT] else OTHER_DATA_TEXT.format(", ".join(others))
        lines += [f"## {title_}", "", DENSE_TEXT.format(held=other_text if held else ""), ""]
        lines += render_table(table, metrics + held + COST_METRICS) + [""]
        if plot_metrics(table, metrics + held + COST_METRICS, out / f"{task}.png"):
            lines += [f"![{task}]({task}.png)", ""]
        if task == "seg":
            lines += class_iou_section([r for r in main if r["task"] == "seg"])
    table = aggregate(joined, key="row")
    comparison = verdict_table(table, mae_vs_random_pairs(runs),
                               DENSE_METRICS + HELDOUT_METRICS + CLS_METRICS, first="comparison")
    if comparison:
        lines += ["## MAE vs random initialisation", "", f"{VERDICT_CELL} {VERDICT_RULE}", "",
                  *comparison, ""]
    cls = [r for r in main if r["task"] == "cls"]
    if cls:
        lines += ["## Classification probes", "",
                  "Accuracy in % on the val split, mean ± std over seeds.", ""]
        lines += render_table(aggregate(cls, key="row"), CLS_METRICS, first="encoder") + [""]
    for sweep in SWEEPS:
        lines += sweep_section(joined, sweep, out)
    lines += curves
    for caption, picture in (figures or {}).items():
        lines += [f"## {caption}", "", f"![{caption}]({os.path.relpath(picture, out)})", ""]
    lines += ["## Runs", "", "| task | backbone | seed | data | labels | source | notes |", "|" + "---|" * 7]
    lines += [f"| {r['task']} | {curve_row(r)} | {r.get('seed', 0)} | {r.get('split', 'val')} | "
              f"{column(protocol(r)[0])} | {r['source']} | {r.get('notes', '')} |" for r in runs]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (out / "runs.json").write_text(json.dumps(runs, indent=2, sort_keys=True, default=str) + "\n")
    return report
