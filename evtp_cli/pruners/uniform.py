"""uniform: spatially even strided sampling in each frame.

The "uniform/grid" baseline of token-pruning papers (e.g. the spatial-uniform tokens of PruMerge+,
the pooling baselines of LLaVA-style compressors). The budget is split evenly over frames; within a
frame, k_f lattice points on a rows x cols grid matched to the frame's aspect ratio each take the
nearest not-yet-chosen token in (y, x).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from evtp_cli.api import PruneContext, frame_index
from evtp_cli.pruners.base import Pruner
from evtp_cli.pruners.evtp import allocate_budget


def lattice(k: int, height: int, width: int) -> torch.Tensor:
    """k points [k, 2] = (y, x) in (0, 1), spread on an even rows x cols lattice."""
    rows = min(height, max(1, round(math.sqrt(k * height / width))))
    cols = math.ceil(k / rows)
    if cols > width:
        cols = width
        rows = math.ceil(k / cols)
    ys = (torch.arange(rows, dtype=torch.float64) + 0.5) / rows
    xs = (torch.arange(cols, dtype=torch.float64) + 0.5) / cols
    points = torch.cartesian_prod(ys, xs)
    if points.shape[0] > k:
        keep = torch.linspace(0, points.shape[0] - 1, k, dtype=torch.float64).round().long()
        points = points[keep]
    return points


def uniform_in_frame(yx: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of k tokens of one frame nearest to an even lattice over the frame's extent.

    The answer depends on the coordinates and k only, and a run asks for the same few grids again and
    again, so it is computed once per (grid, k): the assignment below is a Python loop over k points.
    """
    yx = yx.detach().double().cpu().contiguous()
    return torch.tensor(_uniform_cached(yx.numpy().tobytes(), yx.shape[0], k), dtype=torch.long)


@functools.lru_cache(maxsize=256)
def _uniform_cached(yx_bytes: bytes, n: int, k: int) -> tuple[int, ...]:
    yx = torch.frombuffer(bytearray(yx_bytes), dtype=torch.float64).view(n, 2)
    lo, hi = yx.min(dim=0).values, yx.max(dim=0).values
    height = int(torch.unique(yx[:, 0]).numel())
    width = int(torch.unique(yx[:, 1]).numel())
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    # lattice cell centres mapped onto the span of token centres (first centre .. last centre)
    pts = lattice(k, height, width)
    rows_cols = torch.tensor([height, width], dtype=torch.float64)
    targets = lo + (pts * rows_cols - 0.5) / torch.clamp(rows_cols - 1, min=1) * span
    dist = torch.cdist(targets, yx)
    chosen = []
    taken = torch.zeros(yx.shape[0], dtype=torch.bool)
    for row in dist:
        row = torch.where(taken, torch.full_like(row, float("inf")), row)
        j = int(torch.argmin(row))
        taken[j] = True
        chosen.append(j)
    return tuple(chosen)


class Uniform(Pruner):
    """Even spatial grid per frame; the budget is split evenly over frames."""

    name = "uniform"

    @dataclass
    class Config:
        pass

    def _select(self, features: torch.Tensor, coords: torch.Tensor, k: int, context: PruneContext | None) -> torch.Tensor:
        frame_ids = frame_index(coords, context).cpu()
        frames = torch.unique(frame_ids, sorted=True)
        members = [torch.nonzero(frame_ids == f).flatten() for f in frames]
        budget = allocate_budget(k, [int(m.numel()) for m in members], [1.0] * len(members))
        picked = [m[uniform_in_frame(coords[m, 1:].cpu(), kf)] for m, kf in zip(members, budget) if kf > 0]
        return torch.cat(picked).to(features.device)
