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

Speed (docs/performance.md, "Selection speed"): `evtp_select` runs all frames as one batched greedy
and, on CPU, builds distance rows only for the points it picks (k·N entries, not N²) where N is
large, and the whole matrix where that is cheaper; on CUDA it runs the loop as one Triton kernel.
`evtp_select_reference` is the straightforward form (full matrices, plain greedy, frame by frame).
Both take their distances from the same functions, whose arithmetic gives the same bits for a single
row as for the full matrix, so they return the same indices.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch

from evtp_cli.api import PruneContext, frame_index
from evtp_cli.pruners.base import Pruner
from evtp_cli.pruners.greedy import (
    Array,
    greedy_farthest_point,
    greedy_over_matrix,
    greedy_rows,
    mask_self,
)

# ---------------------------------------------------------------------------------------------
# pure functions


def token_information(features: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of each token's softmax-normalised feature, divided by log d, then min-max scaled to [0, 1]."""
    x = features.float()
    logp = torch.log_softmax(x if temperature == 1.0 else x / temperature, dim=-1)  # x / 1 is x: skip the pass
    entropy = -logp.exp().mul_(logp).sum(-1) / math.log(max(features.shape[-1], 2))
    lo, hi = entropy.min(), entropy.max()
    if float(hi - lo) <= 1e-12:
        return torch.zeros_like(entropy)
    return (entropy - lo) / (hi - lo)


def positions(
    coords: torch.Tensor, spatial_weight: float, temporal_scale: float, with_time: bool
) -> tuple[torch.Tensor, float, float]:
    """The spatial half of the metric: point coordinates [P, N] ((τ·t,) y, x) and the mixing factors.

    Returns (points, half, scale) with D = half·(1 - cos) + scale·‖Δ points‖, i.e. half = (1-λ)/2 and
    scale = λ / ‖(τ, 1, 1)‖ (‖(1, 1)‖ when time is left out: images, and frames selected one by one).
    """
    lam = float(spatial_weight)
    c = coords.float()
    points = torch.stack([c[:, 0] * temporal_scale, c[:, 1], c[:, 2]] if with_time else [c[:, 1], c[:, 2]])
    norm = math.sqrt(2.0 + (temporal_scale**2 if with_time else 0.0))
    return points, (1.0 - lam) / 2.0, lam / norm


_GRAM_BLOCK = 512  # rows per block-row of a large Gram matrix (fastest of 256..2048 on 2 CPU cores)


def cosine_gram(unit: torch.Tensor) -> torch.Tensor:
    """unit @ unitᵀ for each of B sets of unit vectors [B, n, d] -> [B, n, n].

    One large set is computed as upper block-rows and mirrored: half the multiply-adds. The calls made
    depend only on the shape, so every caller (the fast path and the reference) gets the same bits.
    """
    batch, n, _ = unit.shape
    if batch > 1 or n < 2 * _GRAM_BLOCK:
        return torch.bmm(unit, unit.transpose(1, 2))
    u = unit[0]
    out = torch.empty(1, n, n, dtype=unit.dtype, device=unit.device)
    g = out[0]
    for s in range(0, n, _GRAM_BLOCK):
        e = min(s + _GRAM_BLOCK, n)
        torch.mm(u[s:e], u[s:].T, out=g[s:e, s:])
        if e < n:
            g[e:, s:e].copy_(g[s:e, e:].T)
    return out


def mix_distance(gram: Array | None, row_points: Array, col_points: Array, half: float, scale: float) -> Array:
    """D = half·(1 - G) + scale·‖p_row - p_col‖, clamped at 0, for any block of rows (overwrites `gram`).

    Every step is one correctly rounded float32 operation per element, with no fused multiply-add,
    so a row computed alone has exactly the bits of the same row of the full matrix: the fast path
    builds only the rows it visits, the reference the whole matrix. Point coordinates come first and
    broadcast: rows [P, ..., m, 1] against columns [P, ..., 1, n]. Takes torch tensors or numpy
    arrays; CPU callers pass numpy, whose square root is IEEE-exact (torch's CPU one is not, for some
    inputs, and runs multi-threaded on rows of a few thousand, which costs more than the root).
    """
    xp = np if isinstance(col_points, np.ndarray) else torch
    out = None
    if half > 0:
        out = xp.multiply(gram, -half, out=gram)
        xp.add(out, half, out=out)
    if scale > 0:
        diff = xp.subtract(col_points, row_points)
        xp.multiply(diff, diff, out=diff)
        squares = diff[0]
        for more in diff[1:]:
            xp.add(squares, more, out=squares)
        xp.sqrt(squares, out=squares)
        xp.multiply(squares, scale, out=squares)
        out = squares if out is None else xp.add(out, squares, out=out)
    return np.maximum(out, 0.0, out=out) if xp is np else out.clamp_min_(0.0)


def mixed_distance(
    features: torch.Tensor,
    coords: torch.Tensor,
    spatial_weight: float,
    temporal_scale: float,
) -> torch.Tensor:
    """The full EVTP distance matrix [N, N] of one selection (time included when t varies)."""
    with_time = bool((coords[:, 0] != coords[0, 0]).any())
    points, half, scale = positions(coords, spatial_weight, temporal_scale, with_time)
    return _full_distance(_unit(features)[None], points[:, None], half, scale)[0]


def _full_distance(unit: torch.Tensor, points: torch.Tensor, half: float, scale: float) -> torch.Tensor:
    """D for B selections at once [B, n, n] from unit features [B, n, d] and points [P, B, n]."""
    gram = cosine_gram(unit) if half > 0 else None
    if unit.device.type == "cpu":  # numpy, as the fast path's rows (see mix_distance)
        gram = None if gram is None else gram.numpy()
        points = points.numpy()
    d = mix_distance(gram, points[..., :, None], points[..., None, :], half, scale)
    return torch.from_numpy(d) if isinstance(d, np.ndarray) else d


def _unit(features: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(features.detach().float(), dim=-1)


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


@dataclass
class _Problem:
    """One sample laid out as B independent selections of up to n points (B = 1 in global mode).

    Shared by `evtp_select` and `evtp_select_reference`, so both start from the same float32 values.
    """

    index: torch.Tensor  # [B, n] position of each slot in the input; slots past a frame's size are padding
    sizes: list[int]  # real points per selection
    padding: torch.Tensor | None  # [B, n] True at padding; None when every selection has n points
    unit: torch.Tensor  # [B, n, d] L2-normalised features
    points: torch.Tensor  # [P, B, n] coordinates ((τ·t,) y, x)
    half: float
    scale: float
    weights: torch.Tensor | None  # [B, n] 1 + β·H, None when β = 0
    first: torch.Tensor  # [B] seed slot: the most informative point
    budget: list[int]  # picks per selection, summing to k


def _problem(
    features: torch.Tensor,
    coords: torch.Tensor,
    k: int,
    frame_ids: torch.Tensor,
    spatial_weight: float,
    info_weight: float,
    temporal_scale: float,
    temperature: float,
    mode: str,
) -> _Problem:
    features = features.detach()
    n_all = features.shape[0]
    info = token_information(features, temperature)
    weights = 1.0 + info_weight * info if info_weight != 0 else None
    _, frame_of, counts = torch.unique(frame_ids, sorted=True, return_inverse=True, return_counts=True)
    if mode == "global" or counts.numel() == 1:
        with_time = bool((coords[:, 0] != coords[0, 0]).any())
        points, half, scale = positions(coords, spatial_weight, temporal_scale, with_time)
        return _Problem(
            index=torch.arange(n_all, device=features.device)[None],
            sizes=[n_all],
            padding=None,
            unit=_unit(features)[None],
            points=points[:, None],
            half=half,
            scale=scale,
            weights=None if weights is None else weights[None],
            first=torch.argmax(info)[None],
            budget=[k],
        )

    # per frame: slot j of row f holds the j-th token of frame f (input order kept within a frame)
    sizes = counts.tolist()
    n = max(sizes)
    padding = None
    if min(sizes) == n and bool((frame_of[1:] >= frame_of[:-1]).all()):  # the usual layout: views, no copies
        index = torch.arange(n_all, device=features.device).view(len(sizes), n)

        def slots(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(len(sizes), n, *x.shape[1:])

    else:
        order = torch.argsort(frame_of, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(n_all, device=features.device) - starts[frame_of[order]]
        index = torch.zeros(len(sizes), n, dtype=torch.long, device=features.device)
        index[frame_of[order], slot] = order
        padding = torch.arange(n, device=features.device)[None, :] >= counts[:, None]

        def slots(x: torch.Tensor) -> torch.Tensor:
            return x[index]

    points, half, scale = positions(coords, spatial_weight, temporal_scale, with_time=False)
    slot_info = slots(info)
    mass = slot_info + 0.05
    if padding is not None:  # padding slots repeat token 0; they never count and are never picked
        mass = mass.masked_fill(padding, 0.0)
        slot_info = slot_info.masked_fill(padding, float("-inf"))
    return _Problem(
        index=index,
        sizes=sizes,
        padding=padding,
        unit=slots(_unit(features)),
        points=points[:, index],
        half=half,
        scale=scale,
        weights=None if weights is None else slots(weights),
        first=torch.argmax(slot_info, dim=1),
        budget=allocate_budget(k, sizes, mass.sum(1).tolist()),
    )


# On CPU a greedy step on rows built on demand costs a few numpy calls (tens of µs) whatever the size,
# while the whole score matrix costs a few ns per entry once: up to this many entries per step (tiny-ivs's
# 256 tokens at k >= 16; not a 1024-token image at 20 %, 1024²/205 ≈ 5100) the matrix is cheaper
# (docs/performance.md).
CPU_MATRIX_ENTRIES_PER_STEP = 4096


def _score_rows(p: _Problem) -> Callable[[np.ndarray], np.ndarray]:
    """Score rows for `greedy_rows` on CPU, built on demand in numpy: the greedy reads k of the N rows,
    so mixing in the spatial term costs k·N element operations instead of N², in small
    single-threaded steps (see mix_distance for why numpy)."""
    batch, n = p.index.shape
    gram = cosine_gram(p.unit).view(batch * n, n).numpy() if p.half > 0 else None
    points = p.points.numpy()
    weights = None if p.weights is None else p.weights.numpy()
    padding = None if p.padding is None else p.padding.numpy()
    every = np.arange(batch)
    offset = every * n

    def rows(i: np.ndarray) -> np.ndarray:
        g = gram[i + offset] if gram is not None else None
        d = mix_distance(g, points[:, every, i, None], points, p.half, p.scale)
        if weights is not None:
            np.multiply(d, weights, out=d)
        d[every, i] = -np.inf
        if padding is not None:
            d[padding] = -np.inf
        return d

    return rows


def _score_matrix(p: _Problem) -> torch.Tensor:
    """All score rows at once [B, n, n] (on a GPU the N² mixing costs little next to kernel launches)."""
    d = _full_distance(p.unit, p.points, p.half, p.scale)
    if p.weights is not None:
        d.mul_(p.weights[:, None, :])
    mask_self(d)
    return d if p.padding is None else d.masked_fill_(p.padding[:, None, :], float("-inf"))


def evtp_select(
    features: torch.Tensor,
    coords: torch.Tensor,
    k: int,
    frame_ids: torch.Tensor,
    spatial_weight: float = 0.5,
    info_weight: float = 1.0,
    temporal_scale: float = 1.0,
    temperature: float = 1.0,
    mode: str = "per-frame",
    backend: str = "auto",
) -> torch.Tensor:
    """The EVTP rule on one sample (see module docstring). Returns indices in selection order, frame by
    frame in per-frame mode.

    All frames are selected together as one batched greedy. On CPU, distance rows are built only for
    chosen points, unless the selection is small enough that the whole score matrices are cheaper
    (CPU_MATRIX_ENTRIES_PER_STEP); on CUDA the score matrices are built whole and the loop runs as one
    Triton kernel where available. backend: "auto"; on CUDA "torch" or "triton" to force the loop's
    form (see greedy.greedy_over_matrix); "reference" for the straightforward form
    (`evtp_select_reference`).
    """
    if backend not in ("auto", "torch", "triton", "reference"):
        raise ValueError(f"backend must be auto, torch, triton or reference, got {backend!r}")
    p = _problem(features, coords, k, frame_ids, spatial_weight, info_weight, temporal_scale, temperature, mode)
    if backend == "reference":
        return _select_reference(p)
    steps = max(p.budget)
    if features.device.type == "cpu" and backend != "triton":
        if p.index.numel() * p.index.shape[1] <= CPU_MATRIX_ENTRIES_PER_STEP * steps:
            picks = greedy_over_matrix(_score_matrix(p), p.first, steps)
        else:
            picks = torch.from_numpy(greedy_rows(_score_rows(p), p.first.numpy(), steps))
    else:
        picks = greedy_over_matrix(_score_matrix(p), p.first, steps, backend)
    budget = torch.tensor(p.budget, device=picks.device)
    keep = torch.arange(steps, device=picks.device)[None, :] < budget[:, None]
    return p.index.gather(1, picks)[keep]


def evtp_select_reference(
    features: torch.Tensor, coords: torch.Tensor, k: int, frame_ids: torch.Tensor, **options: float | str
) -> torch.Tensor:
    """The straightforward form of `evtp_select` (same options): each selection's full distance
    matrix, then the plain greedy (`greedy_farthest_point`), one frame after another. Kept as the
    reference for tests and benchmarks; the distances come from the same functions, so the two agree
    to the bit."""
    return evtp_select(features, coords, k, frame_ids, **{**options, "backend": "reference"})


def _select_reference(p: _Problem) -> torch.Tensor:
    dist = _full_distance(p.unit, p.points, p.half, p.scale)
    picked = []
    for f, (size, kf) in enumerate(zip(p.sizes, p.budget)):
        if kf == 0:
            continue
        w = None if p.weights is None else p.weights[f, :size]
        local = greedy_farthest_point(dist[f, :size, :size], kf, int(p.first[f]), w)
        picked.append(p.index[f, local])
    return torch.cat(picked)


# ---------------------------------------------------------------------------------------------
# adapter


AT_LLM_INPUT = "llm-input"
AT_VISION_LAYER = re.compile(r"vision-layer-(\d+)")


class EVTP(Pruner):
    """EVTP (ours): greedy k-center in a feature+space(+time) metric, seeded and weighted by information.

    `at` says where it selects: `llm-input` (default) on the projected tokens before the LLM (stage
    "pre-llm"); `vision-layer-L` at the output of vision block L (0-based), on the block's hidden states
    grouped per LLM token, so that the tower's later blocks also run on the kept tokens only (stage
    "vision"; the backend runs the tower, `InnerHook.vision_layer` tells it where, docs/performance.md).
    """

    name = "evtp"

    @dataclass
    class Config:
        spatial_weight: float = 0.5
        info_weight: float = 1.0
        temporal_scale: float = 1.0
        temperature: float = 1.0
        mode: Literal["global", "per-frame"] = "per-frame"
        at: str = AT_LLM_INPUT

        def __post_init__(self) -> None:
            if self.at != AT_LLM_INPUT and not AT_VISION_LAYER.fullmatch(self.at):
                raise ValueError(f"at must be {AT_LLM_INPUT} or vision-layer-L (L = a vision block, 0-based), got {self.at!r}")
            if not 0.0 <= self.spatial_weight <= 1.0:
                raise ValueError(f"spatial_weight must be in [0, 1], got {self.spatial_weight}")
            if self.info_weight < 0:
                raise ValueError(f"info_weight must be >= 0, got {self.info_weight}")
            if self.temporal_scale < 0:
                raise ValueError(f"temporal_scale must be >= 0, got {self.temporal_scale}")
            if self.temperature <= 0:
                raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def __init__(self, config: "EVTP.Config | None" = None):
        super().__init__(config)
        if self.vision_layer is not None:
            self.stage = "vision"  # the evaluation loop hands it to the backend's vision hook

    @property
    def vision_layer(self) -> int | None:
        """The vision block whose output it selects at (`at=vision-layer-L`), or None (`at=llm-input`)."""
        match = AT_VISION_LAYER.fullmatch(self.config.at)
        return int(match.group(1)) if match else None

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
