"""The pre-LLM pruning hook: drop pruned visual positions from a merged prefill, keeping positions right.

Feature-based pruners act where the visual embeddings have been scattered into the input embeddings and
before the language model's first layer. `prune_prefill` takes that merged sequence (batch size 1) and a
keep plan over its visual tokens, and returns the shorter sequence the LLM runs on:

- `inputs_embeds` / `attention_mask` lose the pruned visual rows (text rows are never dropped);
- merging pruners' replacement features overwrite the kept visual rows first;
- `position_ids` are the ids each kept token had in the *unpruned* sequence (`positions="original"`):
  1-D `[1, L]` ids for ordinary RoPE models (InternVL), or the 3-D M-RoPE ids `[3, 1, L]` that
  Qwen2.5-VL's `get_rope_index` computed on the full sequence. `positions="renumber"` gives contiguous
  ids `0 .. L'-1` instead (on every M-RoPE axis), as if the kept tokens were the whole prompt;
- `next_position`: the id of the first generated token. With original ids it is the one the unpruned
  sequence would give it (`L` for 1-D; `L + rope_deltas` for M-RoPE, rope_deltas taken from the unpruned
  sequence), so decoding continues where the full prompt would have; with renumbering it is `L'`.
  Renumbering applies to pruned prefills only: with no keep plan (the unpruned reference) the model's
  own ids are used, so the reference rows are the unmodified model in both modes.
  Decoding then feeds step `j` at `next_position + j` while the KV cache and the attention mask hold
  only the `L' + j` positions actually computed.

Pure tensor code: no model, no transformers import. The backends (`sa2va_qwen`, `sa2va_internvl`) call
it between embedding merge and the LLM; the equivalence tests rebuild its output by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

PositionMode = Literal["original", "renumber"]


@dataclass
class PrunedPrefill:
    """The prefill the LLM actually runs (batch size 1).

    inputs_embeds [1, L', d]; attention_mask [1, L'] (all ones); position_ids [1, L'] or [3, 1, L'];
    sequence_index [L']: which positions of the unpruned sequence were kept; next_position: position id
    of the first generated token; full_length: L of the unpruned sequence.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    sequence_index: torch.Tensor
    next_position: int
    full_length: int

    @property
    def length(self) -> int:
        return int(self.inputs_embeds.shape[1])


def kept_sequence_index(length: int, visual_index: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Sorted positions of the unpruned sequence that survive: every non-visual one plus the kept visual ones.

    visual_index: [N] sequence positions of the visual tokens, in the order the pruner saw them.
    keep: sorted indices into [0, N), or None (keep everything).
    """
    device = visual_index.device
    if keep is None:
        return torch.arange(length, device=device)
    dropped = torch.ones(visual_index.numel(), dtype=torch.bool, device=device)
    dropped[keep.to(device)] = False
    alive = torch.ones(length, dtype=torch.bool, device=device)
    alive[visual_index[dropped]] = False
    return torch.nonzero(alive, as_tuple=True)[0]


def prune_prefill(
    inputs_embeds: torch.Tensor,
    position_ids: torch.Tensor,
    visual_index: torch.Tensor,
    next_position: int,
    keep: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
    positions: PositionMode = "original",
) -> PrunedPrefill:
    """Apply a keep plan to a merged prefill. See the module docstring for the position rules.

    inputs_embeds [1, L, d] with the visual features already scattered in; position_ids [1, L] or
    [3, 1, L] for the unpruned sequence; visual_index [N]; next_position: the first generated token's id
    in the unpruned sequence; keep: sorted LongTensor into [0, N) or None; features: replacement rows
    aligned with keep (merging pruners) or None.
    """
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[0] != 1:
        raise ValueError(f"inputs_embeds must be [1, L, d] (batch size 1), got {tuple(inputs_embeds.shape)}")
    length = int(inputs_embeds.shape[1])
    if position_ids.shape[-1] != length:
        raise ValueError(f"position_ids cover {position_ids.shape[-1]} positions, the sequence has {length}")
    if positions not in ("original", "renumber"):
        raise ValueError(f"positions must be 'original' or 'renumber', got {positions!r}")
    if keep is not None:
        keep = keep.to(visual_index.device)
        if keep.numel() > 1 and not bool((keep[1:] > keep[:-1]).all()):
            raise ValueError("keep must be sorted ascending and unique")
        if keep.numel() and (int(keep[0]) < 0 or int(keep[-1]) >= visual_index.numel()):
            raise ValueError(f"keep indices must lie in [0, {visual_index.numel()})")
    if features is not None:
        if keep is None or features.shape[0] != keep.numel():
            raise ValueError("replacement features need a keep plan of the same length")
        inputs_embeds = inputs_embeds.clone()
        inputs_embeds[0, visual_index[keep]] = features.to(inputs_embeds.dtype)
    index = kept_sequence_index(length, visual_index, keep)
    embeds = inputs_embeds[:, index]
    kept = int(index.numel())
    if positions == "original" or keep is None:  # the unpruned prompt always keeps the model's own ids
        pos = position_ids[..., index]
        next_pos = int(next_position)
    else:
        ramp = torch.arange(kept, device=position_ids.device, dtype=position_ids.dtype)
        pos = ramp.expand(position_ids.shape[:-1] + (kept,)).clone()
        next_pos = kept
    mask = torch.ones(1, kept, dtype=torch.long, device=embeds.device)
    return PrunedPrefill(embeds, mask, pos, index, next_pos, length)


def decode_position_ids(next_position: int, step: int, like: torch.Tensor) -> torch.Tensor:
    """Position ids for the token fed at decode step `step` (0 = first generated token), shaped as `like`
    ([1, L] -> [1, 1]; [3, 1, L] -> [3, 1, 1]): text after the prompt advances all M-RoPE axes together."""
    value = torch.full(like.shape[:-1] + (1,), next_position + step, dtype=like.dtype, device=like.device)
    return value
