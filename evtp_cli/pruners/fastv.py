"""fastv: the published FastV rule (prune after layer K by the last token's attention).

Paper: Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration
for Large Vision-Language Models", ECCV 2024, arXiv 2403.06764. Code: github.com/pkunlp-icler/FastV
(`src/transformers/.../modeling_llama.py`, the `USE_FAST_V` branch of `LlamaModel.forward`), and the
llmc re-implementation (ModelTC/llmc `token_reduction/fastv.py`).

Rule: during prefill, at decoder layer K (0-based; layers 0..K-1 run on every token), take the
attention map of layer K-1, average it over heads, read the row of the last token of the prompt,
and keep the visual tokens with the highest attention in that row; layers K.. run on the kept visual
tokens and every text token, with the positions the tokens had in the full sequence. Default K = 2
(the paper's "after layer 2"; its default R = 50 % is replaced by the run's keep ratio).

Here the attention of layer K-1 is recomputed from that layer's q/k for the last row only
(`LLMState.attention`), so the model keeps running sdpa/flash attention; the public code switches the
whole model to eager attention to read it.

Differences from the public code:
- Layers before K keep the full key/value cache during decoding (the public code runs without a
  cache, recomputing all layers at every step, where those layers also see every token).
- Ties keep the lower index (torch.topk leaves them unspecified).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evtp_cli.api import LLMState, PruneContext
from evtp_cli.pruners.stages import LLMPruner, topk_sorted


def fastv_scores(state: LLMState) -> torch.Tensor:
    """The last prompt token's attention to each visual token at layer K-1, averaged over heads: [n]."""
    last = torch.tensor([state.hidden.shape[0] - 1], device=state.hidden.device)
    row = state.attention(last).mean(dim=0)[0]  # [L]
    return row[state.visual]


class FastV(LLMPruner):
    """FastV: after layer K, keep the visual tokens the last token attends to most (layer K-1)."""

    name = "fastv"

    @dataclass
    class Config:
        layer: int = 2

        def __post_init__(self) -> None:
            if self.layer < 1:
                raise ValueError(f"layer must be >= 1 (the score is layer K-1's attention), got {self.layer}")

    def rule(self, state: LLMState, k: int, context: PruneContext | None) -> torch.Tensor:
        return topk_sorted(fastv_scores(state), k)
