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

The verdict says `better` or `worse` only when both agree: the interval excludes 0 *and* the sign test
rejects at the same level. Either alone is too eager where few samples differ, as on tiny-ivs: the
percentile interval of 4 wins and 0 losses in 40 samples excludes 0, while a fair coin gives such a split
one time in eight. Read `within noise` as: this many samples cannot tell the two apart, not that they
are equal.

ReVOS is the exception to "the mean difference is the difference of the rows": its row J&F averages its
two subsets (referring, reasoning), while the pairing averages samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evtp_cli.bench.results import sample_accuracy
from evtp_cli.bench.tables import fmt_cell

CONFIDENCE = 0.95
RESAMPLES = 5_000  # enough for a 95 % percentile interval; about 0.3 s at 5000 samples
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
        """`better` / `worse` (A against B) when the interval excludes 0 and the sign test agrees, else `within noise`."""
        agreed = self.p_sign < 1 - self.confidence
        if agreed and self.low > TIE:
            return "better"
        if agreed and self.high < -TIE:
            return "worse"
        return "within noise"


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test: P(a split at least this uneven | each non-tied sample is a fair coin).
    The binomial tail is summed in log space (lgamma), so thousands of samples cost microseconds."""
    n = wins + losses
    if n == 0:
        return 1.0
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(min(wins, losses) + 1)]
    top = max(log_terms)
    log_tail = top + math.log(sum(math.exp(t - top) for t in log_terms)) - n * math.log(2)
    return min(1.0, 2 * math.exp(log_tail))


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
        np.take(diff, rng.integers(0, n, size=(min(_CHUNK, resamples - start), n), dtype=np.int32)).mean(1)
        for start in range(0, resamples, _CHUNK)
    ])
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    wins, losses = int((diff > TIE).sum()), int((diff < -TIE).sum())
    return PairedDifference(
        n=n, mean=float(diff.mean()), low=float(low), high=float(high), wins=wins, losses=losses,
        ties=n - wins - losses, p_sign=sign_test(wins, losses), confidence=confidence,
    )


def paired_rows(records: Iterable[dict[str, Any]], versus: str, **options: Any) -> list[dict[str, Any]]:
    """`versus` against every other pruner of a run, per model × dataset × keep ratio, from samples.jsonl
    records. Samples are matched on their index; a sample that failed under either setting is left out,
    as are records without an index (results folders older than the index). A sample recorded twice
    counts with its latest record, as `--resume` reads it. Each row: model, dataset, ratio, pruner, and
    the PairedDifference of `versus` minus `pruner`."""
    scores: dict[tuple[str, str, float, str], dict[Any, float]] = {}  # index -> accuracy
    for rec in records:
        if rec.get("index") is None:
            continue
        setting = scores.setdefault((rec["model"], rec["dataset"], float(rec["ratio"]), rec["pruner"]), {})
        value = sample_accuracy(rec) if rec.get("status") == "ok" else None
        if value is None:
            setting.pop(rec["index"], None)
        else:
            setting[rec["index"]] = value
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
    return fmt_cell(x + 0.0, signed=True)  # + 0.0: an exact zero prints as +0.000; a small loss stays -0.000


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
