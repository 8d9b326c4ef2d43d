"""Attention recomputed from a layer's q/k, so that models keep running sdpa/flash attention and still
give attention-reading methods what they need (the [CLS]-style attention a token receives, a query's row)."""

from __future__ import annotations

import torch


def attention_rows(q: torch.Tensor, k: torch.Tensor, queries: torch.Tensor | None = None, causal: bool = True) -> torch.Tensor:
    """Softmax attention probabilities recomputed from q/k of one layer.

    q, k: [H, L, dh] (after any rotary embedding); queries: positions of the rows wanted (None: all).
    Returns [H, q, L], scaled by dh^-0.5; with `causal`, row p sees keys <= p.
    """
    rows = torch.arange(q.shape[1], device=q.device) if queries is None else queries.to(q.device)
    logits = q[:, rows].float() @ k.float().transpose(-1, -2) * (q.shape[-1] ** -0.5)
    if causal:
        future = torch.arange(k.shape[1], device=q.device)[None, :] > rows[:, None]
        logits = logits.masked_fill(future[None], float("-inf"))
    return torch.softmax(logits, dim=-1)


def attention_received(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Mean attention each token receives ([B, H, n, dh] q/k of a bidirectional layer -> [B, n]).

    The substitute for [CLS] attention in encoders without a [CLS] token (as VisionZip does for
    SigLIP): the column mean of the attention map over heads and queries.
    """
    probs = torch.softmax(q.float() @ k.float().transpose(-1, -2) * (q.shape[-1] ** -0.5), dim=-1)
    return probs.mean(dim=(1, 2))
