"""divprune: the published DivPrune rule (max-min diversity on cosine distance).

Paper: Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models",
CVPR 2025. Code: github.com/vbdi/divprune (the `DivPrune` function used in its LLaVA patch).

Rule: D = 1 - cos(f_i, f_j) over the visual tokens. The first pick is the token whose nearest other
token is farthest (the second-smallest entry of its column). Each later pick maximises its minimum
distance to the chosen set.

Differences from the public code, both without effect on the chosen set in non-degenerate inputs:
- The minimum over chosen rows is kept incrementally instead of recomputed from all chosen rows
  each step (the same values, as min is exact; `divprune_reference` below is the recomputing form,
  used by tests and benchmarks as the independent reference). The loop is the shared fast greedy
  (`greedy.greedy_over_matrix`: one Triton launch on CUDA).
- Chosen tokens are masked, so exact duplicate tokens cannot be chosen twice (the public code can
  re-pick a chosen token when every remaining distance is 0 up to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evtp_cli.api import PruneContext
from evtp_cli.pruners.base import Pruner
from evtp_cli.pruners.greedy import greedy_over_matrix, mask_self


def cosine_distance_matrix(features: torch.Tensor) -> torch.Tensor:
    normed = torch.nn.functional.normalize(features.float(), dim=-1)
    return (normed @ normed.T).neg_().add_(1.0)  # 1 - cos in place: fl(-g + 1) is fl(1 - g)


def divprune_first(dist: torch.Tensor) -> int:
    """The token with the largest nearest-neighbour distance (self excluded by taking the 2nd smallest)."""
    if dist.shape[0] == 1:
        return 0
    # the 2nd smallest of each column, as topk(2, dim=0) gives it, in two plain column minima: hide
    # each column's minimum, take the minimum again, put it back (dist ends as it started)
    lowest, rows = dist.min(dim=0)
    cols = torch.arange(dist.shape[1], device=dist.device)
    dist[rows, cols] = float("inf")
    nearest = dist.min(dim=0).values
    dist[rows, cols] = lowest
    return int(torch.argmax(nearest))


def divprune_reference(features: torch.Tensor, k: int) -> torch.Tensor:
    """The published loop: each step recomputes the minimum over all chosen rows. Selection order."""
    dist = cosine_distance_matrix(features)
    chosen = torch.empty(k, dtype=torch.long)
    taken = torch.zeros(dist.shape[0], dtype=torch.bool)
    for i in range(k):
        if i == 0:
            nxt = divprune_first(dist)
        else:
            scores = dist[chosen[:i]].min(dim=0).values
            scores[taken] = float("-inf")
            nxt = int(torch.argmax(scores))
        chosen[i] = nxt
        taken[nxt] = True
    return chosen


class DivPrune(Pruner):
    """DivPrune (CVPR 2025): max-min diversity selection on cosine distance."""

    name = "divprune"

    @dataclass
    class Config:
        pass

    def _select(self, features: torch.Tensor, coords: torch.Tensor, k: int, context: PruneContext | None) -> torch.Tensor:
        dist = cosine_distance_matrix(features)
        first = torch.tensor([divprune_first(dist)], device=dist.device)
        return greedy_over_matrix(mask_self(dist)[None], first, k)[0]
