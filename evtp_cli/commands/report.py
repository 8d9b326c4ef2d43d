"""Commands people read results with: report (report.md), visualize (token maps) and coverage (radius vs accuracy)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from evtp_cli.cli import app, console, print_whole
from evtp_cli.commands import options as opt
from evtp_cli.commands.progress import progress_bar
from evtp_cli.errors import EvtpError

DEFAULT_VIEW_PRUNERS = ["evtp", "kcenter", "divprune", "random", "uniform"]


def _results_dir(path: Path) -> Path:
    if path.is_file() and path.name == "results.json":
        return path.parent
    if not path.is_dir():
        raise EvtpError(f"results folder not found: {str(path)!r} (give the --output folder of a prune-eval or sweep-ratios run)")
    return path


@app.command("report")
def report(
    results_dir: Path = typer.Argument(..., help="Output folder of a prune-eval or sweep-ratios run."),
    versus: Optional[str] = typer.Option(
        None, "--versus", help="Pruner (as the run names it) to compare with every other one, sample by sample (default: evtp, if it ran)."
    ),
) -> None:
    """Write RESULTS_DIR/report.md: provenance, tables, paired differences, plots (accuracy vs ratio and vs latency), failures, coverage."""
    from evtp_cli.bench.report import write_report

    path = write_report(_results_dir(results_dir), versus)
    console.print(f"report: {path}", soft_wrap=True)


@app.command("visualize")
def visualize(
    model: str = opt.Model,
    dataset: str = typer.Option("synthetic-image", "--dataset", "-d", help="Dataset as name[:key=value,...]."),
    sample: Optional[str] = typer.Option(None, "--sample", "-s", help="Sample id, or its index in the dataset (default: the first)."),
    pruners: Optional[List[str]] = opt.Pruners,
    ratio: float = opt.Ratio,
    seed: int = opt.Seed,
    device: str = opt.Device,
    frames: Optional[str] = opt.Frames,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="PNG file, or a folder for it (default: runs/visualize/)."),
) -> None:
    """Draw which visual tokens each pruner keeps on one sample: a PNG grid, frames × (input + pruners)."""
    from evtp_cli.bench.tokenviz import visualize as draw
    from evtp_cli.spec import split_list_option

    specs = split_list_option(pruners or DEFAULT_VIEW_PRUNERS)
    path, maps, picked = draw(model, dataset, sample, specs, ratio, seed=seed, device=device, frames=frames, output=output)
    table = Table(title=f"{picked.id} at keep ratio {ratio:g}", header_style="bold")
    for col in ("pruner", "kept", "covering radius (t, y, x)"):
        table.add_column(col)
    for m in maps:
        table.add_row(m.pruner, str(int(m.keep.numel())), f"{m.radius:.4f}")
    print_whole(table)
    console.print(f"token map: {path}", soft_wrap=True)


@app.command("coverage")
def coverage(
    results_dir: Path = typer.Argument(..., help="Output folder of a sweep-ratios (or prune-eval) run."),
    device: str = opt.Device,
) -> None:
    """Covering radius of each kept set (image and feature space) against per-sample accuracy, with Spearman ρ.

    Re-selects every finished sample of the run exactly as the run did and writes coverage.csv (per sample),
    coverage_summary.csv, coverage.md and one plot per model × dataset into RESULTS_DIR.
    """
    from evtp_cli.bench.coverage import analyse, write_coverage

    folder = _results_dir(results_dir)
    with progress_bar() as (start, advance):
        result = analyse(folder, device=device, progress=start, advance=advance)
    if len(result.samples) == 0:
        why = "; ".join(f"{name} {reason}" for name, reason in result.skipped.items())
        raise EvtpError(f"no sample of {folder} could be analysed: "
                        + (why if why else "no pruned setting has a scored sample") + " (coverage needs a pruner that selects before the LLM)")
    files = write_coverage(result, folder)
    table = Table(title="covering radius vs accuracy (Spearman ρ; < 0: better covered, better segmented)", header_style="bold")
    for col in ("dataset", "pruner", "ratio", "n", "r img", "ρ img", "r feat", "ρ feat", "acc"):
        table.add_column(col, justify="left" if col in ("dataset", "pruner") else "right")
    from evtp_cli.bench.tables import fmt_cell

    for _, r in result.summary.iterrows():
        table.add_row(str(r["dataset"]).split(":")[0].removeprefix("synthetic-"), str(r["pruner"]), f"{r['ratio']:g}", str(r["n"]), fmt_cell(r["radius_image"]),
                      fmt_cell(r["rho_image"], 2, signed=True), fmt_cell(r["radius_feature"]), fmt_cell(r["rho_feature"], 2, signed=True), fmt_cell(r["accuracy"]))
    print_whole(table)
    for name, why in result.skipped.items():
        console.print(f"[yellow]skipped[/yellow] {name}: {why}")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    console.print("wrote: " + ", ".join(str(f) for f in files), soft_wrap=True)
