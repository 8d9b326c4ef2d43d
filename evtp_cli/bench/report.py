"""Sweep outputs people read: table.md (accuracy and speed-up by pruner × ratio) and plots per dataset."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from evtp_cli.bench.evaluate import REFERENCE
from evtp_cli.bench.tables import fmt_cell
from evtp_cli.errors import EvtpError

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
        ratios = sorted(group.loc[group["pruner"] != REFERENCE, "ratio"].unique())
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


def _described(entries: dict[str, Any]) -> str | None:
    """`name (key=value, ...); ...` for the report's provenance: each entry with what it was run with."""
    parts = [f"{name} ({', '.join(f'{k}={v}' for k, v in options.items() if k != 'name')})" if options else name
             for name, options in entries.items()]
    return "; ".join(parts) or None


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
        _label(ax, "keep ratio (fraction of visual tokens)", METRIC_LABEL[metric], f"{dataset}\n{model}")
        paths.append(save_figure(fig, Path(out_dir) / f"accuracy_vs_ratio_{slug(dataset)}_{slug(model)}.png"))
    return paths


def _label(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def save_figure(fig, path: Path) -> Path:
    """Lay out, write as PNG and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats on both (faster or equal and more
    accurate, or strictly faster and as accurate), in order of latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_accuracy_vs_latency(rows: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """One PNG per model × dataset: primary accuracy against ms_total per sample, one line per pruner
    (its keep ratios, labelled), the no-pruning reference, and the Pareto front over all of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = _frame(rows)
    paths = []
    if df.empty:
        return paths
    for (model, dataset), group in df.groupby(["model", "dataset"], sort=False):
        metric = PRIMARY_METRIC.get(group["task"].iloc[0], "giou")
        group = group[group[metric].notna() & group["ms_total"].notna()]
        if group.empty:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ref = group[group["pruner"] == REFERENCE]
        if not ref.empty:
            ax.scatter(ref["ms_total"], ref[metric], marker="*", s=120, color="grey", zorder=3, label="no pruning")
        for pruner, prow in group[group["pruner"] != REFERENCE].groupby("pruner", sort=False):
            prow = prow.sort_values("ms_total")
            ax.plot(prow["ms_total"], prow[metric], marker="o", lw=2 if pruner.startswith("evtp") else 1.2, label=pruner)
            for _, r in prow.iterrows():
                ax.annotate(f"{r['ratio']:g}", (r["ms_total"], r[metric]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        points = list(zip(group["ms_total"].astype(float), group[metric].astype(float)))
        front = [points[i] for i in pareto_front(points)]
        if front:
            xs, ys = zip(*front)
            ax.step(xs, ys, where="post", color="black", ls=":", lw=1, label="Pareto front")
        _label(ax, "latency (ms per sample, median)", METRIC_LABEL[metric], f"{dataset}\n{model} · labels: keep ratio")
        paths.append(save_figure(fig, Path(out_dir) / f"accuracy_vs_latency_{slug(dataset)}_{slug(model)}.png"))
    return paths


def detail_markdown(rows: list[dict[str, Any]]) -> str:
    """Every row with its accuracy, tokens and latency, one table per model × dataset."""
    parts = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["dataset"]), []).append(r)
    for (model, dataset), group in groups.items():
        video = group[0].get("task") == "video"
        metrics = ["J", "F", "JF"] + [m for m in ("A", "R") if any(r.get(m) is not None for r in group)] if video else ["giou", "ciou"]
        head = ["pruner", "ratio", "n", "failed", "tokens kept", *[METRIC_LABEL.get(m, m) for m in metrics], "ms/sample", "speed-up"]
        parts.append(f"#### {dataset} · {model}\n")
        parts.append("| " + " | ".join(head) + " |")
        parts.append("|" + "---|" * len(head))
        for r in group:
            kept = r.get("tokens_kept")
            tokens = "–" if kept is None else f"{kept:.0f}/{r.get('tokens_total') or 0:.0f}"
            note = " (n/a)" if r.get("not_applicable") else ""
            speed = r.get("speedup")
            cells = [f"{r['pruner']}{note}", f"{r['ratio']:g}", fmt_cell(r.get("n_samples")), fmt_cell(r.get("n_failed") or 0), tokens,
                     *[fmt_cell(r.get(m)) for m in metrics], fmt_cell(r.get("ms_total"), 1), "–" if speed is None else f"{speed:.2f}×"]
            parts.append("| " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts) + "\n"


def _joined(value: Any) -> str:
    return ", ".join(f"`{v}`" if isinstance(v, str) else f"{v:g}" if isinstance(v, float) else str(v) for v in value) if isinstance(value, list) else f"`{value}`"


def write_report(results_dir: str | Path, versus: str | None = None) -> Path:
    """RESULTS_DIR/report.md: provenance, the tables, the plots (regenerated next to it), the paired
    differences of `versus` (default: evtp, where the run has it) against the other pruners, and the
    failures, with relative image links so that the folder can be pasted or attached as it is."""
    from evtp_cli.bench.coverage import COVERAGE_STAMP
    from evtp_cli.bench.paired import paired_markdown, paired_rows
    from evtp_cli.bench.results import read_results
    from evtp_cli.bench.resume import done_fingerprint, load_done, read_records

    out = Path(results_dir)
    data = read_results(out)
    if out.is_file():
        out = out.parent
    rows, meta = data["rows"], data.get("meta", {})
    pruners = sorted({r["pruner"] for r in rows} - {REFERENCE})  # the reference runs at 1.0 only: nothing pairs with it
    if versus is not None and versus not in pruners:
        raise EvtpError(f"--versus {versus!r} is not a pruner of this run; choose one of: {', '.join(pruners)}")
    versus = versus or ("evtp" if "evtp" in pruners else None)
    ratio_plots = plot_accuracy_vs_ratio(rows, out)
    latency_plots = plot_accuracy_vs_latency(rows, out)
    lines = ["# evtp results", ""]
    models = meta.get("models") or {}
    config = meta.get("config") or {}
    info = [
        ("command", f"`{meta.get('command')}`" if meta.get("command") else None),
        ("configuration", "; ".join(f"{k} {_joined(v)}" for k, v in config.items() if v not in (None, False, [])) or None),
        ("models", _described(models)),
        ("pruner options", _described(meta.get("pruner_options") or {})),
        ("evtp", " ".join(x for x in (meta.get("evtp_version"), f"@ {meta['git_commit'][:10]}" if meta.get("git_commit") else None) if x)),
        ("torch", meta.get("torch_version")),
        ("device", " · ".join(str(x) for x in (meta.get("device"), meta.get("device_name")) if x) or None),
        ("processes", meta.get("world_size")),
        ("seed", meta.get("seed")),
        ("time", f"{meta.get('start_time')} → {meta.get('end_time')}" if meta.get("start_time") else None),
    ]
    lines += [f"- **{k}**: {v}" for k, v in info if v not in (None, "")]
    if meta.get("stopped_early"):
        lines.append("- **stopped early** (--max-failures): the rows cover only the samples that finished")
    lines += ["", "## Accuracy by keep ratio", "", table_markdown(rows), "## All rows", "", detail_markdown(rows)]
    records = read_records(out)  # samples.jsonl, and rank files of a sharded run not merged yet
    paired = paired_rows(records, versus) if versus else []
    if paired:
        explain = ("Per-sample accuracy of the same samples; the interval is a percentile bootstrap over samples, the sign "
                   "test compares wins with losses, and the verdict needs both (docs/reports.md).")
        lines += [f"## Paired differences: {versus} against each pruner", "", explain, "", paired_markdown(paired, versus)]
    elif versus:
        lines += [f"## Paired differences: {versus} against each pruner", "",
                  f"Nothing to pair: no other pruner ran at the keep ratios of `{versus}` on the same samples (or the sample "
                  "records have no sample index).", ""]
    if ratio_plots or latency_plots:
        lines += ["## Plots", ""]
        for a, b in zip(ratio_plots, latency_plots):
            lines += [f"![accuracy vs keep ratio]({a.name}) ![accuracy vs latency]({b.name})", ""]
        for p in ratio_plots[len(latency_plots):] + latency_plots[len(ratio_plots):]:
            lines += [f"![plot]({p.name})", ""]
    coverage_md = out / "coverage.md"
    if coverage_md.is_file():
        lines += ["## Coverage and accuracy", ""]
        text = coverage_md.read_text()
        stamp, _, body = text.partition("\n") if text.startswith(COVERAGE_STAMP) else ("", "", text)
        if stamp and stamp[len(COVERAGE_STAMP):].removesuffix(" -->") != done_fingerprint(load_done(out)):
            lines += [f"**Stale:** computed from other finished samples than the run has now (it was resumed or "
                      f"rerun); rerun `evtp coverage {out}`.", ""]
        lines += [body.strip(), ""]
        lines += [f"![coverage]({p.name})" for p in sorted(out.glob("coverage_*.png"))] + [""]
    failed = {k: v for k, v in (meta.get("failed_samples") or {}).items() if v}
    if failed:
        reasons: dict[str, str] = {}
        for rec in records:
            if rec.get("status") == "failed":
                reasons.setdefault(str(rec.get("id")), str(rec.get("reason")))
        lines += ["## Failed samples", "", "Left out of every metric (their records are in samples.jsonl).", ""]
        lines += ["| dataset | sample | reason |", "|---|---|---|"]
        for dataset, ids in failed.items():
            for sample_id in ids:
                reason = reasons.get(sample_id, "").replace("|", "\\|")
                lines.append(f"| {dataset} | {sample_id} | {reason} |")
        lines.append("")
    na = meta.get("not_applicable") or {}
    if na:
        lines += ["## Not applicable", ""] + [f"- {k}: {v}" for k, v in na.items()] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
