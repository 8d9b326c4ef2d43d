"""Measure tiny-ivs against the issue-3 quality bars and print the README's "Quality bars" table.

    python benchmarks/quality_bars.py                                   # the shipped weights (about 3 minutes on 2 CPU cores)
    python benchmarks/quality_bars.py --model "tiny-ivs:weights=runs/tiny/stage2.safetensors"   # a retrained candidate

The cases and bars are those of tests/test_tiny_quality.py (`evtp_cli.bench.quality`); after a retrain,
paste the table into the README and update the test's KNOWN_MISSES to the ✗ cells.
"""

from __future__ import annotations

import argparse

import torch

from evtp_cli.bench.quality import BARS, CASES, case_scores, judge, markdown_table
from evtp_cli.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-ivs", help="a tiny-ivs model spec (weights=..., frames=...)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    scores = {}
    for spec in CASES:
        scores[spec] = case_scores(model, spec)
        misses = [bar for bar in BARS if not judge(scores[spec], spec, bar)[0]]
        print(f"{spec}: {len(BARS) - len(misses)}/{len(BARS)} bars hold; misses: {', '.join(misses) or 'none'}", flush=True)
    print()
    print(markdown_table(scores))


if __name__ == "__main__":
    main()
