"""vispruner: the published VisPruner rule (important tokens by [CLS] attention, then diverse tokens).

Paper: Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning
in VLMs" (VisPruner), ICCV 2025, arXiv 2412.01818v2. Code: github.com/Theia-4869/VisPruner
(`llava/model/llava_arch.py`, `encode_images`).

Rule, for a budget of T tokens per image:
1. Important tokens: the int(T * r) tokens with the highest [CLS] attention (mean over heads); r is the
   important ratio, default 0.5 (the value of the public scripts).
2. Diverse tokens: the rest, in descending attention order, lose near-duplicates round by round until
   T - int(T * r) remain. Each round splits them alternately into A (even places) and B (odd places),
   scores each A token by its highest cosine similarity to any B token (vision-space features), removes
   the r' = min(8, excess) highest-scoring A tokens, and continues with [A kept in descending score
   order, B].
The kept tokens enter the projector unchanged.

Differences from the public code:
- Encoders without a [CLS] token use the mean attention each token receives (`stages.attention_received`).
- Video: the budget is split evenly over the frames; each frame runs the rule on its own.
- A round whose A half is smaller than r' removes the whole A half (the public indexing assumes it is
  not); a zero diverse budget skips the rounds. Neither case arises at the public budgets.
- Sorting is stable (ties keep the lower index / earlier place).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evtp_cli.pruners.stages import FrameResult, VisionPruner

ROUND = 8  # tokens removed per matching round in the public code


def vispruner_select(features: torch.Tensor, attention: torch.Tensor, k: int, important_ratio: float) -> torch.Tensor:
    """VisPruner on one image: k indices (ascending) from features [n, C] and attention [n]."""
    n_important = int(k * important_ratio)
    n_diverse = k - n_important
    order = torch.sort(attention.float(), descending=True, stable=True).indices
    important, residual = order[:n_important], order[n_important:]
    if n_diverse == 0:
        residual = residual[:0]
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    while residual.numel() > n_diverse:
        r = min(ROUND, residual.numel() - n_diverse)
        a, b = residual[0::2], residual[1::2]
        scores = (unit[a] @ unit[b].T).max(dim=-1).values
        distinct = torch.sort(scores, descending=True, stable=True).indices[r:]
        residual = torch.cat([a[distinct], b])
    return torch.sort(torch.cat([important, residual])).values


class VisPruner(VisionPruner):
    """VisPruner: important tokens by [CLS] attention plus diverse tokens by duplicate removal."""

    name = "vispruner"
    needs = ("attention",)

    @dataclass
    class Config:
        important_ratio: float = 0.5

        def __post_init__(self) -> None:
            if not 0.0 <= self.important_ratio <= 1.0:
                raise ValueError(f"important_ratio must be in [0, 1], got {self.important_ratio}")

    def _frame(self, features, k, attention, keys, heads) -> FrameResult:
        return FrameResult(vispruner_select(features, attention, k, self.config.important_ratio))
