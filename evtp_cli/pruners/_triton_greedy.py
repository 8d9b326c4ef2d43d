"""The greedy farthest-point loop as one Triton kernel launch (CUDA only; optional).

One program per selection (a video frame, or the whole sample) keeps its running minimum in
registers and, each step, takes the first argmax and the minimum with the chosen point's row. The
rows are score rows as `greedy.greedy_rows` defines them (weighted, -inf at the point itself), so the
kernel does no arithmetic at all: min and argmax are exact, and the picks equal the torch loop's.
Without Triton or CUDA, `greedy.greedy_over_matrix` runs the torch loop instead.
"""

from __future__ import annotations

import warnings

import torch

try:  # Triton ships with CUDA builds of torch; CPU-only installs do not have it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

# one row lives in registers: beyond this many points per selection the torch loop is used
MAX_POINTS = 16384


_failed: str | None = None  # set when the kernel failed once; "auto" then keeps to the torch loop


def disable(err: Exception) -> None:
    """Stop using the kernel in "auto" mode for this process, with one warning that says why."""
    global _failed
    _failed = f"{type(err).__name__}: {err}"
    warnings.warn(f"Triton greedy kernel failed ({_failed[:200]}); using the torch loop", RuntimeWarning, stacklevel=3)


def usable(scores: torch.Tensor) -> bool:
    """Whether `greedy` can run on these score matrices [B, n, n]."""
    return (
        triton is not None
        and _failed is None
        and scores.is_cuda
        and scores.dtype == torch.float32
        and scores.dim() == 3
        and scores.shape[-1] <= MAX_POINTS
    )


if triton is not None:

    @triton.jit
    def _greedy_kernel(scores, first, out, n, steps, BLOCK: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        inside = offs < n
        base = scores + b * n * n
        i = tl.load(first + b)
        running = tl.load(base + i * n + offs, mask=inside, other=float("-inf"))
        tl.store(out + b * steps, i)
        for s in range(1, steps):
            i = tl.argmax(running, axis=0, tie_break_left=True).to(tl.int64)
            tl.store(out + b * steps + s, i)
            row = tl.load(base + i * n + offs, mask=inside, other=float("-inf"))
            running = tl.minimum(running, row)


def greedy(scores: torch.Tensor, first: torch.Tensor, steps: int) -> torch.Tensor:
    """Picks [B, steps] for score matrices [B, n, n] and first picks [B] (see greedy.greedy_rows)."""
    if triton is None:
        raise RuntimeError("Triton is not installed")
    scores = scores.contiguous()
    batch, n = scores.shape[0], scores.shape[-1]
    out = torch.empty(batch, steps, dtype=torch.long, device=scores.device)
    block = triton.next_power_of_2(n)
    warps = 4 if block <= 1024 else 8 if block <= 4096 else 16
    _greedy_kernel[(batch,)](scores, first.to(torch.long).contiguous(), out, n, steps, BLOCK=block, num_warps=warps)
    return out
