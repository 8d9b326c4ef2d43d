"""Rich tables for result rows: accuracy beside latency, one line per setting, narrow enough for 80 columns."""

from __future__ import annotations

from typing import Any, Iterable

from rich import box
from rich.table import Table

from evtp_cli.spec import parse_spec


def fmt_cell(value: Any, digits: int = 3, signed: bool = False) -> str:
    """A table cell: floats to `digits` places (with a sign when `signed`), "–" for a missing or NaN value."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return str(value)


def _accuracy(row: dict[str, Any]) -> tuple[str, str]:
    """(primary, secondary) accuracy: gIoU and cIoU for images, J&F and "J/F" for videos."""
    if row.get("task") == "video":
        return f"{fmt_cell(row.get('JF'))} J&F", f"{fmt_cell(row.get('J'), 2)}/{fmt_cell(row.get('F'), 2)} J/F"
    return f"{fmt_cell(row.get('giou'))} gIoU", f"{fmt_cell(row.get('ciou'), 2)} cIoU"


def _bare_name(spec: str) -> str:
    return parse_spec(spec).name if ":" in spec else spec


def results_table(rows: Iterable[dict[str, Any]], title: str | None = None) -> Table:
    rows = list(rows)
    models = sorted({str(r.get("model")) for r in rows})
    if len(models) == 1:
        title = f"{title} · {models[0]}" if title else models[0]
    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    header = [("dataset", "left"), ("n", "right"), ("pruner", "left"), ("ratio", "right"), ("tokens", "right"),
              ("accuracy", "left"), ("ms", "right"), ("speed-up", "right")]
    if len(models) > 1:
        header.insert(0, ("model", "left"))
    # the bare name is enough unless two different specs share it (synthetic-image with two seeds)
    specs_by_name: dict[str, set[str]] = {}
    for r in rows:
        specs_by_name.setdefault(_bare_name(str(r.get("dataset"))), set()).add(str(r.get("dataset")))
    body = []
    for r in rows:
        kept, total = r.get("tokens_kept"), r.get("tokens_total")
        tokens = "–" if kept is None else f"{kept:.0f}/{total:.0f}" if total is not None else f"{kept:.0f}"
        dataset = str(r.get("dataset"))
        name = _bare_name(dataset) if len(specs_by_name[_bare_name(dataset)]) == 1 else dataset
        n = str(r.get("n_samples")) + (f" ({r['n_failed']} failed)" if r.get("n_failed") else "")
        primary, _ = _accuracy(r)
        speedup = r.get("speedup")
        cells = [name, n, str(r.get("pruner")), fmt_cell(r.get("ratio"), 2), tokens, primary,
                 fmt_cell(r.get("ms_total"), 1), "–" if speedup is None else f"{speedup:.2f}×"]
        if len(models) > 1:
            cells.insert(0, str(r.get("model")))
        body.append(cells)
    for i, (col, justify) in enumerate(header):
        if col in ("model", "pruner", "dataset"):
            # long specs (evtp:spatial_weight=0.25,mode=global) fold onto more lines
            table.add_column(col, justify=justify, overflow="fold", max_width=32)
        else:
            # numbers and headers are never cut to "…"
            width = max([len(col)] + [len(cells[i]) for cells in body])
            table.add_column(col, justify=justify, no_wrap=True, min_width=width)
    for cells in body:
        table.add_row(*cells)
    return table
