"""Shared option aliases for the Typer commands, so every command spells an option the same way."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

DEFAULT_DATASET = "synthetic-image"
DEFAULT_SWEEP_DATASETS = [DEFAULT_DATASET, "synthetic-video"]
DEFAULT_SWEEP_PRUNERS = ["evtp", "kcenter", "divprune", "random", "uniform"]
DEFAULT_SWEEP_RATIOS = ["0.1", "0.2", "0.3", "0.5"]

Model = typer.Option("tiny-ivs", "--model", "-m", help="Model as name[:key=value,...], e.g. tiny-ivs.")
# the list options also answer to the singular (--model, as prune-eval spells it)
Models = typer.Option(None, "--models", "--model", "-m", help="Models (repeat the flag or separate with commas); default: tiny-ivs.")
Dataset = typer.Option(None, "--dataset", "-d", help=f"Dataset as name[:key=value,...]; repeat for several; default: {DEFAULT_DATASET}.")
Datasets = typer.Option(
    None, "--datasets", "--dataset", "-d", help=f"Datasets (repeat the flag or separate with commas); default: {', '.join(DEFAULT_SWEEP_DATASETS)}."
)
Pruner = typer.Option("evtp", "--pruner", "-p", help="Pruner as name[:key=value,...], e.g. evtp:spatial_weight=0.5.")
Pruners = typer.Option(
    None, "--pruners", "--pruner", "-p", help=f"Pruners (repeat the flag or separate with commas); default: {', '.join(DEFAULT_SWEEP_PRUNERS)}."
)
Ratio = typer.Option(0.2, "--ratio", "-r", help="Keep ratio in (0, 1]: the fraction of visual tokens kept.")
Ratios = typer.Option(
    None, "--ratios", "--ratio", "-r", help=f"Keep ratios (repeat the flag or separate with commas); default: {', '.join(DEFAULT_SWEEP_RATIOS)}."
)
Limit = typer.Option(None, "--limit", "-n", help="Evaluate at most this many samples per dataset.")
Seed = typer.Option(0, "--seed", help="Seed for random pruners and anything else stochastic.")
Output = typer.Option(None, "--output", "-o", help="Output folder for results.json, results.csv and samples.jsonl.")
Device = typer.Option("cpu", "--device", help="Torch device, e.g. cpu, cuda, cuda:1.")
Resume = typer.Option(False, "--resume", help="Finish the run in --output: reuse its finished samples, evaluate the rest.")
Overwrite = typer.Option(False, "--overwrite", help="Replace the run --output holds (its results and samples) instead of refusing.")
MaxFailures = typer.Option(
    None, "--max-failures", help="Stop (exit code 3) once more than N samples failed, after writing what finished; default: no limit."
)
Warmup = typer.Option(
    1, "--warmup", min=0, help="Run the first N samples of each dataset once untimed before timing them (lazy initialisation, CUDA kernels, autotuning); 0 times every first run."
)
Frames = typer.Option(
    None, "--frames", help="Key frames the LLM sees in a video: first-K (Sa2VA protocol) or uniform-K; default: the model's own. Masks are scored on all frames."
)

__all__ = ["List", "Optional", "Path"]
