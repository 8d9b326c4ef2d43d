"""Pruning inside the vision tower of the Sa2VA-style backends (`evtp:at=vision-layer-L`), batch size 1.

The selection happens at the output of vision block L on that block's hidden states, grouped so that
one row is one future LLM token (the patches that the merger / pixel shuffle turns into that token, side
by side, in the order the projector reads them). The later blocks then run on the kept groups only, and
the projector on the kept tokens; the LLM gets them at their original positions (pre-LLM hook).

Read (not copied): transformers' `modeling_qwen2_5_vl.py` (`Qwen2_5_VisionTransformerPretrainedModel`:
patches in window order, `cu_seqlens` per image for the full-attention blocks and `cu_window_seqlens`
per window for the others, the vision RoPE as (cos, sin) per patch, `PatchMerger` on groups of
`spatial_merge_size**2` consecutive patches, the final `argsort(window_index)`), `vision_utils.py`
(`get_vision_window_index`) and `modeling_internvl.py` (InternViT: [CLS] + patches per tile, absolute
position embeddings added once, layers without masks, `pixel_shuffle`, `multi_modal_projector`).

- **Qwen2.5-VL** (`qwen_in_tower`): the tower's own forward runs with hooks. Block L's output (patches in
  window order) is grouped per merge unit and put in the LLM's order for the selection; the kept units'
  patches, still in window order, replace it. Each later block gets `cu_seqlens` recounted for the kept
  units (per image for full-attention blocks, per window for window blocks: a window keeps its members
  that survive, an emptied window disappears) and the rotary (cos, sin) of the kept patches, so every
  kept patch keeps its own 2-D position and its own window. The merger then sees the kept units only;
  its rows are put back on the full unit grid so that the tower's final reordering holds. L must be a
  full-attention block (`fullatt_block_indexes`: 7, 15, 23, 31 in Qwen2.5-VL-3B/7B): the selection then
  reads states that have seen the whole image, not one window.
- **InternViT** (`internvl_in_tower`): the layers run up to L on every tile; a row is a token's 2x2 patch
  group (found by pushing patch indices through the model's own `pixel_shuffle`); [CLS] is always kept.
  The later layers run per tile on [CLS] + the kept patches (batched when every tile keeps as many, one
  tile at a time otherwise: InternViT layers take no mask), the final norm follows, and the kept patches
  go back on the full grid for the pixel shuffle, whose rows of kept tokens go through the projector.
  L may be any layer up to the one the features come from (`vision_feature_layer`).

Timing (`StageTimer.stage` yields a `TimedSpan`): the encode runs the full tower (it does not know the method
yet) in its own "vision" span; selecting inside the tower takes that span back and times the pruned run
instead, as "vision" (blocks) + "select" (the method) + "vision" (later blocks, projector).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

from evtp_cli.errors import EvtpError
from evtp_cli.metrics.timing import StageTimer

Choose = Callable[[torch.Tensor], torch.Tensor]  # rows [N, c] in the LLM's order -> kept indices, sorted


# ---------------------------------------------------------------------------------------------
# Qwen2.5-VL


def kept_segments(cu: torch.Tensor, kept_units: torch.Tensor, unit: int) -> torch.Tensor:
    """Attention segments (cumulative patch counts, as `cu_seqlens`) of the kept merge units.

    cu: segment boundaries in patches (images or windows, window order); kept_units: sorted window
    positions of the kept units. Each segment keeps its kept members; emptied segments are dropped.
    """
    ends = (cu[1:].long() // unit).to(kept_units.device)
    segment = torch.searchsorted(ends, kept_units.long(), right=True)
    counts = torch.bincount(segment, minlength=ends.numel())
    bounds = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]) * unit
    return torch.unique_consecutive(bounds).to(device=cu.device, dtype=cu.dtype)


def qwen_in_tower(visual: nn.Module, window_index: torch.Tensor, layer: int, choose: Choose, timer: StageTimer,
                  run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the Qwen2.5-VL tower (`run()` -> its output rows in the LLM's order) selecting after block `layer`.

    window_index: the tower's window order of the merge units. Returns (kept indices [k] in the LLM's
    order, their features [k, d]).
    """
    unit = int(visual.spatial_merge_size) ** 2
    order = torch.argsort(window_index)  # LLM token -> window position
    n_units = int(window_index.numel())
    spans = contextlib.ExitStack()
    picked: dict[str, torch.Tensor] = {}
    sliced: dict[Any, Any] = {}

    def at_layer(module, args, output):
        spans.close()  # the blocks up to `layer` were the first vision span
        rows = output.reshape(n_units, -1)[order].float()
        with timer.stage("select"):
            keep = choose(rows)
        kept = torch.sort(order[keep]).values
        picked.update(keep=keep, kept=kept, patches=(kept[:, None] * unit + torch.arange(unit, device=kept.device)).flatten())
        spans.enter_context(timer.stage("vision"))
        return output[picked["patches"]]

    def later_block(module, args, kwargs):
        if "cu_seqlens" not in kwargs or "position_embeddings" not in kwargs:
            raise EvtpError("pruning inside the Qwen2.5-VL tower needs transformers 5's vision blocks (cu_seqlens and position_embeddings keywords)")
        cu = kwargs["cu_seqlens"]
        key = ("cu", cu.data_ptr(), cu.numel())
        if key not in sliced:
            sliced[key] = kept_segments(cu, picked["kept"], unit)
        kwargs["cu_seqlens"] = sliced[key]
        if kwargs.get("max_seqlen") is not None:
            longest = int((sliced[key][1:] - sliced[key][:-1]).max())
            kwargs["max_seqlen"] = torch.tensor(longest) if torch.is_tensor(kwargs["max_seqlen"]) else longest
        if "pe" not in sliced:
            sliced["pe"] = tuple(t[picked["patches"]] for t in kwargs["position_embeddings"])
        kwargs["position_embeddings"] = sliced["pe"]
        return args, kwargs

    def at_merger(module, args, output):  # back on the full unit grid for the tower's final reordering
        full = output.new_zeros(n_units, output.shape[-1])
        full[picked["kept"]] = output
        return full

    handles = [visual.blocks[layer].register_forward_hook(at_layer)]
    handles += [block.register_forward_pre_hook(later_block, with_kwargs=True) for block in visual.blocks[layer + 1 :]]
    handles.append(visual.merger.register_forward_hook(at_merger))
    try:
        spans.enter_context(timer.stage("vision"))
        features = run()
    finally:
        spans.close()
        for handle in handles:
            handle.remove()
    keep = picked["keep"]
    return keep, features[keep]


# ---------------------------------------------------------------------------------------------
# InternViT


def shuffle_groups(values: torch.Tensor, pixel_shuffle: Callable[..., torch.Tensor], ratio: float) -> torch.Tensor:
    """[tiles, P, c] per patch (no [CLS]) -> [tiles * P / 4, 4, c]: the patches of each visual token, as the
    model's pixel shuffle lays them side by side (tile by tile, tokens row-major)."""
    tiles, patches, c = values.shape
    side = int(round(patches**0.5))
    grid = pixel_shuffle(values.reshape(tiles, side, side, c).contiguous(), scale_factor=ratio)
    return grid.reshape(-1, int(round(1 / ratio**2)), c)


def internvl_in_tower(model: nn.Module, pixel_values: torch.Tensor, layer: int, last: int, final_norm: nn.Module,
                      ratio: float, choose: Choose, timer: StageTimer) -> tuple[torch.Tensor, torch.Tensor]:
    """InternVL's tower and projector selecting after layer `layer` (features from layer `last`'s output).

    Returns (kept indices [k] in the LLM's order, their features [k, d]).
    """
    tower = model.vision_tower
    layers = tower.encoder.layer

    def group(values: torch.Tensor) -> torch.Tensor:
        return shuffle_groups(values, model.pixel_shuffle, ratio)

    with timer.stage("vision"):
        hidden = tower.embeddings(pixel_values.to(model.dtype))
        for block in layers[: layer + 1]:
            hidden = block(hidden)
        tiles, length, width = hidden.shape
        patches = length - 1
        rows = group(hidden[:, 1:]).flatten(1)  # [tiles * T, 4 * width]
    with timer.stage("select"):
        keep = choose(rows.float())
    with timer.stage("vision"):
        members = group(torch.arange(patches, device=hidden.device).view(1, patches, 1))[:, :, 0]  # [T, 4] patch ids
        per_tile = members.shape[0]
        tile_of = keep // per_tile
        kept = [torch.sort(members[keep[tile_of == t] % per_tile].flatten()).values for t in range(tiles)]
        full = hidden.new_zeros(tiles, patches, width)
        if layer == last:
            out = final_norm(hidden)
            for t in range(tiles):
                full[t, kept[t]] = out[t, 1 + kept[t]]
        else:
            tails = layers[layer + 1 : last + 1]
            counts = {int(k.numel()) for k in kept}
            batches = [list(range(tiles))] if len(counts) == 1 else [[t] for t in range(tiles)]
            for batch in batches:
                index = torch.stack([kept[t] for t in batch])  # [b, m]
                part = hidden[batch]
                seq = torch.cat([part[:, :1], part[:, 1:].gather(1, index[..., None].expand(-1, -1, width))], 1)
                for block in tails:
                    seq = block(seq)
                seq = final_norm(seq)
                for i, t in enumerate(batch):
                    full[t, kept[t]] = seq[i, 1:]
        grouped = group(full).flatten(1)[keep]
        features = model.multi_modal_projector(grouped)
    return keep, features
