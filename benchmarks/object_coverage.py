"""Which objects does each pruner keep a token of? Synthetic images; read with a finished run's accuracies.

    python benchmarks/object_coverage.py runs/ablation-val "synthetic-image:split=val,n=300" 0.1 evtp kcenter divprune

For each image the selection is the evaluation's own: the run's model (its first, from run.json), k =
keep_count(ratio, N) and the run's per-sample seed (`select_pre_llm`), for pruners that select from the
LLM's input tokens. Samples the run did not score under a pruner are left out of its numbers. A token
"covers" an object when at least half of its patch lies inside the object's mask. Printed per pruner: how
often the target is covered, how often every object is, the share of kept tokens on background, and the
share of samples segmented (IoU > 0.5, from RUN's samples.jsonl, which must hold the same dataset, ratio
and pruner names), also split by whether every object was covered; then the mean feature distance between
background tokens, object and background, tokens of one object and of two objects; then segmented and
covered by instruction kind.
It tests one explanation of where EVTP and k-center differ (docs/evtp.md, "Other ways to combine").
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
from token_geometry import cosine_distances, pair_means  # noqa: E402 (benchmarks/, the script's own folder)

from evtp_cli.bench import resume as rs
from evtp_cli.bench.evaluate import select_pre_llm
from evtp_cli.data import load_dataset
from evtp_cli.data.synthetic import generate_scene
from evtp_cli.metrics.timing import StageTimer
from evtp_cli.models import load_model
from evtp_cli.pruners import get_pruner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("dataset", help="a synthetic-image spec that RUN evaluated")
    parser.add_argument("ratio", type=float)
    parser.add_argument("pruners", nargs="+")
    args = parser.parse_args()
    identity = rs.previous_identity(args.run)
    if identity is None:
        parser.exit(2, f"error: {args.run} has no run.json; give the output folder of a sweep-ratios or prune-eval run\n")
    iou = {(r["pruner"], r["index"]): r["iou"] for r in rs.load_done(args.run).values()
           if r["dataset"] == args.dataset and r["ratio"] == args.ratio and r.get("status") == "ok"}
    unscored = [name for name in args.pruners if not any(pruner == name for pruner, _ in iou)]
    if unscored:
        parser.exit(2, f"error: {args.run} scored no sample of {', '.join(unscored)} on {args.dataset!r} at {args.ratio:g}; it ran "
                       f"datasets {', '.join(identity['datasets'])}; ratios {', '.join(map(str, identity['ratios']))}; "
                       f"pruners {', '.join(identity['pruners'])}\n")
    model, dataset = load_model(identity["models"][0]), load_dataset(args.dataset)
    if dataset.task != "image":
        parser.exit(2, "error: object_coverage.py reads synthetic images only\n")
    pruners = {name: get_pruner(name) for name in args.pruners}
    stats: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    pairs: dict[str, list[float]] = defaultdict(list)  # mean feature distance (1 - cos)/2 by kind of token pair
    for index in range(len(dataset)):
        sample = dataset[index]
        scene = generate_scene(dataset.rng(index), dataset.scene_config())
        tokens = model.encode(sample, StageTimer())
        n = tokens.features.shape[0]
        grid = int(round(n**0.5))
        masks = scene.instance_masks[:, 0]
        objects, height, width = masks.shape
        inside = masks.reshape(objects, grid, height // grid, grid, width // grid).mean((2, 4)).reshape(objects, n)
        for kind, values in pair_means(cosine_distances(tokens.features), inside).items():
            pairs[kind] += values
        for name, pruner in pruners.items():
            if (name, index) not in iou:
                stats[name]["not scored"].append(index)
                continue
            keep = select_pre_llm(pruner, tokens, args.ratio, identity.get("seed", 0), sample.id).indices.numpy()
            covered = (inside[:, keep] >= 0.5).any(1)
            s = stats[name]
            s["target"].append(covered[scene.target])
            s["all"].append(covered.all())
            s["background"].append(float((inside[:, keep].sum(0) == 0).mean()))
            s["ok"].append(iou[(name, index)] > 0.5)
            s["kind"].append(scene.kind)
    def share(x: np.ndarray) -> str:
        return f"{x.mean():.3f}" if x.size else "–"

    for name, s in stats.items():
        if not s["ok"]:
            print(f"{name:40s} not scored in {args.run} at {args.ratio:g}")
            continue
        target, every, ok = (np.array(s[key]) for key in ("target", "all", "ok"))
        missing = f"  ({len(s['not scored'])} samples not scored in {args.run}, left out)" if s["not scored"] else ""
        print(f"{name:40s} target covered {share(target)}  all covered {share(every)}  background share "
              f"{np.mean(s['background']):.3f}  segmented {share(ok)}  (all covered: {share(ok[every])}, "
              f"not: {share(ok[~every])}){missing}")
    print("mean feature distance (1 - cos)/2:", ", ".join(f"{pair} {np.mean(v):.3f}" for pair, v in pairs.items()))
    print("by kind: segmented / all objects covered")
    for name, s in stats.items():
        kinds, ok, every = np.array(s["kind"]), np.array(s["ok"]), np.array(s["all"])
        print(f"{name:40s}", "  ".join(f"{k} {ok[kinds == k].mean():.2f} / {every[kinds == k].mean():.2f}" for k in sorted(set(s["kind"]))))


if __name__ == "__main__":
    main()
