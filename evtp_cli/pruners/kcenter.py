"""kcenter: greedy k-center on visual features alone — EVTP with λ = 0 and β = 0.

The ablation baseline for EVTP's spatial and information terms (Gonzalez 1985 greedy). It selects
over all tokens of a sample at once (images and videos alike), seeded at the most informative token
as EVTP is: it equals `evtp:spatial_weight=0,info_weight=0,mode=global`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evtp_cli.pruners.base import PruneContext, Pruner
from evtp_cli.pruners.evtp import mixed_distance, token_information
from evtp_cli.pruners.greedy import greedy_farthest_point


class KCenter(Pruner):
    """Greedy k-center (farthest point) on cosine feature distance only."""

    name = "kcenter"

    @dataclass
    class Config:
        temperature: float = 1.0

    def _select(self, features: torch.Tensor, coords: torch.Tensor, k: int, context: PruneContext | None) -> torch.Tensor:
        dist = mixed_distance(features, coords, spatial_weight=0.0, temporal_scale=0.0)
        first = int(torch.argmax(token_information(features, self.config.temperature)))
        return greedy_farthest_point(dist, k, first)
