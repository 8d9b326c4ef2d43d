"""The regression gate: compare a current results.json with a baseline.

Rows are matched on (model, dataset, pruner, ratio), with each spec's options in sorted order (so
`synthetic-image:n=6,size=32` matches `synthetic-image:size=32,n=6`). A regression is:
- a baseline row missing from the current results;
- an accuracy metric that drops by more than `max_drop` (absolute), or that is missing or NaN;
- a `ms_total` that grows by more than `max_slowdown` times, or that is missing where the baseline has one;
- more failed samples than the baseline had (the metrics average only the samples that did not fail).
Rows only in the current results are listed as new, not as regressions.
"""

from __future__ import annotations

import math
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


EPS = 1e-9  # float noise: a drop of exactly max_drop is allowed


def _normal(spec: Any) -> Any:
    """A spec with its options sorted, so that option order does not decide a match."""
    from evtp_cli.spec import parse_spec

    if not isinstance(spec, str) or ":" not in spec:
        return spec
    try:
        parsed = parse_spec(spec)
    except Exception:  # a name the registries do not know still matches itself
        return spec
    return parsed.name + ":" + ",".join(f"{k}={v}" for k, v in sorted(parsed.options.items()))


def row_key(row: dict[str, Any]) -> tuple:
    return (_normal(row.get("model")), _normal(row.get("dataset")), _normal(row.get("pruner")),
            round(float(row.get("ratio") or 0.0), 6))


def _number(value: Any) -> float | None:
    """A finite number, else None (missing, NaN, or not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
        return None
    return float(value)


def compare_rows(
    baseline: list[dict[str, Any]],
    current: list[dict[str, Any]],
    max_drop: float = 0.01,
    max_slowdown: float = 1.5,
) -> Comparison:
    result = Comparison()
    now = {row_key(r): r for r in current}
    matched: set[tuple] = set()
    for base in baseline:
        key = row_key(base)
        if key in matched:
            result.changes.append(Change(key, "row", None, None, False, "duplicate baseline row, compared once"))
            continue
        cur = now.get(key)
        if cur is None:
            result.changes.append(Change(key, "row", None, None, True, "missing from current results"))
            continue
        matched.add(key)
        result.compared += 1
        for col in METRIC_COLUMNS:
            b, c = _number(base.get(col)), _number(cur.get(col))
            if b is None:
                continue
            if c is None:
                result.changes.append(Change(key, col, b, None, True, "metric missing or NaN"))
            elif abs(c - b) > EPS:
                result.changes.append(Change(key, col, b, c, b - c > max_drop + EPS))
        b, c = _number(base.get("ms_total")), _number(cur.get("ms_total"))
        if b and not (c and c > 0):
            result.changes.append(Change(key, "ms_total", b, c, True, "latency missing"))
        elif b and c and abs(c / b - 1) > 0.05:
            result.changes.append(Change(key, "ms_total", b, c, c / b > max_slowdown + EPS, f"{c / b:.2f}× baseline"))
        failed_before, failed_now = base.get("n_failed") or 0, cur.get("n_failed") or 0
        if failed_now > failed_before:
            result.changes.append(Change(key, "n_failed", failed_before, failed_now, True, "more failed samples"))
        if (base.get("n_samples") or 0) != (cur.get("n_samples") or 0):
            result.changes.append(Change(key, "n_samples", base.get("n_samples"), cur.get("n_samples"), False, "different sample count"))
    for key in now.keys() - matched:
        result.changes.append(Change(key, "row", None, None, False, "new: not in the baseline"))
    return result
