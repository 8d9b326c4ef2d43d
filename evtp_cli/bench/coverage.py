"""Coverage analysis: does the covering radius of the kept tokens predict segmentation quality?

For every sample of a finished run and every pruner × keep ratio, the kept set is chosen again exactly as
the run chose it (same model tokens, same per-sample seed), and its covering radius is measured:

- image space: max over all visual tokens of the Euclidean distance, in normalised (t, y, x) coordinates
  (t = 0 for images), to the nearest kept token — the k-center objective on token positions;
- feature space: the same on unit-normalised token features (distance √(2 − 2·cos)), the metric
  that kcenter and EVTP's feature term use.

The accuracy of that sample under that setting (IoU for images, J&F for videos) comes from the run's
samples.jsonl, and the Spearman rank correlation of radius and accuracy is reported per pruner × ratio
and pooled over the pruners at each ratio (the paper's motivating analysis: a smaller radius, i.e. a
better covered image, should go with higher accuracy, so ρ < 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from evtp_cli.bench.evaluate import (
    Setting,
    record_key,
    run_sample,
    score_sample,
    select_pre_llm,
)
from evtp_cli.bench.results import sample_accuracy
from evtp_cli.bench.tables import fmt_cell
from evtp_cli.errors import EvtpError

ALL_PRUNERS = "(pooled)"
CHECK_TOLERANCE = 1e-6


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's ρ (Pearson correlation of average ranks); None with fewer than 3 pairs or a constant side."""
    import pandas as pd

    if len(x) != len(y):
        raise ValueError(f"{len(x)} and {len(y)} values")
    if len(x) < 3:
        return None
    rx = pd.Series(x, dtype=float).rank().to_numpy()
    ry = pd.Series(y, dtype=float).rank().to_numpy()
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


COVERAGE_STAMP = "<!-- evtp coverage of records "  # first line of coverage.md, so a report can tell a stale one


@dataclass
class CoverageResult:
    samples: Any  # pandas DataFrame, one row per sample × setting
    summary: Any  # pandas DataFrame, one row per (model, dataset, pruner, ratio) and pooled rows
    warnings: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # pruner -> why it has no radii
    records: str = ""  # resume.done_fingerprint of the finished records analysed


def analyse(results_dir: str | Path, device: str = "cpu", progress: Callable[[str, int], Any] | None = None,
            advance: Callable[[], None] | None = None) -> CoverageResult:
    """Radii for every finished sample of the run in `results_dir` (its run.json says what ran)."""
    import pandas as pd

    from evtp_cli.bench import resume as rs
    from evtp_cli.bench.runner import _model_overrides, open_dataset
    from evtp_cli.errors import PrunerNotApplicable
    from evtp_cli.metrics import IoUAccumulator, JFAccumulator
    from evtp_cli.metrics.timing import StageTimer
    from evtp_cli.models import load_model
    from evtp_cli.pruners import get_pruner
    from evtp_cli.pruners.greedy import covering_radius

    out = Path(results_dir)
    identity = rs.previous_identity(out)
    if identity is None:
        raise EvtpError(f"{out} has no run.json (or results.json with a recorded configuration); give the output folder of a sweep-ratios or prune-eval run")
    done = rs.load_done(out)
    if not done:
        raise EvtpError(f"{out} has no finished samples in samples.jsonl to analyse")
    pruners = [(name, get_pruner(name)) for name in identity["pruners"]]
    skipped: dict[str, str] = {}
    for name, pruner in pruners:
        if getattr(pruner, "stage", "pre-llm") != "pre-llm":
            skipped[name] = f"acts inside the model (stage {pruner.stage}); its kept set is not chosen from the LLM's input tokens"
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    datasets = [(spec, open_dataset(spec)) for spec in identity["datasets"]]

    def scorable(name: str, rec: dict | None) -> bool:  # a finished, scored record of a pruner analysed here
        return name not in skipped and rec is not None and rec.get("status") == "ok" and sample_accuracy(rec) is not None

    for model_spec in identity["models"]:
        model = load_model(model_spec, **_model_overrides(model_spec, device, identity.get("frames")))
        for dataset_spec, dataset in datasets:
            n = len(dataset) if identity.get("limit") is None else min(identity["limit"], len(dataset))
            settings = [(name, pruner, Setting(model_spec, dataset_spec, name, float(r))) for name, pruner in pruners for r in identity["ratios"]]
            if progress is not None:
                progress(f"{model_spec} · {dataset_spec}", n)
            checked = False
            for index in range(n):
                recs = {s.key: done.get(record_key(s, index)) for _, _, s in settings}
                if not any(scorable(name, recs[s.key]) for name, _, s in settings):  # nothing to pair: do not encode
                    if advance is not None:
                        advance()
                    continue
                try:
                    sample = dataset[index]
                    tokens = model.encode(sample, StageTimer(str(model.device)))
                except EvtpError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a sample that fails here failed in the run too, or is noted
                    warnings.append(f"sample {index} of {dataset_spec}: {type(exc).__name__}: {exc}")
                    if advance is not None:
                        advance()
                    continue
                coords = tokens.coords.double()
                unit = _unit(tokens.features)
                for name, pruner, setting in settings:
                    rec = recs[setting.key]
                    if not scorable(name, rec):
                        continue
                    if not checked:  # the model must still predict what the run recorded, or radii and accuracy do not pair
                        warnings += _check_prediction(model, sample, pruner, setting, identity["seed"], rec, IoUAccumulator, JFAccumulator)
                        checked = True
                    try:
                        keep = select_pre_llm(pruner, tokens, setting.ratio, identity["seed"], sample.id).indices
                    except PrunerNotApplicable as exc:
                        skipped[name] = str(exc)
                        continue
                    rows.append({
                        "model": model_spec, "dataset": dataset_spec, "task": sample.task, "pruner": name,
                        "ratio": setting.ratio, "index": index, "id": sample.id, "tokens": tokens.count, "kept": int(keep.numel()),
                        "radius_image": covering_radius(coords, keep.to(coords.device)),
                        "radius_feature": covering_radius(unit, keep.to(unit.device)),
                        "accuracy": sample_accuracy(rec),
                    })
                if advance is not None:
                    advance()
        del model
    samples = pd.DataFrame(rows)
    return CoverageResult(samples, summarise(samples), warnings, skipped, rs.done_fingerprint(done))


def _unit(features):
    import torch

    return torch.nn.functional.normalize(features.double(), dim=-1)


def _check_prediction(model, sample, pruner, setting, seed, rec, iou_cls, jf_cls) -> list[str]:
    """Run one recorded sample again and compare its accuracy with the record."""
    prediction, *_ = run_sample(model, sample, pruner, setting.ratio, seed)
    now = sample_accuracy(score_sample(sample, prediction.masks, iou_cls(), jf_cls()))
    then = sample_accuracy(rec)
    if now is None or then is None or abs(now - then) <= CHECK_TOLERANCE:
        return []
    return [
        f"{setting.model} now scores sample {sample.id} at {now:.4f} under {setting.pruner} @ {setting.ratio:g}, the run recorded "
        f"{then:.4f}: the model or its weights changed since the run, so radii and accuracies may not pair; run the sweep again"
    ]


def summarise(samples) -> Any:
    """Spearman ρ of each radius with accuracy per (model, dataset, pruner, ratio), plus pooled rows per ratio."""
    import pandas as pd

    columns = ["model", "dataset", "pruner", "ratio", "n", "radius_image", "radius_feature", "accuracy", "rho_image", "rho_feature"]
    if samples is None or len(samples) == 0:
        return pd.DataFrame(columns=columns)
    out = []
    for keys, group in samples.groupby(["model", "dataset", "ratio"], sort=False):
        parts = [(pruner, g) for pruner, g in group.groupby("pruner", sort=False)]
        if len(parts) > 1:
            parts.append((ALL_PRUNERS, group))
        for pruner, g in parts:
            out.append({
                "model": keys[0], "dataset": keys[1], "pruner": pruner, "ratio": keys[2], "n": len(g),
                "radius_image": float(g["radius_image"].mean()), "radius_feature": float(g["radius_feature"].mean()),
                "accuracy": float(g["accuracy"].mean()),
                "rho_image": spearman(list(g["radius_image"]), list(g["accuracy"])),
                "rho_feature": spearman(list(g["radius_feature"]), list(g["accuracy"])),
            })
    return pd.DataFrame(out, columns=columns)


def summary_markdown(summary) -> str:
    lines = [
        "Covering radius of the kept tokens (mean over samples) and its Spearman ρ with per-sample accuracy "
        "(IoU for images, J&F for videos); ρ < 0 means better-covered samples are segmented better. "
        "ρ is – where a side is constant or fewer than 3 samples.",
        "",
    ]
    for (model, dataset), group in summary.groupby(["model", "dataset"], sort=False):
        lines += [f"#### {dataset} · {model}", ""]
        lines += ["| pruner | ratio | n | radius (image) | ρ image | radius (feature) | ρ feature | accuracy |", "|---|---|---|---|---|---|---|---|"]
        for _, r in group.iterrows():
            lines.append(
                f"| {r['pruner']} | {r['ratio']:g} | {r['n']} | {fmt_cell(r['radius_image'])} | {fmt_cell(r['rho_image'], 2, signed=True)} | "
                f"{fmt_cell(r['radius_feature'])} | {fmt_cell(r['rho_feature'], 2, signed=True)} | {fmt_cell(r['accuracy'])} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def plot_coverage(samples, summary, out_dir: str | Path) -> list[Path]:
    """Per model × dataset: accuracy against the image-space and the feature-space radius, one colour per
    pruner, one marker per keep ratio; the pooled ρ per ratio in the legend titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from evtp_cli.bench.report import save_figure, slug

    paths: list[Path] = []
    if samples is None or len(samples) == 0:
        return paths
    markers = "os^DvP*X"
    for (model, dataset), group in samples.groupby(["model", "dataset"], sort=False):
        video = group["task"].iloc[0] == "video"
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
        ratios = sorted(group["ratio"].unique())
        pruners = list(dict.fromkeys(group["pruner"]))
        colours = {p: f"C{i % 10}" for i, p in enumerate(pruners)}
        pooled = summary[(summary["model"] == model) & (summary["dataset"] == dataset)]
        for ax, column, label in ((axes[0], "radius_image", "image space (t, y, x)"), (axes[1], "radius_feature", "feature space")):
            for j, ratio in enumerate(ratios):
                for pruner in pruners:
                    g = group[(group["ratio"] == ratio) & (group["pruner"] == pruner)]
                    if g.empty:
                        continue
                    ax.scatter(g[column], g["accuracy"], s=14, alpha=0.7, color=colours[pruner], marker=markers[j % len(markers)],
                               label=pruner if j == 0 else None)
            rho_col = "rho_image" if column == "radius_image" else "rho_feature"
            rhos = []
            for ratio in ratios:
                row = pooled[(pooled["ratio"] == ratio) & (pooled["pruner"].isin([ALL_PRUNERS] if len(pruners) > 1 else pruners))]
                if not row.empty:
                    rhos.append(f"{ratio:g}: {fmt_cell(row.iloc[0][rho_col], 2, signed=True)}")
            ax.set_title(f"{label}\nSpearman ρ by keep ratio, pruners pooled: " + ", ".join(rhos), fontsize=7)
            ax.set_xlabel("covering radius of the kept tokens")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("J&F" if video else "IoU")
        axes[0].legend(fontsize=7, title="pruner", title_fontsize=7)
        for j, ratio in enumerate(ratios):
            axes[1].scatter([], [], color="grey", marker=markers[j % len(markers)], label=f"{ratio:g}")
        axes[1].legend(fontsize=7, title="keep ratio", title_fontsize=7)
        fig.suptitle(f"{dataset} · {model}", fontsize=9)
        paths.append(save_figure(fig, Path(out_dir) / f"coverage_{slug(dataset)}_{slug(model)}.png"))
    return paths


def write_coverage(result: CoverageResult, out_dir: str | Path) -> list[Path]:
    """coverage.csv (per sample), coverage_summary.csv, coverage.md and the plots into `out_dir`."""
    out = Path(out_dir)
    result.samples.to_csv(out / "coverage.csv", index=False)
    result.summary.to_csv(out / "coverage_summary.csv", index=False)
    md = summary_markdown(result.summary)
    if result.skipped:
        md += "\n" + "\n".join(f"- {name}: no radii ({why})" for name, why in result.skipped.items()) + "\n"
    if result.warnings:
        md += "\n" + "\n".join(f"- warning: {w}" for w in result.warnings) + "\n"
    (out / "coverage.md").write_text(f"{COVERAGE_STAMP}{result.records} -->\n" + md)
    return [out / "coverage.csv", out / "coverage_summary.csv", out / "coverage.md", *plot_coverage(result.samples, result.summary, out)]


__all__ = ["ALL_PRUNERS", "CoverageResult", "analyse", "plot_coverage", "spearman", "summarise", "write_coverage"]
