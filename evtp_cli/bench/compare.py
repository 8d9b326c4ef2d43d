"""The regression gate: compare a current results.json with a baseline.

Rows are matched on (model, dataset, pruner, ratio). A regression is an accuracy metric that drops by
more than `max_drop` (absolute), a `ms_total` that grows by more than `max_slowdown` times, or a baseline
row missing from the current results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from evtp_cli.bench.results import METRIC_COLUMNS


@dataclass
class Change:
    key: tuple
    column: str
    baseline: float | None
    current: float | None
    regression: bool
    note: str = ""


@dataclass
class Comparison:
    changes: list[Change] = field(default_factory=list)
    compared: int = 0

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.regression]

    @property
    def ok(self) -> bool:
        return not self.regressions


def row_key(row: dict[str, Any]) -> tuple:
    return (row.get("model"), row.get("dataset"), row.get("pruner"), round(float(row.get("ratio") or 0.0), 6))


def compare_rows(
    baseline: list[dict[str, Any]],
    current: list[dict[str, Any]],
    max_drop: float = 0.01,
    max_slowdown: float = 1.5,
) -> Comparison:
    result = Comparison()
    now = {row_key(r): r for r in current}
    for base in baseline:
        key = row_key(base)
        cur = now.get(key)
        if cur is None:
            result.changes.append(Change(key, "row", None, None, True, "missing from current results"))
            continue
        result.compared += 1
        for col in METRIC_COLUMNS:
            b, c = base.get(col), cur.get(col)
            if b is None:
                continue
            if c is None:
                result.changes.append(Change(key, col, b, None, True, "metric missing"))
            elif abs(c - b) > 1e-9:
                result.changes.append(Change(key, col, b, c, b - c > max_drop))
        b, c = base.get("ms_total"), cur.get("ms_total")
        if b and c and abs(c / b - 1) > 0.05:
            result.changes.append(Change(key, "ms_total", b, c, c / b > max_slowdown, f"{c / b:.2f}× baseline"))
        if (base.get("n_samples") or 0) != (cur.get("n_samples") or 0):
            result.changes.append(Change(key, "n_samples", base.get("n_samples"), cur.get("n_samples"), False, "different sample count"))
    return result
