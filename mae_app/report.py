"""The comparison report: runs (mae_app.runs) aggregated per backbone into markdown tables with
mean ± sample standard deviation over seeds, verdicts of MAE against random initialisation beyond
the seeds' spread, and PNG plots."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from mae_app.runs import CLS_METRICS, COST_METRICS, DENSE_METRICS


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
