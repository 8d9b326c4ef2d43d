"""Greedy farthest-point (k-center) selection shared by evtp, kcenter and divprune.

Gonzalez (1985), "Clustering to minimize the maximum intercluster distance": starting from any
point, repeatedly adding the point farthest from the chosen set gives a covering radius at most twice
the optimum (for a metric). Here the "farthest" score may be multiplied by a per-point weight.
"""

from __future__ import annotations

import torch


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


def covering_radius(points: torch.Tensor, kept: torch.Tensor) -> float:
    """max over all points of the Euclidean distance to the nearest kept point (the k-center objective)."""
    d = torch.cdist(points.double(), points[kept].double())
    return float(d.min(dim=1).values.max())
