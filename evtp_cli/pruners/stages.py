"""Methods that act inside the model: the hook interface a backend implements, and shared pieces.

`Pruner.stage` says where a method acts:

- "pre-llm" (most methods): on the projected visual tokens, between the projector and the LLM; the
  evaluation loop calls `select_and_merge` and passes the result in `PrunePlan.keep/features/coords`.
- "vision" (VisionZip, FasterVLM, VisPruner, PruMerge+, ToMe): right after the vision encoder, on the
  vision-space tokens (before the projector), reading the encoder's attention and keys.
- "llm" (FastV, SparseVLM, DART): inside the LLM during prefill, between two decoder layers.

For the last two the loop wraps the pruner in an `InnerHook` (`inner_hook`) and passes it as
`PrunePlan.inner`; the backend calls it where the method acts:

- vision: `merged = plan.inner(VisionState(features, coords, context))` with `features` the
  vision-space rows aligned one-to-one with the LLM's visual tokens; `merged` is a `Merged` in that
  space (indices sorted), which the backend projects and feeds to the LLM as a pre-LLM plan.
  A method that selects *inside* the vision tower (`evtp:at=vision-layer-L`) has
  `plan.inner.vision_layer = L`: the backend runs the tower to the output of block L, calls the same
  `plan.inner(VisionState(...))` with that block's hidden states grouped per LLM token (the patches
  that become one visual token side by side), runs the later blocks and the projector on the kept
  groups only, and feeds the LLM the kept tokens at their original positions. A backend whose tower
  cannot do that raises PrunerNotApplicable; a block it cannot prune after is an EvtpError.
- llm: before each decoder layer `j` in `plan.inner_layers` (0-based; layers < j ran on the current
  sequence), `result = plan.inner(LLMState(...))`; the backend drops the visual rows not in
  `result.keep` from the hidden states (positions, attention mask and cache positions with them),
  appends `result.merged` rows after the kept visual rows, and runs layers >= j on that sequence.
  Layers < j keep the key/value cache of every token (as in FastV: the early layers saw the full
  sequence). The backend reports the visual-token count each layer carried in
  `Prediction.extras["visual_tokens_per_layer"]`.

docs/baselines.md lists, per method, what a backend must provide. Shared helpers here: attention rows
and attention received recomputed from q/k (so models keep running sdpa/flash attention), size-weighted
merging of coordinates, an even per-frame budget, and top-k with a fixed tie rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from evtp_cli.api import (
    LayerPrune,
    LLMState,
    Merged,
    PruneContext,
    PrunerNotApplicable,
    check_inputs,
    frame_index,
    member_mean,
)
from evtp_cli.pruners.base import Pruner

__all__ = [
    "FrameResult",
    "LLMPruner",
    "VisionPruner",
    "check_layer",
    "frame_budgets",
    "log_distance",
    "topk_sorted",
]

# ---------------------------------------------------------------------------------------------
# shared pure functions


def topk_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, ties to the lower index, returned in ascending index order."""
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    return torch.sort(order[:k]).values


def frame_budgets(sizes: list[int], k: int) -> list[int]:
    """Split k over frames of the given sizes as evenly as possible (earlier frames take the remainder),
    never more than a frame holds and at least one per frame while k allows."""
    budgets = [0] * len(sizes)
    left = k
    while left > 0:
        open_frames = [i for i, s in enumerate(sizes) if budgets[i] < s]
        share, extra = divmod(left, len(open_frames))
        for rank, i in enumerate(open_frames):
            give = min(sizes[i] - budgets[i], share + (1 if rank < extra else 0))
            budgets[i] += give
            left -= give
    return budgets


# ---------------------------------------------------------------------------------------------
# the hook interface


# ---------------------------------------------------------------------------------------------
# base classes


@dataclass
class FrameResult:
    """One frame's outcome in a vision method: local indices, the features for them (None: the
    originals) and, for merged tokens, which local tokens each output token stands for ([k, n] bool)."""

    indices: torch.Tensor
    features: torch.Tensor | None = None
    members: torch.Tensor | None = None
    info: dict[str, Any] | None = None


class VisionPruner(Pruner):
    """A method acting on the encoder output, frame by frame (each frame is encoded on its own).

    The budget k is split evenly over frames (`frame_budgets`). Subclasses write `_frame(features,
    k, attention, keys, heads) -> FrameResult`; `needs` lists the context entries they read.
    """

    stage: ClassVar[str] = "vision"
    needs: ClassVar[tuple[str, ...]] = ("attention",)

    def _frame(self, features, k, attention, keys, heads) -> FrameResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, features: torch.Tensor, coords: torch.Tensor, k: int, context: PruneContext | None) -> Merged:
        context = context if context is not None else PruneContext()
        got = {name: context.need(name, self.name) for name in self.needs}
        attention = got.get("attention")
        keys = got.get("keys")
        if attention is not None and attention.shape[0] != features.shape[0]:
            raise ValueError(f"attention has {attention.shape[0]} entries for {features.shape[0]} tokens")
        if keys is not None and keys.shape[0] != features.shape[0]:
            raise ValueError(f"keys have {keys.shape[0]} rows for {features.shape[0]} tokens")
        heads = int(context.extras.get("key_heads", 1))
        frames = frame_index(coords, context)
        groups = [torch.nonzero(frames == f).flatten() for f in torch.unique(frames)]
        budgets = frame_budgets([int(g.numel()) for g in groups], k)
        indices, feats, member_rows, info = [], [], [], {}
        for idx, kf in zip(groups, budgets):
            if kf == 0:
                continue
            out = self._frame(
                features[idx], kf, None if attention is None else attention[idx].float(), None if keys is None else keys[idx], heads
            )
            indices.append(idx[out.indices])
            feats.append(features[idx[out.indices]] if out.features is None else out.features.to(features.dtype))
            members = out.members
            if members is None:
                members = torch.zeros(out.indices.numel(), idx.numel(), dtype=torch.bool, device=features.device)
                members[torch.arange(out.indices.numel()), out.indices] = True
            full = torch.zeros(members.shape[0], features.shape[0], dtype=torch.bool, device=features.device)
            full[:, idx] = members
            member_rows.append(full)
            for key, value in (out.info or {}).items():
                info[key] = info.get(key, 0) + value
        index = torch.cat(indices)
        order = torch.argsort(index)
        members = torch.cat(member_rows)[order]
        merged_coords, _ = member_mean(coords.float(), torch.ones(coords.shape[0], device=coords.device), members)
        return Merged(index[order], torch.cat(feats)[order], merged_coords.to(coords.dtype), info)

    def _select(self, features, coords, k, context):
        return self._run(features, coords, k, context).indices

    def select_and_merge(self, features, coords, k, context=None) -> Merged:
        check_inputs(features, coords, k)
        if k == features.shape[0]:
            return Merged(torch.arange(k, device=features.device), features, coords)
        merged = self._run(features, coords, k, context)
        if merged.indices.numel() != k or torch.unique(merged.indices).numel() != k:
            raise RuntimeError(f"{type(self).__name__} returned {merged.indices.numel()} tokens with duplicates or wrong count (k={k})")
        return merged


class LLMPruner(Pruner):
    """A method acting inside the LLM: `rule(state, k, context)` picks k of the state's visual tokens.

    By default the method prunes once, before decoder layer `config.layer` (K), to k tokens; multi-stage
    methods override `layers(depth)` and `prune_layer(state, k, context)`. Used outside a model,
    `select` applies the rule once to an `LLMState` given as `context.extras["llm_state"]` (tests,
    analyses); without one it raises PrunerNotApplicable.
    """

    stage: ClassVar[str] = "llm"

    def layers(self, depth: int) -> list[int]:
        return [check_layer(self.name, self.config.layer, depth, "after layer K =")]

    def prune_layer(self, state: LLMState, k: int, context: PruneContext | None) -> LayerPrune | None:
        if state.layer not in self.layers(state.depth) or k >= state.visual.numel():
            return None
        return LayerPrune(self.rule(state, k, context))

    def _select(self, features, coords, k, context):
        context = context if context is not None else PruneContext()
        state = context.need("llm_state", self.name)
        if int(state.visual.numel()) != features.shape[0]:
            raise ValueError(f"the LLM state holds {state.visual.numel()} visual tokens, features {features.shape[0]}")
        return self.rule(state, k, context)

    def rule(self, state: LLMState, k: int, context: PruneContext | None) -> torch.Tensor:  # pragma: no cover
        """The method's selection at one layer: k sorted indices into the state's visual tokens."""
        raise NotImplementedError


def check_layer(name: str, layer: int, depth: int, what: str) -> int:
    """Validate a pruning layer against the LLM depth (1 <= layer < depth)."""
    if not 1 <= layer < depth:
        raise PrunerNotApplicable(f"{name} prunes {what} {layer}, but this LLM has {depth} layers (needs 1 <= K < {depth})")
    return layer


def log_distance(a: float, b: float) -> float:
    return abs(math.log(max(a, 1e-9) / max(b, 1e-9)))
