"""Key-frame sampling for video models: which frames the LLM sees (masks are predicted on all frames)."""

from __future__ import annotations

import re


def key_frame_indices(num_frames: int, policy: str) -> list[int]:
    """Frame indices for `first-K` (Sa2VA's protocol: the first K frames) or `uniform-K` (K evenly spaced).

    A bare number K means first-K; `all` returns every frame. Fewer frames than K gives all of them.
    """
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    policy = str(policy).strip()
    if policy.isdigit():
        policy = f"first-{policy}"
    if policy == "all":
        return list(range(num_frames))
    m = re.fullmatch(r"(first|uniform)-(\d+)", policy)
    if not m or int(m.group(2)) < 1:
        raise ValueError(f"frame policy {policy!r} is not one of first-K, uniform-K, all (K >= 1)")
    k = min(int(m.group(2)), num_frames)
    if m.group(1) == "first" or k == num_frames:
        return list(range(k))
    if k == 1:
        return [0]
    return [round(i * (num_frames - 1) / (k - 1)) for i in range(k)]
