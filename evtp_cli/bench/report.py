"""Sweep outputs people read: table.md (accuracy and speed-up by pruner × ratio) and plots per dataset."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from evtp_cli.bench.evaluate import REFERENCE

PRIMARY_METRIC = {"image": "giou", "video": "JF"}
METRIC_LABEL = {"giou": "gIoU", "ciou": "cIoU", "JF": "J&F", "J": "J", "F": "F"}


def _frame(rows: list[dict[str, Any]]):
    import pandas as pd

    return pd.DataFrame([r for r in rows if not r.get("not_applicable")])


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def table_markdown(rows: list[dict[str, Any]]) -> str:
    """One table per model × dataset: rows are pruners, columns are ratios, cells 'accuracy (speed-up)'."""
    df = _frame(rows)
    if df.empty:
        return "_no results_\n"
    parts = []
    for (model, dataset), group in df.groupby(["model", "dataset"], sort=False):
        task = group["task"].iloc[0]
        metric = PRIMARY_METRIC.get(task, "giou")
        ref = group[group["pruner"] == REFERENCE]
        ratios = sorted(group.loc[group["pruner"] != REFERENCE, "ratio"].unique(), reverse=True)
        ref_line = ""
        if not ref.empty:
            ref_row = ref.iloc[0]
            ref_line = f" — no pruning: {METRIC_LABEL[metric]} {ref_row[metric]:.3f}, {ref_row['ms_total']:.1f} ms/sample"
        parts.append(f"### {dataset} · {model}{ref_line}\n")
        parts.append(f"{METRIC_LABEL[metric]} (speed-up vs no pruning) by keep ratio\n")
        parts.append("| pruner | " + " | ".join(f"{r:g}" for r in ratios) + " |")
        parts.append("|---|" + "---|" * len(ratios))
        for pruner, prow in group[group["pruner"] != REFERENCE].groupby("pruner", sort=False):
            cells = []
            for r in ratios:
                hit = prow[prow["ratio"] == r]
                if hit.empty or hit.iloc[0][metric] is None:
                    cells.append("–")
                    continue
                h = hit.iloc[0]
                speed = "" if h.get("speedup") is None or h["speedup"] != h["speedup"] else f" ({h['speedup']:.2f}×)"
                cells.append(f"{h[metric]:.3f}{speed}")
            parts.append(f"| {pruner} | " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts) + "\n"


def plot_accuracy_vs_ratio(rows: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """One PNG per model × dataset: primary accuracy against keep ratio, one line per pruner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = _frame(rows)
    paths = []
    for (model, dataset), group in df.groupby(["model", "dataset"], sort=False):
        metric = PRIMARY_METRIC.get(group["task"].iloc[0], "giou")
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ref = group[group["pruner"] == REFERENCE]
        if not ref.empty and ref.iloc[0][metric] is not None:
            ax.axhline(ref.iloc[0][metric], color="grey", ls="--", lw=1, label="no pruning")
        for pruner, prow in group[group["pruner"] != REFERENCE].groupby("pruner", sort=False):
            prow = prow.sort_values("ratio")
            ax.plot(prow["ratio"], prow[metric], marker="o", lw=2 if pruner.startswith("evtp") else 1.2, label=pruner)
        ax.set_xlabel("keep ratio (fraction of visual tokens)")
        ax.set_ylabel(METRIC_LABEL[metric])
        ax.set_title(f"{dataset}\n{model}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(out_dir) / f"accuracy_vs_ratio_{slug(dataset)}_{slug(model)}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
