"""The pruner contract (docs/extending.md, "A new pruner"): `select(features [N, d], coords [N, 3], k, context) -> LongTensor [k]`.

Indices are unique and sorted ascending so that kept tokens keep their original order. The base class
validates inputs and outputs once, so every method file only writes its rule in `_select`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from evtp_cli.api import Merged, PruneContext, check_inputs

__all__ = ["Pruner"]


class Pruner:
    """Base class. Subclasses define `Config` (a dataclass) and `_select`.

    `stage` says where the method acts: "pre-llm" (between projector and LLM; the default),
    "vision" (inside or right after the vision encoder) or "llm" (inside the LLM at a layer).
    Stage-specific backends read it; feature-based methods all act pre-LLM.
    """

    name: ClassVar[str] = ""
    stage: ClassVar[str] = "pre-llm"
    merges: ClassVar[bool] = False

    @dataclass
    class Config:
        pass

    def __init__(self, config: Any | None = None):
        self.config = config if config is not None else type(self).Config()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    def select(
        self,
        features: torch.Tensor,
        coords: torch.Tensor,
        k: int,
        context: PruneContext | None = None,
    ) -> torch.Tensor:
        check_inputs(features, coords, k)
        n = features.shape[0]
        if k == n:
            return torch.arange(n, dtype=torch.long, device=features.device)
        indices = self._select(features, coords, k, context)
        indices = torch.as_tensor(indices, dtype=torch.long, device=features.device)
        indices, _ = torch.sort(indices)
        if indices.numel() != k or (indices.numel() > 1 and (indices[1:] == indices[:-1]).any()):
            raise RuntimeError(f"{type(self).__name__} returned {indices.numel()} indices with duplicates or wrong count (k={k})")
        return indices

    def select_and_merge(
        self,
        features: torch.Tensor,
        coords: torch.Tensor,
        k: int,
        context: PruneContext | None = None,
    ) -> Merged:
        """Dropping methods keep features as they are; merging methods override this."""
        indices = self.select(features, coords, k, context)
        return Merged(indices, features[indices], coords[indices])

    def _select(
        self, features: torch.Tensor, coords: torch.Tensor, k: int, context: PruneContext | None
    ) -> torch.Tensor:
        raise NotImplementedError
