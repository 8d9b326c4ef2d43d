"""kcenter: greedy k-center on visual features alone — EVTP with λ = 0 and β = 0.

The ablation baseline for EVTP's spatial and information terms (Gonzalez 1985 greedy). It selects
over all tokens of a sample at once (images and videos alike), seeded at the most informative token
as EVTP is: it equals `evtp:spatial_weight=0,info_weight=0,mode=global`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evtp_cli.api import PruneContext
from evtp_cli.pruners.base import Pruner
from evtp_cli.pruners.evtp import evtp_select


class KCenter(Pruner):
    """Greedy k-center (farthest point) on cosine feature distance only."""

    name = "kcenter"

    @dataclass
    class Config:
        temperature: float = 1.0

    def _select(self, features: torch.Tensor, coords: torch.Tensor, k: int, context: PruneContext | None) -> torch.Tensor:
        one_set = torch.zeros(features.shape[0], dtype=torch.long, device=features.device)
        return evtp_select(
            features, coords, k, one_set, spatial_weight=0.0, info_weight=0.0, temperature=self.config.temperature, mode="global"
        )
