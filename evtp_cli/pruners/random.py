"""random: seeded uniform-random token selection, the floor every pruner must beat.

Used as a baseline throughout the token-pruning literature (e.g. FastV, DivPrune tables).
The evaluation loop passes a per-sample seed in the context so samples differ but runs repeat.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evtp_cli.api import PruneContext
from evtp_cli.pruners.base import Pruner


def random_indices(n: int, k: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.randperm(n, generator=generator)[:k]


class RandomPruner(Pruner):
    """Seeded random selection (per-sample seed from the context, else the config's seed)."""

    name = "random"

    @dataclass
    class Config:
        seed: int = 0

    def _select(self, features: torch.Tensor, coords: torch.Tensor, k: int, context: PruneContext | None) -> torch.Tensor:
        seed = self.config.seed if context is None or context.seed is None else context.seed + self.config.seed
        return random_indices(features.shape[0], k, seed).to(features.device)
