"""How far apart are a model's visual tokens, by kind of pair? Synthetic images.

    python benchmarks/token_geometry.py "synthetic-image:split=val,n=40" --model tiny-ivs --model "tiny-ivs:weights=W"

Feature-distance pruners (k-center, DivPrune, EVTP's feature term) read the mean (1 − cos)/2 between
tokens. Printed per model: that distance between two background tokens (patches with no object pixel),
between an object's core token (at least half of its patch inside the object) and background, within one
object and between two objects, at the LLM's input (what the pruners see) and, for tiny-ivs, at the
vision encoder's output. The background patches' mean colours (centred) on the same measure are the
yardstick: what the pixels themselves would give. Used for the version-4 candidate (evtp_cli/assets/
README.md, "Tried, not shipped").
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch

PAIRS = ("background-background", "object-background", "same object", "other object")


def cosine_distances(features: torch.Tensor) -> np.ndarray:
    """[N, D] -> [N, N] (1 − cos)/2."""
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    return ((1 - unit @ unit.T) / 2).numpy()


def pair_means(distance: np.ndarray, inside: np.ndarray) -> dict[str, list[float]]:
    """Mean distance by kind of token pair in one image. inside [objects, N]: each object's share of each token's patch."""
    found: dict[str, list[float]] = defaultdict(list)
    background = inside.sum(0) == 0
    cores = [inside[o] >= 0.5 for o in range(inside.shape[0])]
    if background.sum() > 1:
        off_diagonal = ~np.eye(int(background.sum()), dtype=bool)
        found["background-background"].append(float(distance[np.ix_(background, background)][off_diagonal].mean()))
    for o, core in enumerate(cores):
        if core.any():
            found["object-background"].append(float(distance[np.ix_(core, background)].mean()))
            found["same object"].append(float(distance[np.ix_(core, core)].mean()))
            found["other object"] += [float(distance[np.ix_(core, other)].mean()) for other in cores[o + 1:] if other.any()]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", nargs="?", default="synthetic-image:split=val,n=40", help="a synthetic-image spec")
    parser.add_argument("--model", action="append", help="a model spec (repeatable; default tiny-ivs)")
    args = parser.parse_args()
    from evtp_cli.data import load_dataset
    from evtp_cli.data.synthetic import generate_scene
    from evtp_cli.errors import EvtpError
    from evtp_cli.metrics.timing import StageTimer
    from evtp_cli.models import load_model

    try:
        dataset = load_dataset(args.dataset)
        specs = args.model or ["tiny-ivs"]
        models = [load_model(spec) for spec in specs]
    except (EvtpError, ValueError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    if dataset.task != "image" or not hasattr(dataset, "rng"):
        parser.exit(2, "error: token_geometry.py reads synthetic images only (synthetic-image:...)\n")
    for spec, model in zip(specs, models):
        found: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for index in range(len(dataset)):
            sample = dataset[index]
            masks = generate_scene(dataset.rng(index), dataset.scene_config()).instance_masks[:, 0]
            with torch.no_grad():
                tokens = model.encode(sample, StageTimer())
            n = tokens.features.shape[0]
            grid = int(round(n**0.5))
            objects, height, width = masks.shape
            inside = masks.reshape(objects, grid, height // grid, grid, width // grid).mean((2, 4)).reshape(objects, n)
            where = {"LLM input": tokens.features}
            vision = getattr(getattr(model, "net", None), "vision", None)
            image = torch.from_numpy(np.asarray(sample.frames[0])).float().div(255).permute(2, 0, 1)[None]
            if vision is not None:
                with torch.no_grad():
                    where["encoder output"] = vision(image)[0][0]
            where["pixels (patch mean colour)"] = torch.nn.functional.avg_pool2d(image - 0.45, height // grid)[0].flatten(1).T
            for name, features in where.items():
                for kind, values in pair_means(cosine_distances(features), inside).items():
                    found[name][kind] += values
        print(f"{spec} on {args.dataset}: mean (1 - cos)/2 by kind of pair")
        for name, kinds in found.items():
            print(f"  {name:28s} " + "  ".join(f"{kind} {np.mean(kinds[kind]):.5f}" for kind in PAIRS if kinds[kind]))


if __name__ == "__main__":
    main()
