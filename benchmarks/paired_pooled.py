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
    bad = [a for a in args.alias if not all(a.partition("=")[::2])]
    if bad:
        parser.error(f"--alias {bad[0]!r}: give NAME=SPEC, e.g. evtp=evtp:spatial_weight=0.5")
    alias = {spec: name for name, _, spec in (a.partition("=") for a in args.alias)}
    pooled = []
    for run in args.runs:
        records = read_records(run)
        if not records:
            parser.exit(2, f"error: {run} holds no samples.jsonl records\n")
        spelled: dict[tuple, str] = {}
        for rec in records:
            name = alias.get(rec["pruner"], rec["pruner"])
            setting = (rec["model"], rec["dataset"], rec["ratio"], name)
            if spelled.setdefault(setting, rec["pruner"]) != rec["pruner"]:
                parser.exit(2, f"error: {run}: {spelled[setting]!r} and {rec['pruner']!r} both stand for {name!r}; alias only one of them\n")
            task = "videos" if "JF" in rec else "images"
            key = None if rec.get("index") is None else (str(run), rec["model"], rec["dataset"], rec["index"])
            rec = {**rec, "pruner": name, "model": "pooled", "index": key}
            pooled += [{**rec, "dataset": task}, {**rec, "dataset": "images and videos"}]
    rows = paired_rows(pooled, args.versus)
    ran = sorted({r["pruner"] for r in pooled})
    if args.versus not in ran:
        parser.exit(2, f"error: --versus {args.versus!r} is not a pruner of these runs; they ran: {', '.join(ran)} (use --alias for other spellings)\n")
    if args.pruners:
        wanted = set(args.pruners.split(","))
        unknown = sorted(wanted - set(ran))
        if unknown:
            parser.exit(2, f"error: --pruners: {', '.join(unknown)} did not run; these runs ran: {', '.join(ran)}\n")
        rows = [r for r in rows if r["pruner"] in wanted]
    if not rows:
        parser.exit(2, f"error: nothing to pair: no other pruner ran at the keep ratios of {args.versus!r} on the same samples "
                       "(or the records have no sample index, or no accuracy, as in a --predict-only run)\n")
    print(paired_markdown(rows, args.versus))


if __name__ == "__main__":
    main()
