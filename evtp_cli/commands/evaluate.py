"""Evaluation commands: prune-eval, sweep-ratios and the regression gate compare."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from evtp_cli.cli import app, console, err_console, print_whole
from evtp_cli.commands import options as opt
from evtp_cli.commands.progress import progress_bar
from evtp_cli.errors import EvtpError


def _default_output(command: str) -> Path:
    from evtp_cli.bench.distributed import Shard

    if Shard.from_env().sharded:  # every rank must write into the same folder
        raise EvtpError("give --output when running under torchrun (every process writes into that folder)")
    return Path("runs") / f"{command}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


EXIT_TOO_MANY_FAILURES = 3
MAX_IDS_SHOWN = 10


def _run_with_progress(config):
    """Run with a progress bar (rank 0 only under torchrun); returns the RunOutcome."""
    from evtp_cli.bench.distributed import Shard
    from evtp_cli.bench.runner import execute

    if not Shard.from_env().main:
        return execute(config)
    with progress_bar() as (start, advance):
        return execute(config, progress=start, advance=advance)


def _summarise(outcome, title: str) -> None:
    from evtp_cli.bench.tables import results_table

    rows, output = outcome.rows, outcome.output
    print_whole(results_table(rows, title=title))
    for r in rows:
        if r.get("not_applicable"):
            console.print(f"[yellow]not applicable:[/yellow] {r['pruner']} on {r['model']}: {r['not_applicable']}")
    if outcome.reused:
        console.print(f"resumed: {outcome.reused} finished sample record(s) reused from {output / 'samples.jsonl'}")
    for dataset, ids in outcome.failed.items():
        if not ids:
            continue
        shown = ", ".join(ids[:MAX_IDS_SHOWN]) + (f" … and {len(ids) - MAX_IDS_SHOWN} more" if len(ids) > MAX_IDS_SHOWN else "")
        console.print(f"[yellow]{len(ids)} failed sample(s)[/yellow] in {dataset}, left out of the metrics: {shown}", highlight=False)
        reason = outcome.reasons.get(ids[0])
        if reason:
            console.print(f"  first reason ({ids[0]}): {reason}", highlight=False, soft_wrap=True)
    console.print(f"results: {output / 'results.json'}, {output / 'results.csv'}, {output / 'samples.jsonl'}", soft_wrap=True)


def _finish(outcome, config) -> None:
    """Exit code 3 (after the summary) when --max-failures stopped the run."""
    if outcome.stopped:
        from evtp_cli.bench.runner import too_many_message

        if outcome.main:
            err_console.print(f"[bold red]error:[/bold red] {too_many_message(outcome, config.max_failures)}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_TOO_MANY_FAILURES)


@app.command("prune-eval")
def prune_eval(
    model: str = opt.Model,
    dataset: Optional[List[str]] = opt.Dataset,
    pruner: str = opt.Pruner,
    ratio: float = opt.Ratio,
    limit: Optional[int] = opt.Limit,
    seed: int = opt.Seed,
    output: Optional[Path] = opt.Output,
    device: str = opt.Device,
    frames: Optional[str] = opt.Frames,
    predict_only: bool = typer.Option(False, "--predict-only", help="Write prediction masks in the challenge layout (zipped) instead of scoring; for splits without public ground truth."),
    resume: bool = opt.Resume,
    overwrite: bool = opt.Overwrite,
    max_failures: Optional[int] = opt.MaxFailures,
    warmup: int = opt.Warmup,
) -> None:
    """Evaluate one model × dataset(s) × one pruner at one keep ratio, beside the no-pruning reference.

    With no arguments: tiny-ivs on synthetic-image (test split) with EVTP at 0.2.
    """
    from evtp_cli.bench.runner import RunConfig, parse_ratios
    from evtp_cli.spec import split_list_option

    parse_ratios([ratio])
    datasets = split_list_option(dataset or [opt.DEFAULT_DATASET])
    output = output or _default_output("prune-eval")
    config = RunConfig(
        models=[model], datasets=datasets, pruners=[pruner], ratios=[ratio], output=output, limit=limit, seed=seed, device=device,
        frames=frames, predict_only=predict_only, resume=resume, overwrite=overwrite, max_failures=max_failures, warmup=warmup,
    )
    outcome = _run_with_progress(config)
    if outcome.main:
        _summarise(outcome, f"{pruner} at keep ratio {ratio:g}")
        for row in outcome.rows:
            if row.get("predictions_zip"):
                console.print(f"predictions for {row['pruner']} @ {row['ratio']:g}: {row['predictions_zip']}", soft_wrap=True)
    _finish(outcome, config)


@app.command("sweep-ratios")
def sweep_ratios(
    models: Optional[List[str]] = opt.Models,
    datasets: Optional[List[str]] = opt.Datasets,
    pruners: Optional[List[str]] = opt.Pruners,
    ratios: Optional[List[str]] = opt.Ratios,
    limit: Optional[int] = opt.Limit,
    seed: int = opt.Seed,
    output: Optional[Path] = opt.Output,
    device: str = opt.Device,
    frames: Optional[str] = opt.Frames,
    resume: bool = opt.Resume,
    overwrite: bool = opt.Overwrite,
    max_failures: Optional[int] = opt.MaxFailures,
    warmup: int = opt.Warmup,
) -> None:
    """Models × datasets × pruners × keep ratios, with one no-pruning reference per model × dataset.

    Writes results.json/csv, samples.jsonl, table.md, and per model × dataset an accuracy-vs-ratio and an
    accuracy-vs-latency (Pareto) plot. Under torchrun the samples are split across the processes.
    """
    from evtp_cli.bench.report import (
        plot_accuracy_vs_latency,
        plot_accuracy_vs_ratio,
        table_markdown,
    )
    from evtp_cli.bench.runner import RunConfig
    from evtp_cli.spec import split_list_option

    output = output or _default_output("sweep-ratios")
    config = RunConfig(
        models=split_list_option(models or ["tiny-ivs"]),
        datasets=split_list_option(datasets or opt.DEFAULT_SWEEP_DATASETS),
        pruners=split_list_option(pruners or opt.DEFAULT_SWEEP_PRUNERS),
        ratios=split_list_option(ratios or opt.DEFAULT_SWEEP_RATIOS),
        output=output,
        limit=limit,
        seed=seed,
        device=device,
        frames=frames,
        resume=resume,
        overwrite=overwrite,
        max_failures=max_failures,
        warmup=warmup,
    )
    outcome = _run_with_progress(config)
    if outcome.main:
        rows = outcome.rows
        (output / "table.md").write_text(table_markdown(rows))
        plots = plot_accuracy_vs_ratio(rows, output) + plot_accuracy_vs_latency(rows, output)
        _summarise(outcome, "sweep")
        console.print(f"table: {output / 'table.md'}; plots: {', '.join(str(p) for p in plots)}", soft_wrap=True)
        console.print(f"report: evtp report {output}", soft_wrap=True)
    _finish(outcome, config)


@app.command("compare")
def compare(
    baseline: Path = typer.Argument(..., help="Baseline results.json (or a run folder)."),
    current: Path = typer.Argument(..., help="Current results.json (or a run folder)."),
    max_drop: float = typer.Option(0.01, "--max-drop", help="Largest allowed absolute accuracy drop."),
    max_slowdown: float = typer.Option(1.5, "--max-slowdown", help="Largest allowed ms_total ratio current/baseline."),
) -> None:
    """Regression gate: exit 1 when accuracy drops or latency grows past the tolerances."""
    from evtp_cli.bench.compare import compare_rows
    from evtp_cli.bench.results import read_results

    if max_drop < 0 or max_slowdown <= 0:
        raise EvtpError("--max-drop must be >= 0 and --max-slowdown > 0")
    base = read_results(baseline)["rows"]
    cur = read_results(current)["rows"]
    if not base:
        raise EvtpError(f"the baseline {str(baseline)!r} has no rows, so nothing can be compared; point at a run's results")
    result = compare_rows(base, cur, max_drop=max_drop, max_slowdown=max_slowdown)
    if result.changes:
        table = Table(title="what moved", header_style="bold")
        several_models = len({ch.key[0] for ch in result.changes}) > 1
        for col in (["model"] if several_models else []) + ["dataset", "pruner", "ratio", "column", "baseline", "current", "verdict"]:
            table.add_column(col)
        for ch in result.changes:
            model, dataset, pruner, ratio = ch.key
            fmt = lambda v: "–" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
            verdict = "[red]REGRESSION[/red]" if ch.regression else "ok"
            cells = [str(dataset), str(pruner), f"{ratio:g}", ch.column, fmt(ch.baseline), fmt(ch.current), f"{verdict} {ch.note}".strip()]
            table.add_row(*([str(model)] if several_models else []), *cells)
        print_whole(table)
    if result.ok:
        console.print(f"[green]no regression[/green] in {result.compared} matched rows (max drop {max_drop}, max slowdown {max_slowdown}×)")
        return
    console.print(f"[red]{len(result.regressions)} regression(s)[/red] in {result.compared} matched rows")
    raise typer.Exit(1)
