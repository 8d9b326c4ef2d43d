"""Measure tiny-ivs against the issue-3 quality bars and print the README's "Quality bars" tables.

    python benchmarks/quality_bars.py                                   # the shipped weights (about 3 minutes on 2 CPU cores)
    python benchmarks/quality_bars.py --model "tiny-ivs:weights=runs/tiny/stage2.safetensors"   # a retrained candidate

The cases and bars are those of tests/test_tiny_quality.py (`evtp_cli.bench.quality`); after a retrain,
paste the tables into the README and update the test's KNOWN_MISSES to the ✗ cells. After the bars,
one table per case gives, for each "EVTP ≥ baseline" bar, the paired difference over the case's samples
with its bootstrap interval and sign test (`evtp_cli.bench.paired`): whether a miss is more than this
many samples can tell.
"""

from __future__ import annotations

import argparse

import torch

from evtp_cli.bench.paired import paired_markdown, paired_rows
from evtp_cli.bench.quality import (
    BARS,
    BASELINES,
    CASES,
    RATIOS,
    RecordLog,
    case_scores,
    judge,
    markdown_table,
)
from evtp_cli.errors import EvtpError
from evtp_cli.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-ivs", help="a tiny-ivs model spec (weights=..., frames=...)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = load_model(args.model)
    except EvtpError as exc:
        parser.exit(2, f"error: {exc}\n")
    scores, records = {}, RecordLog()
    for spec in CASES:
        scores[spec] = case_scores(model, spec, records)
        misses = [bar for bar in BARS if not judge(scores[spec], spec, bar)[0]]
        print(f"{spec}: {len(BARS) - len(misses)}/{len(BARS)} bars hold; misses: {', '.join(misses) or 'none'}", flush=True)
    paired = [row for row in paired_rows(records, "evtp") if row["pruner"] in BASELINES and row["ratio"] in RATIOS]
    print()
    print(markdown_table(scores))
    print(paired_markdown(paired, "evtp"))


if __name__ == "__main__":
    main()
