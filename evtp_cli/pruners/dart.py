"""dart: the published DART rule (duplication-aware: keep the tokens least similar to a few pivots).

Paper: Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication
Matters More" (DART), EMNLP 2025, arXiv 2502.11494. Code: github.com/ZichenWen1/DART (LLaVA, Qwen2-VL
and Qwen2.5-VL patches; `get_retained_image_token`), and the llmc re-implementation (ModelTC/llmc
`token_reduction/dart.py`, config `dart.yml`).

Rule: during prefill, at decoder layer K (0-based; default K = 2), with layer K-1's keys:
1. Pivots: the 4 visual tokens and the 4 text tokens (the tokens after the image) with the largest
   L1 norm of their keys (heads concatenated).
2. The hidden states entering layer K, passed through the LLM's final norm, are compared by cosine
   similarity; for each pivot in turn, the TOPK candidate visual tokens least similar to it are kept
   and leave the candidate set (candidates start as all visual tokens but the visual pivots).
3. Kept: the visual pivots and every token picked in 2. Layers K.. run on them and the text tokens.
Defaults (public scripts and llmc `dart.yml`): K = 2, 4 image pivots, 4 text pivots.

Differences from the public code:
- Exact budget. Public TOPK = budget // 8 for every pivot, so the kept count is 4 + 8 * (budget // 8)
  (132 for a budget of 128); here the visual pivots count against the budget and the other k - 4
  slots are spread over the 8 pivots as evenly as possible (the first pivots take one more), so
  exactly k tokens remain. Pivot counts shrink when k, or the number of text tokens, is smaller.
- Pivot order: the public code walks a Python set of positions; here pivots go in ascending sequence
  position (visual pivots, then text pivots), which is what that set order amounts to for small ints.
- Layer K-1's keys are recomputed from its input (`LLMState.keys`), so flash/sdpa attention stays on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evtp_cli.api import LLMState, PruneContext
from evtp_cli.pruners.stages import LLMPruner


def dart_select(
    keys: torch.Tensor,
    hidden: torch.Tensor,
    visual: torch.Tensor,
    text: torch.Tensor,
    k: int,
    pivot_image: int = 4,
    pivot_text: int = 4,
) -> torch.Tensor:
    """DART at one layer. keys [H, L, dh] (layer K-1), hidden [L, D] (normed input of layer K),
    visual / text: positions. Returns k sorted indices into `visual`."""
    n = visual.numel()
    flat = keys.permute(1, 0, 2).reshape(keys.shape[1], -1).float()  # [L, H * dh]
    l1 = flat.abs().sum(dim=-1)
    n_img = min(pivot_image, k)
    img_piv = torch.sort(torch.sort(l1[visual], descending=True, stable=True).indices[:n_img]).values
    n_txt = min(pivot_text, text.numel())
    txt_piv = text[torch.sort(torch.sort(l1[text], descending=True, stable=True).indices[:n_txt]).values]
    pivots = [visual[i] for i in img_piv.tolist()] + txt_piv.tolist()
    taken = torch.zeros(n, dtype=torch.bool, device=visual.device)
    taken[img_piv] = True
    left = k - n_img
    unit = torch.nn.functional.normalize(hidden.float(), dim=-1)
    per, extra = divmod(left, max(len(pivots), 1))
    for rank, pivot in enumerate(pivots):
        want = min(per + (1 if rank < extra else 0), int((~taken).sum()))
        if want <= 0:
            continue
        candidates = torch.nonzero(~taken).flatten()
        dissim = -(unit[visual[candidates]] @ unit[int(pivot)])
        picked = candidates[torch.sort(dissim, descending=True, stable=True).indices[:want]]
        taken[picked] = True
    short = k - int(taken.sum())
    if short > 0:  # no pivot at all (no visual pivots asked for and no text): fill by key norm
        free = torch.nonzero(~taken).flatten()
        taken[free[torch.sort(l1[visual[free]], descending=True, stable=True).indices[:short]]] = True
    return torch.nonzero(taken).flatten()


class DART(LLMPruner):
    """DART: after layer K, keep visual tokens least similar to key-norm pivots."""

    name = "dart"

    @dataclass
    class Config:
        layer: int = 2
        pivot_image: int = 4
        pivot_text: int = 4

        def __post_init__(self) -> None:
            if self.layer < 1:
                raise ValueError(f"layer must be >= 1 (pivots use layer K-1's keys), got {self.layer}")
            if self.pivot_image < 0 or self.pivot_text < 0 or self.pivot_image + self.pivot_text == 0:
                raise ValueError("pivot_image and pivot_text must be >= 0 and not both 0")

    def rule(self, state: LLMState, k: int, context: PruneContext | None) -> torch.Tensor:
        c = self.config
        return dart_select(state.keys(), state.norm(state.hidden), state.visual, state.text, k, c.pivot_image, c.pivot_text)
