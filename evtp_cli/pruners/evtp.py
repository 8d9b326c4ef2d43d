"""EVTP: k-center visual-token selection with spatial coverage and information weighting.

Paper: "EVTP-IVS: Effective Visual Token Pruning For Unifying Instruction Visual Segmentation In
Multi-Modal Large Language Models" (2025). Only its abstract is public to us: greedy k-center selection
that integrates spatial position for coverage and is supported by an information (entropy) argument.
The exact formula below is therefore evtp's own definition; every term is an option so it can be
ablated (docs/evtp.md has the formulas, the 2-approximation argument and the ablation).

    D(i, j) = (1 - λ) · (1 - cos(f_i, f_j)) / 2  +  λ · ‖(τ·Δt, Δy, Δx)‖ / ‖(τ, 1, 1)‖
    seed    = argmax_i H_i,   H_i = entropy(softmax(f_i / T)) / log d, min-max scaled to [0, 1]
    step    : pick argmax_{i unchosen} (1 + β·H_i) · min_{j chosen} D(i, j)

Video: `mode=global` runs one spatio-temporal selection over all frames; `mode=per-frame` splits the
budget across frames in proportion to their information (Σ_i (ε + H_i) over the frame) and selects
within each frame with (y, x) only.
Related public code read for the greedy step: DivPrune (github.com/vbdi/divprune).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from evtp_cli.pruners.base import PruneContext, Pruner, frame_index
from evtp_cli.pruners.greedy import greedy_farthest_point

# ---------------------------------------------------------------------------------------------
# pure functions


def token_information(features: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of each token's softmax-normalised feature, divided by log d, then min-max scaled to [0, 1]."""
    logp = torch.log_softmax(features.float() / temperature, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1) / math.log(max(features.shape[-1], 2))
    lo, hi = entropy.min(), entropy.max()
    if float(hi - lo) <= 1e-12:
        return torch.zeros_like(entropy)
    return (entropy - lo) / (hi - lo)


def mixed_distance(
    features: torch.Tensor,
    coords: torch.Tensor,
    spatial_weight: float,
    temporal_scale: float,
) -> torch.Tensor:
    """D = (1-λ)·(1-cos)/2 + λ·D_pos, with D_pos the normalised Euclidean distance of (τt, y, x).

    The cosine term is added into the positional term by one `addmm` so N² is written once more only.
    """
    lam = float(spatial_weight)
    feats = torch.nn.functional.normalize(features.float(), dim=-1)
    n = feats.shape[0]
    if lam > 0:
        pos = coords.float() * torch.tensor([temporal_scale, 1.0, 1.0], device=coords.device)
        is_video = bool((coords[:, 0] != coords[0, 0]).any())
        norm = math.sqrt(2.0 + (temporal_scale**2 if is_video else 0.0))
        base = torch.cdist(pos, pos).mul_(lam / norm)
    else:
        base = torch.zeros(n, n, device=feats.device)
    if lam < 1:
        half = (1.0 - lam) / 2.0
        base.add_(half)
        base = torch.addmm(base, feats, feats.T, beta=1.0, alpha=-half)
    return base.clamp_(min=0.0)


def allocate_budget(k: int, sizes: list[int], info: list[float]) -> list[int]:
    """Split k over groups in proportion to `info`, capped by group size (largest remainder).

    Every group gets at least one token when k allows. Deterministic; sums to exactly k.
    """
    if k > sum(sizes):
        raise ValueError(f"cannot keep {k} of {sum(sizes)} tokens")
    groups = len(sizes)
    alloc = [0] * groups
    if k >= groups:
        alloc = [1] * groups
    remaining = k - sum(alloc)
    while remaining > 0:
        open_groups = [g for g in range(groups) if alloc[g] < sizes[g]]
        weight = sum(info[g] for g in open_groups)
        shares = {g: remaining * info[g] / weight if weight > 0 else remaining / len(open_groups) for g in open_groups}
        floors = {g: min(int(math.floor(shares[g])), sizes[g] - alloc[g]) for g in open_groups}
        given = sum(floors.values())
        for g, add in floors.items():
            alloc[g] += add
        remaining -= given
        if remaining == 0:
            break
        order = sorted(open_groups, key=lambda g: (-(shares[g] - math.floor(shares[g])), g))
        progressed = given > 0
        for g in order:
            if remaining == 0:
                break
            if alloc[g] < sizes[g]:
                alloc[g] += 1
                remaining -= 1
                progressed = True
        if not progressed:  # pragma: no cover - guarded by the capacity check above
            raise RuntimeError("budget allocation made no progress")
    return alloc


def evtp_select(
    features: torch.Tensor,
    coords: torch.Tensor,
    k: int,
    frame_ids: torch.Tensor,
    spatial_weight: float = 0.5,
    info_weight: float = 0.0,
    temporal_scale: float = 1.0,
    temperature: float = 1.0,
    mode: str = "per-frame",
) -> torch.Tensor:
    """The EVTP rule on one sample (see module docstring). Returns indices in selection order."""
    info = token_information(features, temperature)
    weights = 1.0 + info_weight * info if info_weight != 0 else None
    frames = torch.unique(frame_ids, sorted=True)
    if mode == "global" or frames.numel() == 1:
        dist = mixed_distance(features, coords, spatial_weight, temporal_scale)
        return greedy_farthest_point(dist, k, int(torch.argmax(info)), weights)

    members = [torch.nonzero(frame_ids == f).flatten() for f in frames]
    sizes = [int(m.numel()) for m in members]
    frame_info = [float((info[m] + 0.05).sum()) for m in members]
    budget = allocate_budget(k, sizes, frame_info)
    picked = []
    for idx, kf in zip(members, budget):
        if kf == 0:
            continue
        xy = coords[idx].clone()
        xy[:, 0] = 0.0
        dist = mixed_distance(features[idx], xy, spatial_weight, temporal_scale)
        w = None if weights is None else weights[idx]
        local = greedy_farthest_point(dist, kf, int(torch.argmax(info[idx])), w)
        picked.append(idx[local])
    return torch.cat(picked)


# ---------------------------------------------------------------------------------------------
# adapter


class EVTP(Pruner):
    """EVTP (ours): greedy k-center in a feature+space(+time) metric, seeded and weighted by information."""

    name = "evtp"

    @dataclass
    class Config:
        spatial_weight: float = 0.5
        info_weight: float = 0.0
        temporal_scale: float = 1.0
        temperature: float = 1.0
        mode: Literal["global", "per-frame"] = "per-frame"

        def __post_init__(self) -> None:
            if not 0.0 <= self.spatial_weight <= 1.0:
                raise ValueError(f"spatial_weight must be in [0, 1], got {self.spatial_weight}")
            if self.info_weight < 0:
                raise ValueError(f"info_weight must be >= 0, got {self.info_weight}")
            if self.temporal_scale < 0:
                raise ValueError(f"temporal_scale must be >= 0, got {self.temporal_scale}")
            if self.temperature <= 0:
                raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def _select(self, features: torch.Tensor, coords: torch.Tensor, k: int, context: PruneContext | None) -> torch.Tensor:
        c = self.config
        return evtp_select(
            features,
            coords,
            k,
            frame_index(coords, context),
            spatial_weight=c.spatial_weight,
            info_weight=c.info_weight,
            temporal_scale=c.temporal_scale,
            temperature=c.temperature,
            mode=c.mode,
        )
