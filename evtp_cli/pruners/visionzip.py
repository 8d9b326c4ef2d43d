"""visionzip: the published VisionZip rule (dominant tokens by attention + contextual merged tokens).

Paper: Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025,
arXiv 2412.04467. Code: github.com/dvlab-research/VisionZip (`visionzip/clip_encoder.py`), and the llmc
re-implementation (ModelTC/llmc `token_reduction/visionzip.py`), which follows it line by line.

Rule, for a budget of T tokens per image, after the vision encoder and before the projector:
1. Dominant tokens: the T - C tokens with the highest [CLS] attention at the select layer (summed over
   heads; for encoders without [CLS], VisionZip's SigLIP code uses the mean attention each token
   receives, mean over heads and queries).
2. Contextual tokens: the remaining tokens, in their original order, with their keys at that layer
   averaged over heads and L2-normalised; C targets are taken at a uniform stride
   (every max(1, R // C)-th, the first C); every other remaining token joins the target whose key it
   is most similar to (dot product); a contextual token is target + mean(joined tokens).
Default split C / T = 10 / 64, the paper's 54 dominant : 10 contextual (and 108:20, 162:30 at 128
and 192 tokens).

Differences from the public code:
- The [CLS] token itself is not kept: tiny-ivs and the Sa2VA encoders give the LLM no [CLS] token, and
  the budget counts only patch tokens.
- Coordinates: a contextual token sits at the size-weighted mean of its members (target + joined).
  Features follow the public rule (target + mean of joined, not a mean over all members).
- Video: the budget is split evenly over the frames (VisionZip runs per frame in its video code).
- C is rounded from the ratio (round(T * 10 / 64)) and at least one dominant token is kept.
- Ties keep the lower index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evtp_cli.pruners.stages import FrameResult, VisionPruner, topk_sorted

PAPER_CONTEXTUAL = 10 / 64  # 54 dominant : 10 contextual in the paper's 64-token setting


def key_metric(keys: torch.Tensor, heads: int) -> torch.Tensor:
    """Keys [n, H * dh] -> per-token keys averaged over heads [n, dh] (VisionZip's and ToMe's metric)."""
    n = keys.shape[0]
    return keys.float().view(n, heads, -1).mean(dim=1)


def visionzip_split(k: int, contextual_fraction: float) -> tuple[int, int]:
    contextual = int(round(k * contextual_fraction))
    contextual = min(contextual, k - 1)
    return k - contextual, max(contextual, 0)


def visionzip_frame(
    features: torch.Tensor, attention: torch.Tensor, metric: torch.Tensor, k: int, contextual_fraction: float
) -> FrameResult:
    """VisionZip on one image: dominant + contextual tokens, members of each output token."""
    n = features.shape[0]
    n_dominant, n_contextual = visionzip_split(k, contextual_fraction)
    dominant = topk_sorted(attention, n_dominant)
    rest = torch.ones(n, dtype=torch.bool, device=features.device)
    rest[dominant] = False
    rest_idx = torch.nonzero(rest).flatten()
    members = torch.zeros(k, n, dtype=torch.bool, device=features.device)
    members[torch.arange(n_dominant), dominant] = True
    if n_contextual == 0:
        return FrameResult(dominant, features[dominant], members[:n_dominant])
    unit = torch.nn.functional.normalize(metric[rest_idx].float(), dim=-1)
    step = max(1, rest_idx.numel() // n_contextual)
    target_local = torch.arange(0, rest_idx.numel(), step, device=features.device)[:n_contextual]
    is_target = torch.zeros(rest_idx.numel(), dtype=torch.bool, device=features.device)
    is_target[target_local] = True
    others = torch.nonzero(~is_target).flatten()
    assign = (unit[others] @ unit[target_local].T).argmax(dim=1)  # [n_others] -> target slot
    one_hot = torch.zeros(n_contextual, others.numel(), dtype=features.dtype, device=features.device)
    one_hot[assign, torch.arange(others.numel())] = 1.0
    counts = one_hot.sum(dim=1).clamp_min(1.0)
    contextual = features[rest_idx[target_local]] + (one_hot @ features[rest_idx[others]]) / counts[:, None]
    members[n_dominant + torch.arange(n_contextual), rest_idx[target_local]] = True
    members[n_dominant + assign, rest_idx[others]] = True
    indices = torch.cat([dominant, rest_idx[target_local]])
    return FrameResult(indices, torch.cat([features[dominant], contextual]), members)


class VisionZip(VisionPruner):
    """VisionZip: dominant tokens by attention, contextual tokens merged by key similarity."""

    name = "visionzip"
    merges = True
    needs = ("attention", "keys")

    @dataclass
    class Config:
        contextual_fraction: float = PAPER_CONTEXTUAL

        def __post_init__(self) -> None:
            if not 0.0 <= self.contextual_fraction < 1.0:
                raise ValueError(f"contextual_fraction must be in [0, 1), got {self.contextual_fraction}")

    def _frame(self, features, k, attention, keys, heads) -> FrameResult:
        return visionzip_frame(features, attention, key_metric(keys, heads), k, self.config.contextual_fraction)
