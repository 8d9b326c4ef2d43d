"""Other ways to combine EVTP's feature and spatial distances, on the VALIDATION split (docs/evtp.md,
"Version 3: other ways to combine the two distances").

    python benchmarks/evtp_metric_variants.py evtp sum:lam=0.25 max:lam=0.5 two-phase:theta=0.1   (about 2.5 min per variant)

Each variant keeps EVTP's per-frame budget split, its seed (the most informative token) and its information
weighting (1 + β·H); only the distance in the greedy changes, with d_f = (1 - cos)/2 and d_s = ‖Δ(y, x)‖/√2:
- `sum:lam=λ`: (1-λ)·d_f + λ·d_s, EVTP's own metric (`evtp` runs the real pruner; the two agree);
- `max:lam=λ`: max((1-λ)·d_f, λ·d_s): far in features or in space;
- `two-phase:theta=θ`: greedy on d_f alone while some token is farther than θ from the kept set in features
  (every distinct content kept first), then the λ = 0.5 sum.
Straightforward full-matrix implementations: an experiment, not a pruner option. Prints every cell (the 12
validation cells of the version-3 ablation) and the 12-cell mean per variant.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from evtp_cli.api import frame_index
from evtp_cli.bench.evaluate import Setting, evaluate_dataset
from evtp_cli.data import load_dataset
from evtp_cli.errors import EvtpError
from evtp_cli.models import load_model
from evtp_cli.pruners import get_pruner
from evtp_cli.pruners.base import Pruner
from evtp_cli.pruners.evtp import allocate_budget, token_information

CELLS = [
    "synthetic-image:split=val,n=300",
    "synthetic-image:split=val,n=300,seed=1",
    "synthetic-image:split=val,n=300,seed=2,objects=6",
    "synthetic-video:split=val,n=100",
    "synthetic-video:split=val,n=200,seed=1",
    "synthetic-video:split=val,n=100,seed=2,objects=6",
]
RATIOS = (0.1, 0.2)


def select_in_frame(features, yx, k, info, rule: str, lam: float, beta: float, theta: float) -> torch.Tensor:
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    d_f = ((1 - unit @ unit.T) / 2).clamp_min(0)
    d_s = torch.cdist(yx, yx) / math.sqrt(2)
    dist = torch.maximum((1 - lam) * d_f, lam * d_s) if rule == "max" else (1 - lam) * d_f + lam * d_s
    weight = 1 + beta * info
    first = int(torch.argmax(info))
    chosen, taken = [first], torch.zeros(features.shape[0], dtype=torch.bool)
    taken[first] = True
    near, near_f = dist[first].clone(), d_f[first].clone()
    for _ in range(1, k):
        content_first = rule == "two-phase" and float(near_f.masked_fill(taken, -1).max()) > theta
        score = (near_f if content_first else near) * weight
        nxt = int(torch.argmax(score.masked_fill(taken, float("-inf"))))
        chosen.append(nxt)
        taken[nxt] = True
        near, near_f = torch.minimum(near, dist[nxt]), torch.minimum(near_f, d_f[nxt])
    return torch.tensor(chosen)


class Variant(Pruner):
    name = "variant"

    def __init__(self, rule: str, lam: float = 0.5, beta: float = 1.0, theta: float = 0.1):
        super().__init__()
        self.args = (rule, lam, beta, theta)

    def _select(self, features, coords, k, context):
        frames = frame_index(coords, context)
        info = token_information(features)
        groups = [torch.nonzero(frames == f)[:, 0] for f in torch.unique(frames, sorted=True)]
        budget = allocate_budget(k, [len(g) for g in groups], [float((info[g] + 0.05).sum()) for g in groups])
        picked = [g[select_in_frame(features[g], coords[g, 1:].float(), kf, info[g], *self.args)] for g, kf in zip(groups, budget) if kf]
        return torch.cat(picked)


VARIANT_OPTIONS = ("lam", "beta", "theta")


def parse(spec: str) -> Pruner:
    """A variant (`sum`, `max`, `two-phase`, with options lam, beta, theta) or any registered pruner spec."""
    rule, _, options = spec.partition(":")
    if rule not in ("sum", "max", "two-phase"):
        return get_pruner(spec)
    kwargs = {}
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key not in VARIANT_OPTIONS:
            raise ValueError(f"unknown option {key!r} in {spec!r}: use {', '.join(VARIANT_OPTIONS)}")
        try:
            kwargs[key] = float(value)
        except ValueError:
            raise ValueError(f"{key}={value!r} in {spec!r} is not a number") from None
    return Variant(rule, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="evtp, kcenter, ... or sum:lam=L, max:lam=L, two-phase:theta=T")
    args = parser.parse_args()
    try:
        pruners = {spec: parse(spec) for spec in args.variants}  # every spec checked before the first cell
    except (EvtpError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    model = load_model("tiny-ivs")
    cells: dict[str, list[float]] = {spec: [] for spec in args.variants}
    for dataset_spec in CELLS:
        start = time.time()
        settings = [(Setting(model.name, dataset_spec, spec, r), pruners[spec]) for r in RATIOS for spec in args.variants]
        rows = evaluate_dataset(model, load_dataset(dataset_spec), settings, warmup=0)
        metric = "giou" if dataset_spec.startswith("synthetic-image") else "JF"
        for row in rows:
            cells[row["pruner"]].append(row[metric])
        print(dataset_spec, f"({time.time() - start:.0f} s):", " ".join(f"{r['pruner']}@{r['ratio']}={r[metric]:.3f}" for r in rows), flush=True)
    for spec, values in cells.items():
        print(f"{spec:28s} mean {np.mean(values):.4f}  cells " + " ".join(f"{v:.3f}" for v in values))


if __name__ == "__main__":
    main()
