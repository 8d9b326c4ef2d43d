"""The pruner contract (docs/extending.md, "A new pruner"): `select(features [N, d], coords [N, 3], k, context) -> LongTensor [k]`.

Indices are unique and sorted ascending so that kept tokens keep their original order. The base class
validates inputs and outputs once, so every method file only writes its rule in `_select`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from evtp_cli.errors import PrunerNotApplicable

__all__ = [
    "Merged",
    "PruneContext",
    "Pruner",
    "PrunerNotApplicable",
    "check_inputs",
    "frame_index",
    "keep_count",
]


@dataclass
class PruneContext:
    """What some methods need beyond features and coordinates. Every field is optional.

    frame_ids: LongTensor [N], the frame each token comes from (derived from coords[:, 0] if absent).
    text_embeds: [L, d] instruction embeddings in the LLM's input space.
    attention: [N] importance of each visual token (e.g. [CLS] attention or mean attention received).
    keys: [N, dk] attention keys of the visual tokens at the layer a method reads.
    seed: seed for randomised methods (overrides the pruner's own seed when given).
    extras: anything else a backend offers, by name.
    providers: lazy sources for any field or extra above (`name -> callable()`), so that a backend
        computes what a method needs only when a method asks for it, inside the method's own timing.
        Methods read through `need(name, by)`, which resolves providers once and raises
        `PrunerNotApplicable` when neither the value nor a provider is there.
    """

    frame_ids: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    seed: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    providers: dict[str, Callable[[], Any]] = field(default_factory=dict)

    def need(self, name: str, by: str) -> Any:
        """The field or extra `name`, computed from its provider on first use; else PrunerNotApplicable."""
        is_field = name in _CONTEXT_FIELDS
        value = getattr(self, name) if is_field else self.extras.get(name)
        if value is None and name in self.providers:
            value = self.providers[name]()
            if is_field:
                setattr(self, name, value)
            else:
                self.extras[name] = value
        if value is None:
            what = _CONTEXT_NEEDS.get(name, name)
            raise PrunerNotApplicable(f"{by} needs {what}, which this backend does not provide")
        return value


_CONTEXT_FIELDS = ("frame_ids", "text_embeds", "attention", "keys")
_CONTEXT_NEEDS = {
    "attention": "vision-side attention (the [CLS] attention, or the mean attention each token receives)",
    "keys": "the vision encoder's attention keys of the visual tokens",
    "text_embeds": "instruction embeddings in the LLM input space",
    "llm_state": "the LLM's hidden states and attention at its pruning layer (an in-LLM hook)",
}


@dataclass
class Merged:
    """Result of `select_and_merge`: kept indices and the features/coords the LLM receives."""

    indices: torch.Tensor
    features: torch.Tensor
    coords: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)  # what a method reports besides (e.g. PruMerge+'s adaptive count)


def keep_count(ratio: float, n: int) -> int:
    """The number of tokens to keep at a keep ratio: max(1, round(ratio * N))."""
    if not (0.0 < ratio <= 1.0) or math.isnan(ratio):
        raise ValueError(f"keep ratio must be in (0, 1], got {ratio}")
    return max(1, min(n, int(round(ratio * n))))


def check_inputs(features: torch.Tensor, coords: torch.Tensor, k: int) -> None:
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise ValueError(f"features must be a 2-D tensor [N, d], got shape {tuple(getattr(features, 'shape', ()))}")
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point, got {features.dtype}")
    n = features.shape[0]
    if n == 0:
        raise ValueError("features is empty (N = 0)")
    if not isinstance(coords, torch.Tensor) or tuple(coords.shape) != (n, 3):
        raise ValueError(
            f"coords must have shape [N, 3] = [{n}, 3] to match features, got {tuple(getattr(coords, 'shape', ()))}"
        )
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be an integer, got {k!r}")
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= N = {n}, got k = {k}")
    if not torch.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values")
    if not torch.isfinite(coords).all():
        raise ValueError("coords contain NaN or infinite values")


def frame_index(coords: torch.Tensor, context: PruneContext | None = None) -> torch.Tensor:
    """Frame id [N] of each token: from the context, else from the distinct t values in coords."""
    if context is not None and context.frame_ids is not None:
        return context.frame_ids.to(torch.long)
    _, inverse = torch.unique(coords[:, 0], sorted=True, return_inverse=True)
    return inverse


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
