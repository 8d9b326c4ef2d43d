"""Accuracy of a finished run split by the instruction's kind (synthetic data: attribute, size, position,
relation, motion), read from the run's samples.jsonl; nothing is evaluated again.

    python benchmarks/accuracy_by_kind.py runs/readme            # a sweep-ratios or prune-eval output folder
    python benchmarks/accuracy_by_kind.py runs/readme --success  # share of samples with IoU / J&F > 0.5

It shows which instructions the model's LLM path solves, and which a pruner breaks: on tiny-ivs video,
for instance, motion instructions (which need one object's tokens in two key frames) against the
others (which one token of the target answers). Datasets whose samples carry no `meta["kind"]` are left out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from evtp_cli.bench import resume as rs
from evtp_cli.bench.results import sample_accuracy
from evtp_cli.bench.runner import open_dataset


def by_kind(out: Path, success: bool = False) -> tuple[pd.DataFrame, pd.Series]:
    """(rows (dataset, pruner, ratio) x columns (kind, "all"): mean accuracy or success rate; samples per dataset and kind)."""
    identity = rs.previous_identity(out)
    if identity is None:
        raise SystemExit(f"{out} has no run.json; give the output folder of a sweep-ratios or prune-eval run")
    kinds: dict[tuple[str, int], str] = {}
    for spec in identity["datasets"]:
        dataset = open_dataset(spec)
        n = len(dataset) if identity.get("limit") is None else min(identity["limit"], len(dataset))
        for index in range(n):
            kind = (dataset[index].meta or {}).get("kind")
            if kind is not None:
                kinds[(spec, index)] = kind
    rows = []
    for rec in rs.read_records(out):
        kind = kinds.get((rec.get("dataset"), rec.get("index")))
        score = sample_accuracy(rec)
        if kind is None or rec.get("status") != "ok" or score is None:
            continue
        rows.append({"dataset": rec["dataset"], "pruner": rec["pruner"], "ratio": rec["ratio"], "kind": kind, "index": rec["index"],
                     "score": float(score > 0.5) if success else float(score)})
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise SystemExit(f"no scored sample of {out} has an instruction kind (synthetic datasets have them)")
    keys = ["dataset", "pruner", "ratio"]
    table = frame.pivot_table(index=keys, columns="kind", values="score", aggfunc="mean")
    table["all"] = frame.groupby(keys)["score"].mean()
    return table.round(3), frame.groupby(["dataset", "kind"])["index"].nunique()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--success", action="store_true", help="share of samples with accuracy > 0.5 instead of the mean")
    args = parser.parse_args()
    table, counts = by_kind(args.run, args.success)
    print("samples per kind:", ", ".join(f"{d} {k} {n}" for (d, k), n in counts.items()))
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(table.to_string())


if __name__ == "__main__":
    main()
