"""Paired comparison of two pruners on the same samples: is a difference in accuracy more than noise?

Two settings of one run (same model, dataset and keep ratio) score the same samples, so their per-sample
accuracies (IoU on images, J&F on videos, as in samples.jsonl) pair up, and the difference of two rows is
the mean of the per-sample differences (where no sample failed). Pairing removes the spread between easy
and hard samples, which two unpaired means would carry. For each pair of settings:

- the mean difference and its percentile bootstrap interval over samples (resampling sample indices with
  replacement; Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13);
- wins, losses and ties per sample, and the exact two-sided sign test on wins against losses (ties left
  out): a check that needs no assumption about the shape of the differences, which on tiny-ivs are mostly
  0 with a few ±1 (a sample found or lost).

Read it as: an interval that excludes 0 says the two selections differ on this kind of data; one that
includes 0 says this many samples cannot tell them apart, not that they are equal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10_000
_CHUNK = 1_000  # bootstrap resamples drawn at once (bounds memory at _CHUNK × n indices)
TIE = 1e-9  # per-sample differences this small count as ties


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of A minus accuracy of B over the n samples both scored."""

    n: int
    mean: float
    low: float  # bootstrap interval at `confidence`
    high: float
    wins: int  # samples where A is better
    losses: int
    ties: int
    p_sign: float  # exact two-sided sign test
    confidence: float = CONFIDENCE

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "within noise"


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test: P(a split at least this uneven | each non-tied sample is a fair coin)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0
) -> PairedDifference:
    """Compare per-sample accuracies a[i] and b[i] of the same samples (see the module docstring)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    if not len(a):
        raise ValueError("no samples to compare")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = diff.size
    rng = np.random.default_rng(seed)
    means = np.concatenate([
        diff[rng.integers(0, n, size=(min(_CHUNK, resamples - start), n))].mean(1) for start in range(0, resamples, _CHUNK)
    ])
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    wins, losses = int((diff > TIE).sum()), int((diff < -TIE).sum())
    return PairedDifference(
        n=n, mean=float(diff.mean()), low=float(low), high=float(high), wins=wins, losses=losses,
        ties=n - wins - losses, p_sign=sign_test(wins, losses), confidence=confidence,
    )


def sample_accuracy(record: dict[str, Any]) -> float | None:
    """The per-sample accuracy of a samples.jsonl record (J&F for videos, IoU for images), None if not scored."""
    if record.get("status") != "ok":
        return None
    value = record.get("JF", record.get("iou"))
    return None if value is None else float(value)


def paired_rows(records: Iterable[dict[str, Any]], versus: str, **options: Any) -> list[dict[str, Any]]:
    """`versus` against every other pruner of a run, per model × dataset × keep ratio, from samples.jsonl
    records. Samples are matched on their index; a sample that failed under either setting is left out.
    Each row: model, dataset, ratio, pruner, and the PairedDifference of `versus` minus `pruner`."""
    scores: dict[tuple[str, str, float, str], dict[Any, float]] = {}  # index -> accuracy
    for rec in records:
        value = sample_accuracy(rec)
        if value is not None:
            scores.setdefault((rec["model"], rec["dataset"], float(rec["ratio"]), rec["pruner"]), {})[rec["index"]] = value
    rows = []
    for (model, dataset, ratio, pruner), theirs in scores.items():
        ours = scores.get((model, dataset, ratio, versus))
        if pruner == versus or ours is None:
            continue
        common = sorted(ours.keys() & theirs.keys())
        if not common:
            continue
        diff = paired_difference([ours[i] for i in common], [theirs[i] for i in common], **options)
        rows.append({"model": model, "dataset": dataset, "ratio": ratio, "pruner": pruner, "paired": diff})
    return sorted(rows, key=lambda r: (r["model"], r["dataset"], -r["ratio"], r["pruner"]))


def _signed(x: float) -> str:
    return f"{x + 0.0:+.3f}" if abs(x) >= 0.0005 else "+0.000"  # no "-0.000"


def paired_markdown(rows: list[dict[str, Any]], versus: str) -> str:
    """One table per model × dataset: `versus` minus each pruner, by keep ratio."""
    if not rows:
        return ""
    parts = []
    confidence = rows[0]["paired"].confidence
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["dataset"]), []).append(row)
    for (model, dataset), group in groups.items():
        parts += [f"#### {dataset} · {model}", ""]
        parts += [f"| ratio | pruner | n | {versus} − pruner | {confidence:.0%} interval | wins / losses / ties | sign test p | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in group:
            d: PairedDifference = row["paired"]
            parts.append(f"| {row['ratio']:g} | {row['pruner']} | {d.n} | {_signed(d.mean)} | [{_signed(d.low)}, {_signed(d.high)}] "
                         f"| {d.wins} / {d.losses} / {d.ties} | {d.p_sign:.3g} | {d.verdict} |")
        parts.append("")
    return "\n".join(parts) + "\n"
