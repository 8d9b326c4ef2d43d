"""sparsevlm: the published SparseVLM rule (text raters, progressive sparsification, token recycling).

Paper: Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model
Inference", ICML 2025, arXiv 2410.04417. Code: github.com/Gumpest/SparseVLMs
(`llava/model/language_model/modelling_sparse_llama.py`, `score.py`), and the llmc re-implementation
(ModelTC/llmc `token_reduction/sparsevlm.py`), which follows it.

Rule:
1. Raters: with the LLM's input embeddings, each visual token's relevance to the text tokens is the
   softmax over the text of v . t; its mean over the visual tokens scores each text token, and the
   text tokens scoring above their mean are the raters.
2. At each pruning layer l (LLaVA-7B: layers 2, 6 and 15 of 32), layer l's attention from the raters
   to the visual tokens, averaged over heads and raters, ranks the visual tokens; the top ones stay
   (at most n - 1); the output of layer l continues with them.
3. Recycling: of the deleted tokens, the top 30 % (+1) by that score are clustered (density-peaks
   k-NN clustering, int(count / 10) + 1 clusters, on their hidden states) and each cluster's mean
   hidden state is added right after the kept visual tokens.
The published schedules (visual tokens after each pruning layer of 576) are 300/200/110, 303/110/36 and
66/30/17, which SparseVLM reports as 192, 128 and 64 tokens: the layer-averaged count
(the `tokens_equiv` column here).

Here:
- Layers: the published (2, 6, 15) of 32 are scaled to the LLM's depth (round(l * depth / 32), kept
  distinct and below the last layer); tiny-ivs (4 layers) prunes after layers 0, 1 and 2.
  The hook before layer l + 1 reads layer l's attention (`LLMState.attention`), recomputed from q/k.
- Schedule: the published schedule whose last stage is nearest (in log ratio) to the keep ratio,
  scaled so that its last stage holds exactly k tokens: `tokens_kept` is k, as for every method.
- Each stage's count includes its recycled tokens (kept + clusters = the stage's target).

Differences from the public code:
- The schedule scaling and depth mapping above (the public code fixes 576 tokens and 32 layers).
- Recycled tokens count against the stage's budget (public: they come on top of it).
- Density ties are broken by index instead of by 1e-6 random noise, so runs repeat exactly.
- Recycled tokens sit at the size-weighted mean coordinates of their members (for the pointer head).
- The kept tokens keep their original positions (tiny-ivs: positions are added at the input; the
  public code renumbers the positions of the shortened sequence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from evtp_cli.api import LayerPrune, LLMState, PruneContext, PrunerNotApplicable
from evtp_cli.pruners.stages import LLMPruner, log_distance, topk_sorted

PUBLIC_LAYERS = (2, 6, 15)
PUBLIC_DEPTH = 32
PUBLIC_TOKENS = 576
PUBLIC_SCHEDULES = {192: (300, 200, 110), 128: (303, 110, 36), 64: (66, 30, 17)}


def pruning_layers(depth: int) -> list[int]:
    """The decoder layers whose output is pruned, scaled from (2, 6, 15) of 32 to `depth` layers."""
    out: list[int] = []
    for layer in PUBLIC_LAYERS:
        scaled = min(int(round(layer * depth / PUBLIC_DEPTH)), depth - 2)
        if scaled >= 0 and scaled not in out:
            out.append(scaled)
    return out


def schedule(n: int, k: int, stages: int) -> list[int]:
    """Visual-token counts after each of `stages` pruning layers, ending at exactly k."""
    row = min(PUBLIC_SCHEDULES.values(), key=lambda r: log_distance(r[-1] / PUBLIC_TOKENS, k / n))[-stages:]
    counts = [min(n, max(k, int(round(c * k / row[-1])))) for c in row]
    for i in range(1, len(counts)):
        counts[i] = min(counts[i], counts[i - 1])
    counts[-1] = k
    return counts


def recycle_counts(deleted: int, fraction: float, divisor: int) -> tuple[int, int]:
    """(recycling candidates, clusters) for a number of deleted tokens, as in the public code."""
    if deleted <= 0:
        return 0, 0
    candidates = min(deleted, int(deleted * fraction) + 1)
    return candidates, min(candidates, candidates // divisor + 1)


def stage_keep(n: int, target: int, fraction: float, divisor: int) -> tuple[int, int, int]:
    """(kept, candidates, clusters) with kept + clusters == target; no recycling if that cannot hold."""
    for kept in range(target - 1, 0, -1):
        candidates, clusters = recycle_counts(n - kept, fraction, divisor)
        if kept + clusters == target:
            return kept, candidates, clusters
    return target, 0, 0


def rater_index(inputs: torch.Tensor, visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Indices into `text` of the raters: text tokens whose relevance to the image is above the mean."""
    v, t = inputs[visual].float(), inputs[text].float()
    relevance = torch.softmax(v @ t.T, dim=1).mean(dim=0)  # [T]
    raters = torch.nonzero(relevance > relevance.mean()).flatten()
    return raters if raters.numel() else torch.arange(text.numel(), device=text.device)


def rater_scores(state: LLMState) -> torch.Tensor:
    """Layer attention from the raters to the current visual tokens, mean over heads and raters: [n]."""
    raters = rater_index(state.inputs, state.inputs_visual, state.inputs_text)
    rows = state.attention(state.text[raters]).mean(dim=0)  # [R, L]
    return rows[:, state.visual].mean(dim=0)


def dpc_knn_merge(x: torch.Tensor, clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peaks k-NN clustering (SparseVLM's `cluster_and_merge`): ([clusters, C] means, [p] slot)."""
    p, c = x.shape
    dist = torch.cdist(x.float(), x.float()) / math.sqrt(c)
    nearest = torch.topk(dist, k=clusters, dim=-1, largest=False).values
    density = torch.exp(-(nearest**2).mean(dim=-1))
    rank = torch.empty(p, dtype=torch.long, device=x.device)
    rank[torch.sort(density, descending=True, stable=True).indices] = torch.arange(p, device=x.device)
    higher = rank[None, :] < rank[:, None]  # [i, j]: j is denser than i
    delta = torch.where(higher, dist, dist.max()).min(dim=-1).values
    centres = torch.sort(delta * density, descending=True, stable=True).indices[:clusters]
    slot = dist[centres].argmin(dim=0)
    slot[centres] = torch.arange(clusters, device=x.device)
    one_hot = torch.zeros(clusters, p, dtype=x.dtype, device=x.device)
    one_hot[slot, torch.arange(p, device=x.device)] = 1.0
    return (one_hot @ x) / one_hot.sum(dim=1, keepdim=True), slot


class SparseVLM(LLMPruner):
    """SparseVLM: rater-guided progressive pruning inside the LLM, with token recycling."""

    name = "sparsevlm"
    merges = True

    @dataclass
    class Config:
        recycle: bool = True
        recycle_fraction: float = 0.3
        cluster_divisor: int = 10

        def __post_init__(self) -> None:
            if not 0.0 <= self.recycle_fraction <= 1.0:
                raise ValueError(f"recycle_fraction must be in [0, 1], got {self.recycle_fraction}")
            if self.cluster_divisor < 1:
                raise ValueError(f"cluster_divisor must be >= 1, got {self.cluster_divisor}")

    def layers(self, depth: int) -> list[int]:
        if depth < 2:
            raise PrunerNotApplicable(f"sparsevlm prunes between decoder layers; this LLM has {depth}")
        return [layer + 1 for layer in pruning_layers(depth)]  # the hook runs before the next layer

    def rule(self, state: LLMState, k: int, context: PruneContext | None) -> torch.Tensor:
        return topk_sorted(rater_scores(state), k)

    def prune_layer(self, state: LLMState, k: int, context: PruneContext | None) -> LayerPrune | None:
        points = self.layers(state.depth)
        if state.layer not in points:
            return None
        target = schedule(int(state.inputs_visual.numel()), k, len(points))[points.index(state.layer)]
        n = int(state.visual.numel())
        if target >= n:
            return None
        c = self.config
        kept, candidates, clusters = stage_keep(n, target, c.recycle_fraction, c.cluster_divisor) if c.recycle else (target, 0, 0)
        scores = rater_scores(state)
        keep = topk_sorted(scores, kept)
        if clusters == 0:
            return LayerPrune(keep)
        deleted = torch.ones(n, dtype=torch.bool, device=scores.device)
        deleted[keep] = False
        gone = torch.nonzero(deleted).flatten()
        recycled = gone[torch.sort(scores[gone], descending=True, stable=True).indices[:candidates]]
        merged, slot = dpc_knn_merge(state.hidden[state.visual[recycled]], clusters)
        groups = torch.full((n,), -1, dtype=torch.long, device=scores.device)
        groups[recycled] = slot
        return LayerPrune(keep, merged.to(state.hidden.dtype), groups)
