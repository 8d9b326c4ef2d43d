"""tiny-ivs quality bars (issue 3): the test cases, the bars and how each is judged.

Shared by `tests/test_tiny_quality.py` (one test per bar and case) and `benchmarks/quality_bars.py`
(which prints the README's "Quality bars" table), so the table is measured by the same code as the test.

Bars, per case:
- `full`: full-token gIoU >= 0.75 (images) / J&F >= 0.70 (videos);
- `random-5%-hurts`: random pruning at 0.05 keeps < 60% of the full-token score (the LLM path carries the task);
- `evtp-20%-keeps-95%`: EVTP at 0.2 keeps >= 95% of the full-token score;
- `evtp>=NAME@R`: EVTP at R is at least as good as NAME at R, for kcenter, divprune, random and uniform.

Beside the bars, a weaker check that the bars do not replace: EVTP is not worse than NAME at R beyond
noise (the paired comparison of EVTP − NAME does not say `worse`: evtp_cli.bench.paired; `not_worse`).

`bars_on_rows` judges the "EVTP ≥ NAME" bars on finished result rows instead, for every EVTP setting a
sweep ran (e.g. the validation ablation, where the defaults are chosen: `benchmarks/bars_on_runs.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from evtp_cli.bench.evaluate import REFERENCE, Setting, evaluate_dataset

BASELINES = ["kcenter", "divprune", "random", "uniform"]
RATIOS = (0.1, 0.2)
CASES = {  # dataset -> (metric, full-token bar): seeds and object counts beside the defaults
    "synthetic-image:n=120,seed=0": ("giou", 0.75),
    "synthetic-image:n=120,seed=7,objects=6": ("giou", 0.75),
    "synthetic-video:n=40,seed=0": ("JF", 0.70),
    "synthetic-video:n=40,seed=5,objects=6": ("JF", 0.70),
}
BARS = ["full", "random-5%-hurts", "evtp-20%-keeps-95%"] + [f"evtp>={name}@{r}" for r in RATIOS for name in BASELINES]

Scores = dict[tuple[str, float], float]


def case_scores(model: Any, dataset_spec: str, log: Any | None = None) -> Scores:
    """(pruner, ratio) -> the case's metric, for every setting the bars read (one interleaved pass).
    With `log` (a SampleLog or a RecordLog), the per-sample records are written too, for the paired differences."""
    from evtp_cli.data import load_dataset
    from evtp_cli.pruners import get_pruner

    dataset = load_dataset(dataset_spec)
    settings = [(Setting(model.name, dataset_spec, REFERENCE, 1.0), None)]
    settings.append((Setting(model.name, dataset_spec, "random", 0.05), get_pruner("random")))
    for ratio in RATIOS:
        for name in ["evtp", *BASELINES]:
            settings.append((Setting(model.name, dataset_spec, name, ratio), get_pruner(name)))
    rows = evaluate_dataset(model, dataset, settings, warmup=0, log=log)
    metric = CASES[dataset_spec][0]
    return {(r["pruner"], r["ratio"]): r[metric] for r in rows}


class RecordLog(list):
    """An in-memory samples log: `evaluate_dataset(log=...)` appends its per-sample records."""

    def write(self, record: dict[str, Any]) -> None:
        self.append(record)


def not_worse(records: list[dict[str, Any]], name: str, ratio: float) -> tuple[bool, str]:
    """(whether EVTP at `ratio` is not worse than `name` beyond noise, the paired difference) from a case's records."""
    from evtp_cli.bench.paired import paired_rows

    pair = [r for r in records if r["pruner"] in ("evtp", name) and r["ratio"] == ratio]  # one bootstrap, not one per pruner
    found = [r["paired"] for r in paired_rows(pair, "evtp")]
    if not found:
        raise ValueError(f"no paired samples of evtp and {name} at {ratio:g} in these records")
    d = found[0]
    measured = (f"EVTP@{ratio:g} − {name}: {d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}], won {d.wins} / lost {d.losses} "
                f"of {d.n}, sign test p {d.p_sign:.3g}")
    return d.verdict != "worse", measured


def judge(score: Scores, dataset_spec: str, bar: str) -> tuple[bool, str]:
    """(whether the bar holds, what was measured against it)."""
    metric, full_bar = CASES[dataset_spec]
    full = score[(REFERENCE, 1.0)]
    if bar == "full":
        return full >= full_bar, f"full-token {metric} {full:.3f} (bar {full_bar})"
    if bar == "random-5%-hurts":
        kept = score[("random", 0.05)] / full
        return kept < 0.6, f"random@0.05 keeps {kept:.0%} of full (bar < 60%)"
    if bar == "evtp-20%-keeps-95%":
        kept = score[("evtp", 0.2)] / full
        return kept >= 0.95, f"EVTP@0.2 keeps {kept:.0%} of full (bar >= 95%)"
    name, ratio = bar.removeprefix("evtp>=").split("@")
    ours, theirs = score[("evtp", float(ratio))], score[(name, float(ratio))]
    return ours >= theirs, f"EVTP@{ratio} {ours:.3f} vs {name} {theirs:.3f}"


def markdown_table(scores: dict[str, Scores]) -> str:
    """The README's table: one row per case, ✓/✗ per bar, with the numbers behind each."""

    def mark(ok: bool) -> str:
        return "✓" if ok else "✗"

    lines = [
        "| test data | full | random@0.05 / full (< 60 %) | EVTP@0.2 / full (≥ 95 %) "
        "| EVTP ≥ kcenter, divprune, random, uniform @0.1 | @0.2 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for spec, score in scores.items():
        metric = {"giou": "gIoU", "JF": "J&F"}[CASES[spec][0]]
        full = score[(REFERENCE, 1.0)]
        cells = [f"`{spec}`", f"{metric} {full:.3f} {mark(judge(score, spec, 'full')[0])}"]
        cells.append(f"{score[('random', 0.05)] / full:.0%} {mark(judge(score, spec, 'random-5%-hurts')[0])}")
        cells.append(f"{score[('evtp', 0.2)] / full:.0%} {mark(judge(score, spec, 'evtp-20%-keeps-95%')[0])}")
        for ratio in RATIOS:
            losses = [f"{name} {score[(name, ratio)]:.3f}" for name in BASELINES if not judge(score, spec, f"evtp>={name}@{ratio}")[0]]
            ours = f"{score[('evtp', ratio)]:.3f}"
            cells.append(f"{ours}: ✗ loses to {', '.join(losses)}" if losses else f"{ours}: ✓ all")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class BarCheck:
    """One "setting ≥ baseline" comparison on one model × dataset × keep ratio of finished rows."""

    setting: str
    model: str
    dataset: str
    ratio: float
    baseline: str
    ours: float
    theirs: float

    @property
    def holds(self) -> bool:
        return self.ours >= self.theirs  # the same strict reading as `judge`


def setting_label(spec: str, options: dict[str, Any] | None = None) -> str:
    """A pruner spec as its name plus only the options that differ from today's defaults, in the config's
    order, so that two spellings of one setting (option order, defaults written out) get one label.

    `options`: every option as the run resolved them (results meta `pruner_options`), which labels a run
    made under other defaults by what it ran; without them the spec is read with today's defaults."""
    from evtp_cli.bench.runner import plain_options
    from evtp_cli.pruners import PRUNERS
    from evtp_cli.spec import parse_spec

    name = parse_spec(spec).name
    defaults = plain_options(PRUNERS.config_of(name))
    resolved = options if options is not None else plain_options(PRUNERS.config_of(spec))
    changed = [f"{key}={value}" for key, value in resolved.items() if key not in defaults or value != defaults[key]]
    return f"{name}:{','.join(changed)}" if changed else name


def bars_on_rows(
    rows: Iterable[dict[str, Any]],
    candidate: str = "evtp",
    baselines: Iterable[str] = ("kcenter", "divprune"),
    ratios: Iterable[float] = RATIOS,
) -> list[BarCheck]:
    """Every "setting ≥ baseline" check the rows allow: each setting of the `candidate` pruner against each
    baseline, per model × dataset × ratio where both ran, on the task's primary metric (gIoU or J&F).
    A row's `pruner_options` (its run's resolved options), where given, name its setting (`setting_label`).
    Rows of one setting spelled twice in one cell must agree (a run is deterministic); the first is used."""
    from evtp_cli.bench.report import PRIMARY_METRIC
    from evtp_cli.spec import parse_spec

    wanted_ratios = {float(r) for r in ratios}
    wanted_baselines = list(baselines)
    cells: dict[tuple[str, str, float], dict[str, float]] = {}
    for row in rows:
        ratio = float(row["ratio"])
        name = parse_spec(row["pruner"]).name
        if ratio not in wanted_ratios or name not in (candidate, *wanted_baselines):
            continue
        value = row.get(PRIMARY_METRIC.get(row.get("task"), "giou"))
        if value is None:
            continue
        label = setting_label(row["pruner"], row.get("pruner_options"))
        cell = cells.setdefault((row["model"], row["dataset"], ratio), {})
        if label in cell and cell[label] != float(value):
            raise ValueError(f"{row['dataset']} @ {ratio:g}: {label!r} ran twice with different results ({cell[label]} and "
                             f"{value}); a run without pruner_options in its meta is read with today's defaults, so one made "
                             "under other defaults must spell every option out")
        cell.setdefault(label, float(value))
    checks = []
    for (model, dataset, ratio), cell in cells.items():
        settings = [label for label in cell if parse_spec(label).name == candidate]
        for setting in settings:
            for baseline in wanted_baselines:
                if baseline in cell:
                    checks.append(BarCheck(setting, model, dataset, ratio, baseline, cell[setting], cell[baseline]))
    return checks
