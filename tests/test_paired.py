"""Paired differences (evtp_cli.bench.paired): the sign test against hand-computed binomial tails, the
bootstrap interval against its degenerate case and the normal approximation, and the pairing of
samples.jsonl records (`evtp report --versus` on a real sweep: tests/test_report.py)."""

import math

import numpy as np
import pytest

from evtp_cli.bench.paired import paired_difference, paired_rows, sign_test


@pytest.mark.parametrize(
    "wins,losses,expected",
    [
        (0, 0, 1.0),
        (3, 3, 1.0),  # the two tails overlap: capped at 1
        (0, 5, 2 / 32),  # both tails of Binomial(5, 1/2) at the extremes
        (9, 1, 2 * (1 + 10) / 1024),  # P(X <= 1) = (C(10,0) + C(10,1)) / 2^10, doubled
        (2, 7, 2 * (1 + 9 + 36) / 512),
    ],
)
def test_sign_test_is_the_exact_binomial_tail(wins, losses, expected):
    assert sign_test(wins, losses) == pytest.approx(expected, rel=1e-12)
    assert sign_test(losses, wins) == sign_test(wins, losses)


def test_sign_test_of_many_samples_matches_exact_integer_arithmetic():
    wins, losses = 1800, 1950  # big-integer binomial coefficients: the straightforward form
    n = wins + losses
    exact = 2 * sum(math.comb(n, i) for i in range(wins + 1)) / 2**n
    assert sign_test(wins, losses) == pytest.approx(exact, rel=1e-9)


def test_constant_difference_has_a_point_interval():
    a = [0.9, 0.5, 0.7, 0.2]
    d = paired_difference(a, [x - 0.25 for x in a])
    assert d.mean == pytest.approx(0.25) and d.low == pytest.approx(0.25) and d.high == pytest.approx(0.25)
    assert (d.wins, d.losses, d.ties, d.n) == (4, 0, 0, 4)
    assert d.p_sign == pytest.approx(2 / 16) and d.verdict == "within noise"  # 4 of 4 is a fair coin 1 time in 8
    ten = paired_difference([1.0] * 10, [0.0] * 10)
    assert ten.p_sign == pytest.approx(2 / 1024) and ten.verdict == "better"
    assert paired_difference([0.0] * 10, [1.0] * 10).verdict == "worse"


def test_verdict_needs_the_interval_and_the_sign_test_to_agree():
    # 4 samples found, none lost, 36 alike: the bootstrap interval excludes 0, the sign test does not reject
    d = paired_difference([1.0] * 4 + [0.5] * 36, [0.0] * 4 + [0.5] * 36)
    assert d.low > 0 and d.p_sign == pytest.approx(0.125) and d.verdict == "within noise"


def test_bootstrap_interval_matches_the_normal_approximation_for_a_large_sample():
    rng = np.random.default_rng(3)
    n = 2000
    b = rng.uniform(size=n)
    a = b + rng.normal(0.02, 0.2, size=n)
    d = paired_difference(a, b, seed=1)
    diff = a - b
    half = 1.959964 * diff.std(ddof=1) / math.sqrt(n)  # mean ± z·s/√n, the textbook interval
    assert d.mean == pytest.approx(diff.mean())
    assert d.low == pytest.approx(diff.mean() - half, abs=0.1 * half)
    assert d.high == pytest.approx(diff.mean() + half, abs=0.1 * half)
    assert d.wins + d.losses + d.ties == n


def test_swapping_the_sides_mirrors_everything():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, 50).astype(float), rng.integers(0, 2, 50).astype(float)  # found / not found, as on tiny-ivs
    ab, ba = paired_difference(a, b, seed=5), paired_difference(b, a, seed=5)
    assert ab.mean == pytest.approx(-ba.mean) and ab.low == pytest.approx(-ba.high) and ab.high == pytest.approx(-ba.low)
    assert (ab.wins, ab.losses, ab.ties) == (ba.losses, ba.wins, ba.ties) and ab.p_sign == ba.p_sign
    assert paired_difference(a, b, seed=5) == ab  # seeded: the same interval every time


def test_bad_input():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="no samples"):
        paired_difference([], [])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([1.0], [0.0], confidence=1.0)


def _rec(pruner, ratio, index, value, status="ok", dataset="d", key="iou"):
    rec = {"model": "m", "dataset": dataset, "pruner": pruner, "ratio": ratio, "index": index, "status": status}
    if status == "ok":
        rec[key] = value
    return rec


def test_records_pair_on_the_sample_index_and_skip_failures():
    records = [
        _rec("evtp", 0.1, 0, 1.0), _rec("evtp", 0.1, 1, 0.0), _rec("evtp", 0.1, 2, 1.0), _rec("evtp", 0.1, 3, 0.0, status="failed"),
        _rec("kcenter", 0.1, 2, 0.5), _rec("kcenter", 0.1, 1, 1.0), _rec("kcenter", 0.1, 0, 1.0), _rec("kcenter", 0.1, 3, 1.0),
        _rec("kcenter", 0.2, 0, 1.0),  # no evtp at 0.2: nothing to pair
        _rec("none", 1.0, 0, 1.0),
        _rec("evtp", 0.1, 0, 0.25, dataset="v", key="JF"), _rec("random", 0.1, 0, 0.75, dataset="v", key="JF"),
    ]
    rows = paired_rows(records, "evtp")
    assert [(r["dataset"], r["ratio"], r["pruner"]) for r in rows] == [("d", 0.1, "kcenter"), ("v", 0.1, "random")]
    d = rows[0]["paired"]  # samples 0, 1, 2: differences 0, -1, +0.5 (sample 3 failed under evtp)
    assert (d.n, d.wins, d.losses, d.ties) == (3, 1, 1, 1) and d.mean == pytest.approx(-0.5 / 3)
    assert rows[1]["paired"].mean == pytest.approx(-0.5)  # videos pair on J&F


def test_records_without_an_index_are_skipped_and_the_latest_record_counts():
    records = [
        _rec("evtp", 0.1, None, 1.0), _rec("kcenter", 0.1, None, 0.0),  # folders older than the index
        _rec("evtp", 0.1, 0, 1.0), _rec("kcenter", 0.1, 0, 0.0),
        _rec("evtp", 0.1, 1, 1.0), _rec("kcenter", 0.1, 1, 0.0), _rec("kcenter", 0.1, 1, 0.0, status="failed"),
        _rec("evtp", 0.1, 2, 0.0), _rec("evtp", 0.1, 2, 1.0), _rec("kcenter", 0.1, 2, 1.0),
    ]
    (row,) = paired_rows(records, "evtp")
    assert (row["paired"].n, row["paired"].wins, row["paired"].ties) == (2, 1, 1)  # 0: won; 1: failed last; 2: tie


def test_records_pair_on_any_hashable_index():
    # benchmarks/paired_pooled.py pools runs by indexing samples with (run, dataset, index)
    records = [_rec("evtp", 0.1, ("r1", "d", 0), 1.0), _rec("evtp", 0.1, ("r2", "d", 0), 0.0),
               _rec("kcenter", 0.1, ("r1", "d", 0), 0.0), _rec("kcenter", 0.1, ("r2", "d", 0), 0.0)]
    (row,) = paired_rows(records, "evtp")
    assert (row["paired"].n, row["paired"].wins, row["paired"].ties) == (2, 1, 1)


def test_not_worse_fails_on_a_real_loss_and_passes_a_tie():
    from evtp_cli.bench.quality import not_worse

    lost = [_rec("evtp", 0.1, i, 0.0 if i < 10 else 1.0) for i in range(40)] + [_rec("kcenter", 0.1, i, 1.0) for i in range(40)]
    ok, measured = not_worse(lost, "kcenter", 0.1)
    assert not ok and "lost 10 of 40" in measured  # interval below 0, sign test p = 2/1024
    tied = [_rec("evtp", 0.1, i, float(i % 2)) for i in range(40)] + [_rec("kcenter", 0.1, i, float((i + 1) % 2)) for i in range(40)]
    assert not_worse(tied, "kcenter", 0.1)[0]  # 20 won, 20 lost: within noise
    with pytest.raises(ValueError, match="no paired samples of evtp and divprune at 0.1"):
        not_worse(tied, "divprune", 0.1)
