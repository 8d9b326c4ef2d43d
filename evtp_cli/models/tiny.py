"""tiny-ivs: the bundled small IVS model (weights, config and vocabulary in evtp_cli/assets/).

It lets every command run offline with real numbers. Networks are in `tiny_net.py`, training in
`tiny_train.py`, the model card in `assets/README.md`. Inference follows the large models:

- vision: every frame is encoded (the mask decoder needs all of them, as SAM2 encodes every frame);
  the LLM sees the key frames only (`frames=first-4` by default, as Sa2VA shows its LLM 5 frames).
- prefill: the kept visual tokens (original (t, y, x) positions) and the instruction words.
- decode: one step feeding [SEG] with the key/value cache; its hidden state points at a visual token.
- mask: the pointed token's position plus its centre vote prompts the class-agnostic mask head on its
  frame; for video the object is followed frame to frame (appearance memory + proximity) and the mask
  head runs on every frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from evtp_cli.data.base import Sample
from evtp_cli.data.frames import key_frame_indices
from evtp_cli.errors import EvtpError
from evtp_cli.metrics.timing import StageTimer
from evtp_cli.models.base import IVSModel, Prediction, PrunePlan, VisualTokens
from evtp_cli.models.tiny_net import SEG, TinyIVSNet, grid_coords
from evtp_cli.pruners.base import PruneContext

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_WEIGHTS = ASSETS / "tiny_ivs.safetensors"
PATCH = 4
TRACK_RADIUS = 0.25  # how far (in image fractions) the tracked object may move between frames


def model_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The working resolution: fit within max_side, each side a multiple of the patch size."""
    scale = min(1.0, max_side / max(height, width))
    return max(PATCH, round(height * scale / PATCH) * PATCH), max(PATCH, round(width * scale / PATCH) * PATCH)


def mask_centroid(mask: torch.Tensor) -> torch.Tensor | None:
    """(y, x) in [0, 1] of a bool mask [H, W], or None when empty."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() == 0:
        return None
    h, w = mask.shape
    return torch.stack([(ys.float().mean() + 0.5) / h, (xs.float().mean() + 0.5) / w])


class TinyIVS(IVSModel):
    """Bundled tiny IVS model (vision encoder, 4-layer LLM, pointer prompt, promptable mask head)."""

    name = "tiny-ivs"

    @dataclass
    class Config:
        weights: str = ""
        device: str = "cpu"
        frames: str = "first-4"
        max_side: int = 64

        def __post_init__(self) -> None:
            key_frame_indices(8, self.frames)  # validates the policy
            if self.max_side < 16:
                raise ValueError(f"max_side must be >= 16, got {self.max_side}")

    def __init__(self, config: "TinyIVS.Config"):
        super().__init__(config)
        from evtp_cli.models.tiny_train import load

        path = Path(config.weights) if config.weights else DEFAULT_WEIGHTS
        if not path.is_file():
            raise EvtpError(f"tiny-ivs weights not found at {str(path)!r}; pass weights=PATH to a .safetensors file")
        try:
            self.net, self.train_info = load(path)
        except Exception as exc:  # a corrupt or foreign file
            raise EvtpError(f"cannot load tiny-ivs weights from {str(path)!r}: {exc}") from None
        self.net.eval().to(self.device)
        self.weights_path = path

    def info(self) -> dict:
        n_params = sum(p.numel() for n, p in self.net.named_parameters() if not n.startswith("attributes."))
        return {"name": self.name, "weights": str(self.weights_path), "parameters": n_params, "frames": self.config.frames}

    # --- encode ----------------------------------------------------------------------------------

    def _images(self, sample: Sample) -> tuple[torch.Tensor, tuple[int, int]]:
        frames = np.stack([np.asarray(f) for f in sample.frames])
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [H, W, 3] RGB arrays, got {frames.shape[1:]}")
        orig = frames.shape[1:3]
        images = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        size = model_size(*orig, self.config.max_side)
        if size != tuple(orig):
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        return images, orig

    @torch.inference_mode()
    def encode(self, sample: Sample, timer: StageTimer) -> VisualTokens:
        with timer.stage("vision"):
            images, orig = self._images(sample)
            tokens, f2, f1 = self.net.vision(images)
            t, h, w = images.shape[0], images.shape[2] // PATCH, images.shape[3] // PATCH
            keys = key_frame_indices(t, self.config.frames) if sample.task == "video" else [0]
            features = self.net.projector(tokens[keys]).flatten(0, 1)
            n_keys = len(keys)
            tvals = torch.arange(n_keys, dtype=torch.float32, device=self.device) / max(n_keys - 1, 1)
            coords = torch.cat([tvals.repeat_interleave(h * w)[:, None], grid_coords(h, w, self.device).repeat(n_keys, 1)], 1)
            frame_ids = torch.arange(n_keys, device=self.device).repeat_interleave(h * w)
        state = {"tokens": tokens, "f2": f2, "f1": f1, "keys": keys, "grid": (h, w), "orig": orig}
        return VisualTokens(features, coords, frame_ids, PruneContext(frame_ids=frame_ids), state)

    # --- decode ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def decode(self, sample: Sample, tokens: VisualTokens, plan: PrunePlan, timer: StageTimer) -> Prediction:
        if plan.inner is not None:
            raise EvtpError("tiny-ivs does not support pruning inside the model yet")
        net, st = self.net, tokens.state
        keep = plan.keep
        feats = tokens.features if keep is None else (plan.features if plan.features is not None else tokens.features[keep])
        coords = tokens.coords if keep is None else (plan.coords if plan.coords is not None else tokens.coords[keep])
        ids = net.tokenizer.encode(sample.text, net.arch.max_text)
        with timer.stage("prefill"):
            text = torch.tensor([ids], device=self.device)
            x = torch.cat([net.llm.visual_inputs(feats, coords)[None], net.llm.text_inputs(text)], 1)
            hidden, caches = net.llm.run(x)
        with timer.stage("decode"):
            seg = net.llm.text_inputs(torch.tensor([[SEG]], device=self.device), start=len(ids))
            seg_hidden, _ = net.llm.run(seg, caches)
            n_vis = feats.shape[0]
            logits = net.pointer(seg_hidden[:, -1], hidden[:, :n_vis])[0]
            j = int(torch.argmax(logits))
            point = (coords[j, 1:] + net.offset(feats[j])).clamp(0.0, 1.0)
            n_keys = len(st["keys"])
            key_index = int(torch.round(coords[j, 0] * max(n_keys - 1, 1)).clamp(0, n_keys - 1))
            frame = st["keys"][key_index]
        with timer.stage("mask"):
            masks = self._segment(st, frame, point)
        return Prediction(masks=masks, extras={"pointed_token": j, "frame": frame, "point": point.tolist()})

    def _mask_logits(self, st: dict, frame: int, point: torch.Tensor) -> torch.Tensor:
        h, w = st["grid"]
        grid = self.net.tokens_to_grid(st["tokens"][frame : frame + 1], h, w)
        return self.net.mask_head(grid, st["f2"][frame : frame + 1], st["f1"][frame : frame + 1], point[None])[0]

    def _segment(self, st: dict, start: int, point: torch.Tensor) -> np.ndarray:
        """Masks on every frame: the prompted frame, then frame-to-frame following in both directions."""
        tokens = st["tokens"]
        t = tokens.shape[0]
        logits = [None] * t
        logits[start] = self._mask_logits(st, start, point)
        if t > 1:
            h, w = st["grid"]
            yx = grid_coords(h, w, self.device)
            start_mask = logits[start] > 0
            coverage = F.avg_pool2d(start_mask.float()[None, None], PATCH).flatten()
            inside = coverage >= 0.5
            if not inside.any():
                inside = torch.zeros_like(inside)
                inside[int(torch.cdist(point[None], yx).argmin())] = True
            memory = F.normalize(tokens[start][inside].mean(0), dim=0)
            offsets = None
            for step in (1, -1):
                prev = mask_centroid(start_mask)
                prev = point if prev is None else prev
                f = start + step
                while 0 <= f < t:
                    dist = torch.cdist(prev[None], yx)[0]
                    sim = F.normalize(tokens[f], dim=1) @ memory - 1.0 * dist
                    sim = sim.masked_fill(dist > TRACK_RADIUS, float("-inf"))
                    i = int(torch.argmax(sim))
                    if offsets is None:
                        offsets = {}
                    if f not in offsets:
                        offsets[f] = self.net.offset(self.net.projector(tokens[f]))
                    p = (yx[i] + offsets[f][i]).clamp(0.0, 1.0)
                    logits[f] = self._mask_logits(st, f, p)
                    centre = mask_centroid(logits[f] > 0)
                    prev = p if centre is None else centre
                    f += step
        stacked = torch.stack(logits)[:, None]
        if tuple(stacked.shape[-2:]) != tuple(st["orig"]):
            stacked = F.interpolate(stacked, size=st["orig"], mode="bilinear", align_corners=False)
        return (stacked[:, 0] > 0).cpu().numpy()

    def prefill_flops(self, sequence_length: int) -> float:
        a = self.net.arch
        d, layers, mlp = a.llm_dim, a.llm_layers, a.llm_mlp
        per_token = layers * (2 * 4 * d * d + 2 * 2 * d * mlp)
        attention = layers * 2 * 2 * d * sequence_length * sequence_length / 2
        return float(per_token * sequence_length + attention)
