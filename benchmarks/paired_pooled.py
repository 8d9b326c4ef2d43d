"""Paired differences pooled over several runs: one pruner against the others on all their images and all
their videos at once (docs/evtp.md, "Ablation": is EVTP's lead on the validation runs more than noise?).

    python benchmarks/paired_pooled.py runs/ablation-val runs/ablation-val-seed1 runs/ablation-val-crowded \
        --alias evtp=evtp:spatial_weight=0.5,mode=per-frame --alias evtp=evtp:spatial_weight=0.5 --versus evtp --pruners kcenter,divprune

`--alias NAME=SPEC` treats the pruner SPEC (as a run names it) as NAME, for runs that spelled one setting
differently. Samples pair within their run, model and dataset (evtp_cli.bench.paired). Three tables,
by keep ratio: images, images and videos together, videos.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evtp_cli.bench.paired import paired_markdown, paired_rows
from evtp_cli.bench.resume import read_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--versus", default="evtp")
    parser.add_argument("--pruners", default=None, help="comma-separated: only these against --versus")
    parser.add_argument("--alias", action="append", default=[], metavar="NAME=SPEC")
    args = parser.parse_args()
    alias = {spec: name for name, _, spec in (a.partition("=") for a in args.alias)}
    pooled = []
    for run in args.runs:
        records = read_records(run)
        if not records:
            raise SystemExit(f"{run} holds no samples.jsonl records")
        spelled: dict[tuple, str] = {}
        for rec in records:
            name = alias.get(rec["pruner"], rec["pruner"])
            setting = (rec["model"], rec["dataset"], rec["ratio"], name)
            if spelled.setdefault(setting, rec["pruner"]) != rec["pruner"]:
                raise SystemExit(f"{run}: {spelled[setting]!r} and {rec['pruner']!r} both stand for {name!r}; alias only one of them")
            task = "videos" if "JF" in rec else "images"
            key = None if rec.get("index") is None else (str(run), rec["model"], rec["dataset"], rec["index"])
            rec = {**rec, "pruner": name, "model": "pooled", "index": key}
            pooled += [{**rec, "dataset": task}, {**rec, "dataset": "images and videos"}]
    rows = paired_rows(pooled, args.versus)
    if args.pruners:
        wanted = set(args.pruners.split(","))
        rows = [r for r in rows if r["pruner"] in wanted]
    if not rows:
        raise SystemExit(f"nothing to pair: no pruner ran beside {args.versus!r} (use --alias for other spellings)")
    print(paired_markdown(rows, args.versus))


if __name__ == "__main__":
    main()
