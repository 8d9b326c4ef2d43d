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

from evtp_cli.bench.quality import (
    BARS,
    BASELINES,
    CASES,
    RATIOS,
    RecordLog,
    Scores,
    bars_on_rows,
    case_scores,
    judge,
    not_worse,
    setting_label,
)
from evtp_cli.models import load_model
from evtp_cli.pruners import list_pruners

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


# --- the bars judged on finished rows (benchmarks/bars_on_runs.py): by hand, no model needed ---------------


def _row(dataset, task, pruner, ratio, value):
    metric = {"image": "giou", "video": "JF"}[task]
    return {"model": "m", "dataset": dataset, "task": task, "pruner": pruner, "ratio": ratio, "giou": None, "JF": None, metric: value}


def test_setting_label_folds_spellings_of_one_setting():
    assert setting_label("evtp") == "evtp"
    assert setting_label("evtp:mode=per-frame,spatial_weight=0.5,info_weight=1") == "evtp"  # all defaults
    assert setting_label("evtp:mode=global,spatial_weight=0.25") == "evtp:spatial_weight=0.25,mode=global"  # config order
    assert setting_label("kcenter") == "kcenter"


@pytest.mark.parametrize("name", list_pruners())
def test_a_pruners_defaults_label_as_its_bare_name(name):
    """Spelled bare, or recorded by a run with every default (as results.json gives it back): no options shown."""
    from evtp_cli.bench.runner import options_of
    from evtp_cli.pruners import get_pruner

    assert setting_label(name) == name
    assert setting_label(name, options_of(get_pruner(name))) == name


def test_bars_on_rows_by_hand():
    rows = [
        _row("img", "image", "none", 1.0, 1.0),
        _row("img", "image", "evtp", 0.1, 0.90),
        _row("img", "image", "evtp:spatial_weight=0.5,mode=per-frame", 0.1, 0.90),  # the default spelled out: one setting
        _row("img", "image", "evtp:spatial_weight=0.25", 0.1, 0.80),
        _row("img", "image", "kcenter", 0.1, 0.85),
        _row("img", "image", "divprune", 0.1, 0.90),  # a tie holds, as in `judge`
        _row("img", "image", "random", 0.1, 0.99),  # not a baseline asked for
        _row("img", "image", "evtp", 0.3, 0.10),  # not a ratio asked for
        _row("img", "image", "kcenter", 0.3, 0.95),
        _row("vid", "video", "evtp", 0.1, 0.70),  # J&F, not gIoU, on video
        _row("vid", "video", "kcenter", 0.1, 0.71),
    ]
    checks = bars_on_rows(rows, "evtp", ["kcenter", "divprune"], [0.1, 0.2])
    found = {(c.setting, c.dataset, c.baseline): (c.ours, c.theirs, c.holds) for c in checks}
    assert found == {
        ("evtp", "img", "kcenter"): (0.90, 0.85, True),
        ("evtp", "img", "divprune"): (0.90, 0.90, True),
        ("evtp:spatial_weight=0.25", "img", "kcenter"): (0.80, 0.85, False),
        ("evtp:spatial_weight=0.25", "img", "divprune"): (0.80, 0.90, False),
        ("evtp", "vid", "kcenter"): (0.70, 0.71, False),  # no divprune row on video: no check
    }


def test_bars_on_rows_labels_a_run_by_the_options_it_recorded():
    """A run made when evtp's default λ was 0.75 recorded that; its "evtp" is labelled by what it ran."""
    then = {"spatial_weight": 0.75, "info_weight": 1.0, "temporal_scale": 1.0, "temperature": 1.0, "mode": "per-frame", "at": "llm-input"}
    rows = [{**_row("img", "image", "evtp", 0.1, 0.9), "pruner_options": then}, _row("img", "image", "kcenter", 0.1, 0.85)]
    assert [c.setting for c in bars_on_rows(rows, baselines=["kcenter"])] == ["evtp:spatial_weight=0.75"]
    assert setting_label("evtp", {**then, "spatial_weight": 0.5}) == "evtp"


def test_bars_on_rows_refuses_one_setting_with_two_results():
    rows = [_row("img", "image", "evtp", 0.1, 0.9), _row("img", "image", "evtp:spatial_weight=0.5", 0.1, 0.8),
            _row("img", "image", "kcenter", 0.1, 0.85)]
    with pytest.raises(ValueError, match="ran twice with different results"):
        bars_on_rows(rows)


def test_bars_on_runs_script(tmp_path, monkeypatch, capsys):
    import json
    import sys

    from conftest import load_script

    module = load_script("bars_on_runs")
    run = tmp_path / "run"
    run.mkdir()
    rows = [_row("img", "image", "evtp", 0.1, 0.90), _row("img", "image", "evtp:spatial_weight=1", 0.1, 0.70),
            _row("img", "image", "kcenter", 0.1, 0.85)]
    (run / "results.json").write_text(json.dumps({"meta": {}, "rows": rows}))
    monkeypatch.setattr(sys, "argv", ["bars_on_runs.py", str(run), "--baselines", "kcenter"])
    module.main()
    out = capsys.readouterr().out
    assert "| evtp | 1 of 1 | 0.900 | 0 |" in out
    assert "| evtp:spatial_weight=1.0 | 0 of 1 | 0.700 | 1 |" in out
    assert "| evtp:spatial_weight=1.0 | run: img | 0.1 | kcenter | 0.7000 | 0.8500 |" in out
    # two runs whose folders share a name, given as results.json files: each keeps its own cells
    other = tmp_path / "other" / "run"
    other.mkdir(parents=True)
    (other / "results.json").write_text(json.dumps({"meta": {}, "rows": [_row("img", "image", "evtp", 0.1, 0.80),
                                                                         _row("img", "image", "kcenter", 0.1, 0.85)]}))
    assert module.run_labels([run / "results.json", other / "results.json"]) == [str(run / "results.json"), str(other / "results.json")]
    assert module.run_labels([run / "results.json", tmp_path / "other"]) == ["run", "other"]
    monkeypatch.setattr(sys, "argv", ["bars_on_runs.py", str(run / "results.json"), str(other / "results.json"), "--baselines", "kcenter"])
    module.main()
    out = capsys.readouterr().out
    assert "| evtp | 1 of 2 | 0.850 | 1 |" in out  # 0.90 ≥ 0.85 in one run, 0.80 < 0.85 in the other
    for argv in ([str(tmp_path / "missing")], [str(run), "--ratios", "0.1,x"], [str(run), "--candidate", "tome"]):
        monkeypatch.setattr(sys, "argv", ["bars_on_runs.py", *argv])
        with pytest.raises(SystemExit) as stop:
            module.main()
        assert stop.value.code == 2
