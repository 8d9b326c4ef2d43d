"""Greedy farthest-point (k-center) selection shared by evtp, kcenter and divprune.

Gonzalez (1985), "Clustering to minimize the maximum intercluster distance": starting from any
point, repeatedly adding the point farthest from the chosen set gives a covering radius at most twice
the optimum (for a metric). Here the "farthest" score may be multiplied by a per-point weight.

Two forms of the same loop:
- `greedy_farthest_point`: the straightforward one (a mask of chosen points, weights applied each
  step). It is the reference the fast forms are tested against.
- `greedy_rows` / `greedy_over_matrix`: the fast one. It runs a batch of independent selections at
  once (one per video frame, or one), takes the distance rows from a callback so they can be built on
  demand, and expects each row to be weighted already and to hold -inf at the row's own point. Then a
  chosen point drops out of the running minimum by itself (no mask, no `where`), and each step is an
  argmax, a row and a `minimum`. On CUDA the loop can run as one Triton kernel (`_triton_greedy`).

Why the two pick the same indices: weighting commutes with the running minimum bit for bit, because
rounding is monotone: for w > 0, min(fl(w·a), fl(w·b)) = fl(w·min(a, b)). So the running minimum of
weighted rows holds exactly the scores the reference computes; chosen points hold -inf in both; and
both break ties to the first maximum (torch and numpy argmax; Triton's argmax with tie_break_left).
"""

from __future__ import annotations

from typing import Callable, TypeVar

import numpy as np
import torch

from evtp_cli.pruners import _triton_greedy

Array = TypeVar("Array", torch.Tensor, np.ndarray)


def greedy_farthest_point(
    dist: torch.Tensor,
    k: int,
    first: int,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick k indices from a distance matrix [N, N]: `first`, then argmax of weight * min-distance.

    The running minimum is updated incrementally (one row per step). Already chosen points are
    masked, so the result has k unique indices even where distances tie at zero. Ties go to the lowest
    index (torch.argmax returns the first maximum). Returns indices in selection order.
    """
    n = dist.shape[0]
    chosen = torch.empty(k, dtype=torch.long, device=dist.device)
    chosen[0] = first
    min_dist = dist[first].clone()
    taken = torch.zeros(n, dtype=torch.bool, device=dist.device)
    taken[first] = True
    neg_inf = torch.tensor(float("-inf"), dtype=dist.dtype, device=dist.device)
    for step in range(1, k):
        score = min_dist if weights is None else min_dist * weights
        score = torch.where(taken, neg_inf, score)
        nxt = int(torch.argmax(score))
        chosen[step] = nxt
        taken[nxt] = True
        min_dist = torch.minimum(min_dist, dist[nxt])
    return chosen


def greedy_rows(rows: Callable[[Array], Array], first: Array, steps: int) -> Array:
    """Batched greedy farthest point: `steps` picks for each of B independent selections.

    rows(i) takes the points i [B] (one per selection) and returns a new array [B, n] of their score
    rows: the distance from i[b] to every point of selection b, multiplied by the points' weights,
    with -inf at i[b] itself and at padding. Works on torch tensors or, on CPU, numpy arrays (whose
    per-call overhead is a fraction of torch's on rows this short). Returns [B, steps] in selection
    order; a selection whose points run out before `steps` goes on with arbitrary picks, which the
    caller drops.
    """
    xp = np if isinstance(first, np.ndarray) else torch
    running = rows(first)
    picks = [first]
    for _ in range(1, steps):
        nxt = running.argmax(1)  # numpy and torch both return the first maximum
        picks.append(nxt)
        xp.minimum(running, rows(nxt), out=running)
    return xp.stack(picks, 1)


def greedy_over_matrix(scores: torch.Tensor, first: torch.Tensor, steps: int, backend: str = "auto") -> torch.Tensor:
    """`greedy_rows` over materialised score matrices [B, n, n] (weighted, -inf on the diagonal).

    On CUDA with Triton the whole loop runs as one kernel launch (one program per selection); on
    CPU as a numpy loop; otherwise as torch operations. backend: "auto" | "torch" | "triton".
    """
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be auto, torch or triton, got {backend!r}")
    if backend == "triton":
        return _triton_greedy.greedy(scores, first, steps)
    if backend == "auto" and _triton_greedy.usable(scores):
        try:
            return _triton_greedy.greedy(scores, first, steps)
        except Exception as err:  # noqa: BLE001 - a Triton build that cannot compile the kernel: use torch
            _triton_greedy.disable(err)
    batch, n = scores.shape[0], scores.shape[-1]
    if scores.device.type == "cpu":
        flat_np, offset_np = scores.reshape(-1, n).numpy(), np.arange(batch) * n
        return torch.from_numpy(greedy_rows(lambda i: flat_np[i + offset_np], first.numpy(), steps))
    flat, offset = scores.reshape(-1, n), torch.arange(batch, device=scores.device) * n
    return greedy_rows(lambda i: flat.index_select(0, i + offset), first, steps)


def mask_self(scores: torch.Tensor) -> torch.Tensor:
    """Set the diagonal of [..., n, n] score matrices to -inf in place (see `greedy_rows`)."""
    scores.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
    return scores


def covering_radius(points: torch.Tensor, kept: torch.Tensor) -> float:
    """max over all points of the Euclidean distance to the nearest kept point (the k-center objective)."""
    d = torch.cdist(points.double(), points[kept].double())
    return float(d.min(dim=1).values.max())
