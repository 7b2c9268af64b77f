"""Label-efficiency curves in the comparison report: each detection and segmentation metric against
the labelled fraction, a row per backbone and protocol (fine-tuned, frozen), mean ± std over the
seeds, and at each fraction a verdict by the report's rule (mae_app.report.separation) of the MAE
row against random initialisation and against the supervised backbone of the same protocol.

A run's protocol is read from its record (the run folder's run.json): `label_fraction` (1.0 when
absent) or `label_count`, `frozen` (False when absent), `subset_seed`. Runs of the default protocol
(every label, fine-tuned) are the main report's; the curves use them as their 100 % point. A run on
a number of images (`label_count`) gets a column of its own after the fractions, and no point on
the plot's fraction axis."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from mae_app.demo_data import HELDOUT

# A labelled subset as a column: (0, fraction of the training set) or (1, number of images).
EVERY_LABEL = (0, 1.0)
CURVE_METRICS = {"det": [("box_AP", "box AP", 1), ("mask_AP", "mask AP", 1)], "seg": [("mIoU", "mIoU", 1)]}
REFERENCES = ("vit_random", "vit_supervised")


def labelled(run: dict) -> tuple[int, float]:
    """The run's labelled subset as a sortable column key: fractions first, then counts."""
    if run.get("label_fraction") is not None:
        return (0, float(run["label_fraction"]))
    if run.get("label_count") is not None:
        return (1, int(run["label_count"]))
    return EVERY_LABEL


def protocol(run: dict) -> tuple[tuple[int, float], bool]:
    """(labelled subset, frozen backbone) of a run record."""
    return labelled(run), bool(run.get("frozen", False))


def is_default_protocol(run: dict) -> bool:
    """Every label, fine-tuned: the main report's runs."""
    return protocol(run) == (EVERY_LABEL, False)


FROZEN = " (frozen)"


def curve_row(run: dict) -> str:
    return run["row"] + (FROZEN if protocol(run)[1] else "")


def column(subset: tuple[int, float]) -> str:
    kind, value = subset
    return f"{100 * value:g} %" if kind == 0 else f"{value:g} images"


def curve_values(runs: list[dict], metric: str) -> dict[str, dict[tuple, list[float]]]:
    """Per curve row, per labelled subset: the metric's values over the seeds (val split only)."""
    table: dict[str, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.get("split", "val") != HELDOUT and run.get(metric) is not None:
            table[curve_row(run)][protocol(run)[0]].append(float(run[metric]))
    return table


def curves_section(runs: list[dict], out: Path) -> list[str]:
    """The markdown of the curves (tables, verdicts, one plot per task); nothing unless some run
    used a labelled subset or a frozen backbone."""
    from mae_app.report import VERDICT_CELL, VERDICT_RULE, cell, separation, verdict_cell

    if all(is_default_protocol(r) for r in runs):
        return []
    lines = ["## Label efficiency and frozen backbones", "",
             "Each metric (val split, %) against the fraction of labelled training scenes (one seeded subset "
             "per fraction, nested, the same for every backbone and seed), mean ± std over the seeds (n = "
             "runs). Frozen: the backbone fixed, a linear head (segmentation) or the pyramid and heads "
             "(detection) trained. At each fraction the MAE row against random init and against the "
             f"supervised ViT of the same protocol. {VERDICT_CELL} {VERDICT_RULE}", ""]
    for task, metrics in CURVE_METRICS.items():
        task_runs = [r for r in runs if r["task"] == task]
        tables = {m: curve_values(task_runs, m) for m, _, _ in metrics}
        if not any(tables.values()):
            continue
        fractions = sorted({f for t in tables.values() for row in t.values() for f in row})
        head = "| {} | " + " | ".join(column(f) for f in fractions) + " |"
        rule = "|" + "---|" * (len(fractions) + 1)
        for metric, title, digits in metrics:
            table = tables[metric]
            if not table:
                continue
            lines += [f"### {title} against the labelled fraction", "", head.format("backbone"), rule]
            lines += [f"| {row} | " + " | ".join(
                f"{cell(table[row].get(f, []), digits)} (n={len(table[row].get(f, []))})" if table[row].get(f)
                else "—" for f in fractions) + " |" for row in table]
            verdicts = []
            for row in [r for r in table if r.startswith("vit_mae")]:
                suffix = FROZEN if row.endswith(FROZEN) else ""  # the same protocol
                for reference in (ref + suffix for ref in REFERENCES if ref + suffix in table):
                    cells = [verdict_cell(separation(table[row][f], table[reference][f]), digits)
                             if table[row].get(f) and table[reference].get(f) else "—" for f in fractions]
                    verdicts.append(f"| {row} vs {reference} | " + " | ".join(cells) + " |")
            lines += ["", head.format("comparison"), rule, *verdicts] if verdicts else []
            lines.append("")
        path = plot_curves(tables, metrics, out / f"{task}_label_efficiency.png")
        lines += [f"![{task} against the labelled fraction]({path.name})", ""]
    return lines


def plot_curves(tables: dict, metrics, path: Path) -> Path:
    """One panel per metric: mean ± std against the fraction (log axis), a line per row, the seeds
    as dots; frozen rows dashed. Subsets given by count are in the tables only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mae_app.report import spread

    metrics = [m for m in metrics if tables[m[0]]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), squeeze=False)
    for ax, (metric, title, _) in zip(axes[0], metrics, strict=True):
        for i, (row, by_fraction) in enumerate(sorted(tables[metric].items())):
            xs = sorted(x for x in by_fraction if x[0] == 0)
            if not xs:
                continue
            means, stds = zip(*(spread(by_fraction[x]) for x in xs), strict=True)
            style = "--" if row.endswith(FROZEN) else "-"
            ax.errorbar([100 * x[1] for x in xs], means, yerr=stds, marker="o", capsize=4, linestyle=style,
                        color=f"C{i}", label=row)
            for x in xs:
                ax.scatter([100 * x[1]] * len(by_fraction[x]), by_fraction[x], color=f"C{i}", s=8, alpha=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("labelled training scenes (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
