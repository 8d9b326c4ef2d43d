"""Dataset commands: `evtp make-synthetic` writes synthetic samples in a public dataset layout."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from evtp_cli.cli import app, console


@app.command("make-synthetic")
def make_synthetic(
    fmt: str = typer.Option(
        ..., "--format", "-f",
        help="Layout: refcoco, refcoco+, refcocog, grefcoco, reasonseg, mevis, refytvos, davis17 or revos.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the dataset into (created if missing)."),
    n: int = typer.Option(20, "--n", "-n", help="Number of samples (images or videos, one expression each)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic scenes (the same seed gives the same samples)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to write (default: the format's evaluation split)."),
    size: Optional[int] = typer.Option(None, "--size", help="Frame size in pixels (multiple of 4)."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Frames per video (video formats)."),
) -> None:
    """Write synthetic samples in a public dataset layout, to run a real reader offline."""
    from evtp_cli.data.export import export_synthetic

    result = export_synthetic(fmt, out, n=n, seed=seed, split=split, size=size, frames=frames)
    console.print(f"wrote {result.count} samples in the {fmt} layout to {result.root}")
    console.print(f"  load with:     --dataset {result.spec}", highlight=False, soft_wrap=True)
    console.print(f"  same samples:  --dataset {result.source}", highlight=False, soft_wrap=True)
