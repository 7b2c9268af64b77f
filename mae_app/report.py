"""The comparison report: runs (mae_app.runs) aggregated per backbone into markdown tables with
mean ± sample standard deviation over seeds, verdicts of MAE against random initialisation beyond
the seeds' spread, and PNG plots. Runs of pretrainings that differ in one setting (a `Sweep`: the
mask ratio, the masking strategy) get a section of their own: a row per value with every metric,
the pretraining's speed and extra parameters, verdicts against the reference value, and a plot."""

from __future__ import annotations

import json
import os
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mae_app.runs import CLS_METRICS, COST_METRICS, DENSE_METRICS, PRETRAIN_METRICS


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
        for metric, _, _ in DENSE_METRICS + COST_METRICS + CLS_METRICS + PRETRAIN_METRICS:
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
PERCENT_METRICS = CLS_METRICS + DENSE_METRICS
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
             "Mean ± std over the seeds listed (accuracy, AP and mIoU in %); one pretraining per row. "
             "Pretraining img/s is read from each pretraining's own log (log lines within an epoch); "
             "extra params are those its masking strategy adds (a loss head).", ""]
    lines += render_table(named, metrics + speed, first=sweep.column) + [""]
    reference = sweep.label(sweep.reference)
    if reference in named:
        for name in named:
            if name in (reference, "random init"):
                continue
            for metric, title, _ in metrics:
                text = verdict(named, name, reference, metric)
                if text:
                    lines.append(f"- **{title}**: {text}")
        lines.append("")
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


def probe_row_name(run: dict) -> str:
    settings = [f"mask {100 * run['mask_ratio']:.0f}%"] if run.get("mask_ratio") is not None else []
    if run.get("masking", "random") != "random":
        settings.append(run["masking"])
    return run["backbone"] + (f" ({', '.join(settings)})" if settings else "")


def write_report(runs: list[dict], out: Path, title: str = "Backbone comparison",
                 figures: dict[str, Path] | None = None) -> Path:
    """report.md (and its plots, runs.json) in `out`; `figures` (title: picture) are shown at the end."""
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
    for sweep in SWEEPS:
        lines += sweep_section(runs, sweep, out)
    for caption, picture in (figures or {}).items():
        lines += [f"## {caption}", "", f"![{caption}]({os.path.relpath(picture, out)})", ""]
    lines += ["## Runs", "", "| task | backbone | seed | source | notes |", "|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['backbone']} | {r.get('seed', 0)} | {r['source']} | {r.get('notes', '')} |"
              for r in runs]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (out / "runs.json").write_text(json.dumps(runs, indent=2, sort_keys=True, default=str) + "\n")
    return report
