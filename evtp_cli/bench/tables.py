"""Rich tables for result rows: accuracy beside latency, one line per setting."""

from __future__ import annotations

from typing import Any, Iterable

from rich.table import Table

_METRICS_BY_TASK = {"image": ("giou", "ciou"), "video": ("J", "F", "JF")}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def results_table(rows: Iterable[dict[str, Any]], title: str | None = None) -> Table:
    rows = list(rows)
    tasks = {r.get("task") for r in rows}
    metric_cols = [m for t in ("image", "video") if t in tasks for m in _METRICS_BY_TASK[t]]
    table = Table(title=title, header_style="bold")
    for col in ("model", "dataset", "pruner", "ratio", "n", "tokens kept"):
        table.add_column(col, justify="right" if col in ("ratio", "n", "tokens kept") else "left")
    for m in metric_cols:
        table.add_column(m, justify="right")
    for col in ("ms/sample", "ms prefill", "speedup"):
        table.add_column(col, justify="right")
    for r in rows:
        kept = r.get("tokens_kept")
        total = r.get("tokens_total")
        tokens = "–" if kept is None else f"{kept:.0f}/{total:.0f}" if total is not None else f"{kept:.0f}"
        n = _fmt(r.get("n_samples"))
        if r.get("n_failed"):
            n += f" ({r['n_failed']} failed)"
        speedup = r.get("speedup")
        table.add_row(
            str(r.get("model")),
            str(r.get("dataset")),
            str(r.get("pruner")),
            _fmt(r.get("ratio"), 2),
            n,
            tokens,
            *(_fmt(r.get(m)) for m in metric_cols),
            _fmt(r.get("ms_total"), 1),
            _fmt(r.get("ms_prefill"), 2),
            "–" if speedup is None else f"{speedup:.2f}×",
        )
    return table
