"""Does tiny-ivs's LLM compute motion? A fresh linear probe on the LLM's visual outputs (never shipped).

    python benchmarks/probe_motion.py                                        # the shipped weights, first-4 key frames
    python benchmarks/probe_motion.py --weights runs/tiny/stage2.safetensors --key-frames uniform-4

A visual token of key frame k can see frames 0..k (causal attention), so from the second key frame on it
can know how its object moves. With a temporal patch (the shipped weights pair key frames), "key frame"
here means the LLM's frame of tokens, a pair, and the first pair already sees its object move within it.
The probe is fitted on the object tokens of those frames in 60 batches of synthetic train-split videos
and scored on 15 other batches, against always guessing the most common class; the first key frame,
which cannot see motion, is the control. About 2–3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from evtp_cli.api import key_frame_indices
from evtp_cli.data.synthetic import SPLIT_CODES
from evtp_cli.models.tiny import DEFAULT_WEIGHTS
from evtp_cli.models.tiny_net import PATCH, group_starts, key_frame_coords
from evtp_cli.models.tiny_train import (
    MOTIONS,
    llm_forward,
    load,
    make_batch,
    token_labels,
)

SIZE, FRAMES, VIDEOS = 48, 8, 8


@torch.no_grad()
def visual_outputs(net, step: int, stream: int, policy: str) -> tuple[torch.Tensor, ...]:
    """(outputs, motion labels) of object tokens in key frames >= 1, then the same for the first key frame."""
    batch = make_batch([SPLIT_CODES["train"], stream, 0], step, VIDEOS, SIZE, FRAMES, 6, policy)
    keys, side = batch.key_frames, SIZE // PATCH
    images = batch.images.view(VIDEOS, FRAMES, *batch.images.shape[1:])[:, keys].flatten(0, 1)
    tokens, _, _ = net.vision(images)
    proj = net.project(tokens.view(VIDEOS, len(keys), side * side, -1))  # [B, K, N, D]: K LLM frames
    frames = proj.shape[1]
    _, _, hidden = llm_forward(net, proj.flatten(1, 2), key_frame_coords(frames, side, side), batch.texts)
    hidden = hidden.view(VIDEOS, frames, side * side, -1)
    owner, _ = token_labels(batch.instance[:, :, group_starts(keys, net.arch.temporal_patch)], batch.n_objects)
    motion = torch.gather(batch.motions, 1, owner.clamp(min=0).flatten(1)).view_as(owner)
    later, first = owner >= 0, owner >= 0
    later[:, 0] = False
    first[:, 1:] = False
    return hidden[later], motion[later], hidden[first], motion[first]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--key-frames", default="first-4")
    args = parser.parse_args()
    try:
        key_frame_indices(8, args.key_frames)
    except ValueError as exc:
        parser.exit(2, f"error: --key-frames: {exc}\n")
    if not args.weights.is_file():
        parser.exit(2, f"error: --weights {str(args.weights)!r} is not a file; give a tiny-ivs .safetensors file\n")
    torch.manual_seed(0)
    net, _ = load(args.weights)
    net.eval()
    fit = [visual_outputs(net, step, 90, args.key_frames) for step in range(60)]
    held = [visual_outputs(net, step, 91, args.key_frames) for step in range(15)]
    x, y = torch.cat([f[0] for f in fit]), torch.cat([f[1] for f in fit])
    mean, std = x.mean(0), x.std(0) + 1e-5
    probe = torch.nn.Linear(x.shape[1], len(MOTIONS))
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(600):
        loss = F.cross_entropy(probe((x - mean) / std), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for name, (xs, ys) in {"key frames >= 1": (0, 1), "first key frame (control)": (2, 3)}.items():
            xh, yh = torch.cat([h[xs] for h in held]), torch.cat([h[ys] for h in held])
            accuracy = float((probe((xh - mean) / std).argmax(1) == yh).float().mean())
            majority = float(torch.bincount(yh, minlength=len(MOTIONS)).max()) / len(yh)
            print(f"{name}: motion probe accuracy {accuracy:.3f}, majority class {majority:.3f} ({len(yh)} object tokens)")


if __name__ == "__main__":
    main()
