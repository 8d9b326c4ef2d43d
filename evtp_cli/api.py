"""The contracts pruners, models, datasets and the evaluation loop share (docs/extending.md).

Pruners and models import this module and their own package, never each other: the evaluation loop
(`evtp_cli.bench.evaluate`) joins them. What lives here:

- the sample a dataset yields (`Sample`) and the key-frame policy video models apply;
- what a pruner reads and returns (`PruneContext`, `Merged`, `keep_count`, `check_inputs`, `frame_index`);
- what a model returns and takes (`VisualTokens`, `PrunePlan`, `Prediction`);
- the states a model hands to a method acting inside it (`VisionState`, `LLMState`, `LayerPrune`) and the
  hook that binds such a method to one sample (`InnerHook`, `inner_hook`);
- `member_mean`, the coordinates of a merged token, which merging methods and models both compute.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from evtp_cli.errors import PrunerNotApplicable

__all__ = [
    "InnerHook",
    "LLMState",
    "LayerPrune",
    "Merged",
    "Prediction",
    "PruneContext",
    "PrunePlan",
    "PrunerNotApplicable",
    "Sample",
    "Task",
    "VisionState",
    "VisualTokens",
    "check_inputs",
    "frame_index",
    "inner_hook",
    "keep_count",
    "key_frame_indices",
    "member_mean",
]

# ---------------------------------------------------------------------------------------------
# samples

Task = Literal["image", "video"]


@dataclass
class Sample:
    """One referring expression (or question) on one image or video.

    frames: sequence (possibly lazy) of uint8 RGB arrays [H, W, 3]; one for an image.
    masks: bool [T, H, W] ground truth for every frame (all-False where the target is absent), or None
        for splits without public ground truth.
    ignore: bool [T, H, W] pixels the metrics skip, or None.
    meta: source ids (video_id/exp_id for video sets; ref_id/ann_id/image_id for RefCOCO...).
    """

    id: str
    task: Task
    text: str
    frames: Sequence[np.ndarray]
    masks: np.ndarray | None
    ignore: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.frames)


def key_frame_indices(num_frames: int, policy: str) -> list[int]:
    """Frame indices for `first-K` (Sa2VA's protocol: the first K frames) or `uniform-K` (K evenly spaced).

    A bare number K means first-K; `all` returns every frame. Fewer frames than K gives all of them.
    """
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    policy = str(policy).strip()
    if policy.isdigit():
        policy = f"first-{policy}"
    if policy == "all":
        return list(range(num_frames))
    m = re.fullmatch(r"(first|uniform)-(\d+)", policy)
    if not m or int(m.group(2)) < 1:
        raise ValueError(f"frame policy {policy!r} is not one of first-K, uniform-K, all (K >= 1)")
    k = min(int(m.group(2)), num_frames)
    if m.group(1) == "first" or k == num_frames:
        return list(range(k))
    if k == 1:
        return [0]
    return [round(i * (num_frames - 1) / (k - 1)) for i in range(k)]


# ---------------------------------------------------------------------------------------------
# pruner inputs and outputs

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


def member_mean(values: torch.Tensor, sizes: torch.Tensor, members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted means over groups: values [n, c], sizes [n], members bool [m, n] -> ([m, c], sizes [m]).

    A merged token's coordinates are the size-weighted mean of its members' (each member weighs the
    number of original tokens it already stands for).
    """
    weights = members.to(values.dtype) * sizes.to(values.dtype)[None]
    total = weights.sum(dim=1)
    return (weights @ values) / total.clamp_min(1e-12)[:, None], total


# ---------------------------------------------------------------------------------------------
# model outputs and plans

@dataclass
class VisualTokens:
    """Visual tokens of one sample as the LLM would receive them.

    features: [N, d] after the projector. coords: [N, 3] = (t, y, x) in [0, 1]. frame_ids: [N] index of
    the key frame each token comes from. context: what this backend offers pruners. state: private to
    the backend (full features for the mask decoder, prompt pieces, caches). frames_shown: the sample
    frame that each frame id stands for (the first of its group where frames are merged), for pictures;
    None: the key frames of the model's frame policy.
    """

    features: torch.Tensor
    coords: torch.Tensor
    frame_ids: torch.Tensor
    context: PruneContext
    state: Any = None
    frames_shown: list[int] | None = None

    @property
    def count(self) -> int:
        return int(self.features.shape[0])


@dataclass
class PrunePlan:
    """What to keep. `keep=None` is the unpruned reference.

    keep: sorted LongTensor of kept visual-token indices.
    features / coords: replacement tokens aligned with `keep` (merging methods); None = the originals.
    inner: for methods that act inside the model (stage "vision" or "llm"): a callable
        `inner(hook_state)` the backend calls where the method acts, with `inner_keep` tokens to keep
        (the states and results are defined below). `inner_stage` says which hook:
        "vision" (once, on the encoder output: `inner(VisionState) -> Merged`) or "llm" (before each
        decoder layer in `inner_layers`: `inner(LLMState) -> LayerPrune | None`); `inner_layer` is the
        first of those layers.
    """

    keep: torch.Tensor | None = None
    features: torch.Tensor | None = None
    coords: torch.Tensor | None = None
    inner: Callable[..., Any] | None = None
    inner_layer: int | None = None
    inner_keep: int | None = None
    inner_stage: str | None = None
    inner_layers: tuple[int, ...] = ()


@dataclass
class Prediction:
    """masks: bool [T, H, W] for every frame of the sample. text: the generated answer, if any."""

    masks: np.ndarray
    text: str = ""
    extras: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# methods acting inside a model


@dataclass
class VisionState:
    """What a backend gives a "vision" method: vision-space tokens right after the encoder.

    features: [N, C] before the projector, one row per visual token the LLM would see.
    coords: [N, 3] (t, y, x). context: the sample's context (frame ids; attention and keys of the
    encoder layer the method reads, possibly as lazy providers).
    """

    features: torch.Tensor
    coords: torch.Tensor
    context: PruneContext


@dataclass
class LLMState:
    """What a backend gives an "llm" method before decoder layer `layer` during prefill (batch size 1).

    hidden: [L, D] input of layer `layer` (the output of layer `layer - 1`) for the current sequence.
    visual: [n] ascending positions of the current visual tokens in `hidden`; coords: their [n, 3].
    text: [T] positions of the instruction tokens after the visual tokens (chat-template tail included).
    attention(queries) -> [H, q, L]: layer `layer - 1`'s causal attention probabilities for those query
        positions, recomputed from its q/k. keys() -> [H, L, dh]: layer `layer - 1`'s keys.
    norm: the LLM's final norm. inputs: [L0, D] the LLM's input embeddings of the unpruned sequence,
    with inputs_visual [N0] / inputs_text [T] the visual and instruction positions in it.
    """

    layer: int
    depth: int
    hidden: torch.Tensor
    visual: torch.Tensor
    text: torch.Tensor
    coords: torch.Tensor
    attention: Callable[[torch.Tensor], torch.Tensor]
    keys: Callable[[], torch.Tensor]
    norm: Callable[[torch.Tensor], torch.Tensor]
    inputs: torch.Tensor
    inputs_visual: torch.Tensor
    inputs_text: torch.Tensor


@dataclass
class LayerPrune:
    """An llm method's decision at one layer.

    keep: sorted indices into the current visual tokens. merged: [m, D] hidden states of new visual
    tokens placed right after the kept ones (SparseVLM's recycled tokens), or None. groups: [n] the
    merged token each current visual token went into (-1: none), so the backend can give the new
    tokens size-weighted coordinates.
    """

    keep: torch.Tensor
    merged: torch.Tensor | None = None
    groups: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return int(self.keep.numel()) + (0 if self.merged is None else int(self.merged.shape[0]))

    def members(self, n: int, device: torch.device | str) -> torch.Tensor:
        """[m, n] bool: which of the n current visual tokens each merged token stands for."""
        groups = self.groups.to(device)
        inside = torch.nonzero(groups >= 0).flatten()
        members = torch.zeros(int(self.merged.shape[0]), n, dtype=torch.bool, device=device)
        members[groups[inside], inside] = True
        return members


class InnerHook:
    """A vision/llm method bound to one sample's budget and context: what `PrunePlan.inner` holds.

    The pruner is duck-typed (`stage`, `name`, `select_and_merge`, and for llm methods `layers(depth)` and
    `prune_layer(state, k, context)`), so this module needs no pruner class."""

    def __init__(self, pruner: Any, k: int, context: PruneContext):
        if pruner.stage not in ("vision", "llm"):
            raise ValueError(f"{type(pruner).__name__} acts {pruner.stage}; only vision/llm methods have hooks")
        self.pruner, self.k, self.context = pruner, k, context
        self.stage = pruner.stage

    @property
    def vision_layer(self) -> int | None:
        """For a vision method that selects inside the tower: the block whose output it selects at; else None."""
        return getattr(self.pruner, "vision_layer", None) if self.stage == "vision" else None

    def layers(self, depth: int | None) -> tuple[int, ...]:
        """The decoder layers before which an llm method acts (empty for vision methods)."""
        if self.stage != "llm":
            return ()
        if not depth:
            raise PrunerNotApplicable(f"{self.pruner.name} acts inside the LLM; this backend does not say how many layers its LLM has")
        return tuple(self.pruner.layers(depth))  # type: ignore[attr-defined]

    def __call__(self, state: VisionState | LLMState) -> Any:
        if self.stage == "vision":
            return self.pruner.select_and_merge(state.features, state.coords, self.k, state.context)  # type: ignore[union-attr]
        return self.pruner.prune_layer(state, self.k, self.context)  # type: ignore[attr-defined]


def inner_hook(pruner: Any, k: int, context: PruneContext, backend_stages: tuple[str, ...], backend: str) -> InnerHook:
    """The hook for a vision/llm method, or PrunerNotApplicable when the backend has no such hook."""
    if pruner.stage not in backend_stages:
        where = "right after the vision encoder" if pruner.stage == "vision" else "inside the LLM"
        raise PrunerNotApplicable(f"{pruner.name} acts {where}; backend {backend} has no {pruner.stage} hook")
    return InnerHook(pruner, k, context)
