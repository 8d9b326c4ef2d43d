"""tiny-ivs quality bars (issue 3), on test data with seeds and object counts other than the defaults.

One test per bar and case; the cases, bars and their judging live in `evtp_cli.bench.quality` (shared
with `benchmarks/quality_bars.py`, which prints the README's table).

Bars the shipped model and the EVTP defaults do not meet are listed in KNOWN_MISSES and marked as strict
expected failures: the miss is on record (README, "Quality bars"; the issue note), and the day a bar starts
to hold the test fails until the entry is removed. The numbers are seeded, so each outcome is fixed.

A second, weaker check runs on the same evaluations: EVTP is not worse than any baseline beyond noise
(`test_evtp_not_worse_beyond_noise`). It guards against a real loss; it does not make a missed bar hold.
"""

from __future__ import annotations

import pytest

from evtp_cli.bench.quality import BARS, BASELINES, CASES, RATIOS, RecordLog, Scores, case_scores, judge, not_worse
from evtp_cli.models import load_model

# (dataset, bar) pairs that the shipped tiny-ivs weights and EVTP defaults miss (measured; see the module docstring)
KNOWN_MISSES: set[tuple[str, str]] = {
    ("synthetic-image:n=120,seed=0", "evtp>=kcenter@0.1"),
    ("synthetic-image:n=120,seed=0", "evtp>=divprune@0.1"),
    ("synthetic-image:n=120,seed=0", "evtp>=kcenter@0.2"),
    ("synthetic-image:n=120,seed=0", "evtp>=divprune@0.2"),
    ("synthetic-image:n=120,seed=7,objects=6", "evtp>=divprune@0.1"),
    ("synthetic-video:n=40,seed=5,objects=6", "evtp>=kcenter@0.1"),
    ("synthetic-video:n=40,seed=5,objects=6", "evtp>=divprune@0.1"),
}


def _params():
    for dataset in CASES:
        for bar in BARS:
            marks = [pytest.mark.slow]
            if (dataset, bar) in KNOWN_MISSES:
                marks.append(pytest.mark.xfail(strict=True, reason="known miss of the shipped model (README, Quality bars)"))
            yield pytest.param(dataset, bar, marks=marks, id=f"{dataset}|{bar}")


@pytest.fixture(scope="module")
def evaluated():
    """(dataset) -> ({(pruner, ratio): score}, per-sample records), evaluated once per dataset for all of its checks."""
    model = load_model("tiny-ivs")
    cache: dict[str, tuple[Scores, RecordLog]] = {}

    def get(dataset_spec: str) -> tuple[Scores, RecordLog]:
        if dataset_spec not in cache:
            log = RecordLog()
            cache[dataset_spec] = (case_scores(model, dataset_spec, log), log)
        return cache[dataset_spec]

    return get


@pytest.mark.parametrize("dataset_spec,bar", list(_params()))
def test_quality_bar(evaluated, dataset_spec, bar):
    score, _ = evaluated(dataset_spec)
    holds, measured = judge(score, dataset_spec, bar)
    table = " ".join(f"{p}@{r}={v:.3f}" for (p, r), v in sorted(score.items()))
    assert holds, f"{measured}  [{table}]"


@pytest.mark.slow
@pytest.mark.parametrize("dataset_spec", list(CASES))
@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("name", BASELINES)
def test_evtp_not_worse_beyond_noise(evaluated, dataset_spec, ratio, name):
    """Weaker than the bars, and no substitute for them: EVTP never loses to a baseline by more than the
    case's samples can tell (the paired comparison's verdict is not `worse`; evtp_cli.bench.paired)."""
    _, records = evaluated(dataset_spec)
    ok, measured = not_worse(records, name, ratio)
    assert ok, measured
