"""The "EVTP ≥ baseline" quality bars (issue 3) judged on finished sweeps, for every EVTP setting they ran.

    python benchmarks/bars_on_runs.py runs/ablation-val runs/ablation-val-seed1 runs/ablation-val-crowded

The validation ablation (docs/evtp.md, "Ablation") is where EVTP's defaults are chosen. This asks of each
setting it ran what the test's "EVTP ≥ baseline" bars ask of the defaults (tests/test_tiny_quality.py):
at every keep ratio, on every dataset, is the setting's gIoU or J&F at least the baseline's? By default
against k-center and DivPrune; the test also has random and uniform (`--baselines
kcenter,divprune,random,uniform`). Settings are told apart by their options that differ from today's
defaults, so two spellings of one setting count once. A run records what each name meant (results meta
`pruner_options`); one from before that record was read with today's defaults, so under other defaults
it must have spelled its options out. Prints one line per setting (checks held, mean over its cells,
misses) and then every miss with both numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evtp_cli.bench.quality import RATIOS, bars_on_rows
from evtp_cli.bench.results import read_results
from evtp_cli.errors import EvtpError


def run_labels(runs: list[Path]) -> list[str]:
    """A short name per run (its folder's name, also for a results.json inside it), the whole path where
    two runs would share one, so that different runs never fall into one cell."""
    short = [(run.parent if run.suffix == ".json" else run).name for run in runs]
    return [name if short.count(name) == 1 else str(run) for name, run in zip(short, runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="sweep output folders (or their results.json)")
    parser.add_argument("--candidate", default="evtp", help="the pruner whose settings are judged")
    parser.add_argument("--baselines", default="kcenter,divprune", help="comma-separated")
    parser.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS), help="comma-separated keep ratios")
    args = parser.parse_args()
    try:
        ratios = [float(r) for r in args.ratios.split(",")]
    except ValueError:
        parser.error(f"--ratios {args.ratios!r}: give numbers separated by commas, e.g. 0.1,0.2")
    rows = []
    try:
        for run, label in zip(args.runs, run_labels(args.runs)):
            results = read_results(run)
            options = results["meta"].get("pruner_options") or {}
            rows += [{**row, "dataset": f"{label}: {row['dataset']}", "pruner_options": options.get(row["pruner"])}
                     for row in results["rows"]]
        checks = bars_on_rows(rows, args.candidate, args.baselines.split(","), ratios)
    except (EvtpError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    if not checks:
        parser.exit(2, f"error: no cell of these runs has both a {args.candidate!r} setting and one of "
                       f"{args.baselines} at keep ratios {args.ratios}\n")
    settings = list(dict.fromkeys(c.setting for c in checks))
    print(f"| {args.candidate} setting | bars held | mean over its cells | misses |")
    print("| --- | --- | --- | --- |")
    for setting in settings:
        mine = [c for c in checks if c.setting == setting]
        cells = {(c.model, c.dataset, c.ratio): c.ours for c in mine}
        missed = sum(not c.holds for c in mine)
        print(f"| {setting} | {len(mine) - missed} of {len(mine)} | {sum(cells.values()) / len(cells):.3f} | {missed} |")
    print()
    print("| setting | dataset | ratio | baseline | setting's score | baseline's score |")
    print("| --- | --- | --- | --- | --- | --- |")
    for c in checks:
        if not c.holds:
            print(f"| {c.setting} | {c.dataset} | {c.ratio:g} | {c.baseline} | {c.ours:.4f} | {c.theirs:.4f} |")


if __name__ == "__main__":
    main()
