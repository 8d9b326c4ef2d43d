"""tiny-ivs: the bundled small IVS model (weights, config and vocabulary in evtp_cli/assets/).

It lets every command run offline with real numbers. Networks are in `tiny_net.py`, training in
`tiny_train.py`, the model card in `assets/README.md`. Inference follows the large models:

- vision: every frame is encoded (the mask decoder needs all of them, as SAM2 encodes every frame);
  the LLM sees the key frames only (`frames=first-4` by default, as Sa2VA shows its LLM 5 frames).
- temporal patch: weights whose architecture has `temporal_patch` p > 1 show the LLM each run of p
  key frames as one frame of tokens, the p frames' encoder outputs side by side per position (as
  Qwen2.5-VL's vision tower patches 2 frames at once); an image is its frame repeated.
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

from evtp_cli.api import (
    LayerPrune,
    LLMState,
    Prediction,
    PruneContext,
    PrunePlan,
    Sample,
    VisionState,
    VisualTokens,
    key_frame_indices,
    member_mean,
)
from evtp_cli.errors import EvtpError, PrunerNotApplicable
from evtp_cli.metrics.timing import StageTimer
from evtp_cli.models.attention import attention_received, attention_rows
from evtp_cli.models.base import IVSModel
from evtp_cli.models.tiny_net import (
    PATCH,
    SEG,
    grid_coords,
    group_frames,
    group_starts,
    key_frame_coords,
)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_WEIGHTS = ASSETS / "tiny_ivs.safetensors"
TRACK_RADIUS = 0.25  # how far (in image fractions) the tracked object may move between frames
IN_TOWER_REASON = (
    "tiny-ivs cannot prune inside its vision encoder: the mask head reads every frame's unpruned encoder output, "
    "so a pruned pass would come on top of the full one and save nothing; use evtp (at=llm-input)"
)


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
    inner_stages = ("vision", "llm")

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
            if self.weights and not Path(self.weights).is_file():  # checked before a run writes anything
                raise ValueError(f"weights not found at {self.weights!r}; pass weights=PATH to a .safetensors file")

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

    @property
    def llm_layers(self) -> int:  # type: ignore[override]
        return len(self.net.llm.blocks)

    def info(self) -> dict:
        n_params = sum(p.numel() for n, p in self.net.named_parameters() if not n.startswith("attributes."))
        return {"name": self.name, "weights": str(self.weights_path), "parameters": n_params, "frames": self.config.frames,
                "temporal_patch": self.temporal_patch}

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
            capture: dict = {}
            tokens, f2, f1 = self.net.vision(images, capture)
            t, h, w = images.shape[0], images.shape[2] // PATCH, images.shape[3] // PATCH
            keys = key_frame_indices(t, self.config.frames) if sample.task == "video" else [0]
            grouped = group_frames(tokens[keys], self.temporal_patch)  # [G, N, p*C]: one LLM frame per group
            features = self.net.projector(grouped).flatten(0, 1)
            n_groups = grouped.shape[0]
            coords = key_frame_coords(n_groups, h, w, self.device)
            frame_ids = torch.arange(n_groups, device=self.device).repeat_interleave(h * w)
        state = {"tokens": tokens, "f2": f2, "f1": f1, "grid": (h, w), "orig": orig, "grouped": grouped}
        context = self._context(frame_ids, capture["last_input"][keys])
        return VisualTokens(features, coords, frame_ids, context, state, frames_shown=group_starts(keys, self.temporal_patch))

    @property
    def temporal_patch(self) -> int:
        return self.net.arch.temporal_patch

    def _context(self, frame_ids: torch.Tensor, last_input: torch.Tensor) -> PruneContext:
        """Frame ids, plus lazy vision-side attention and keys of the last encoder layer for the key frames.

        The encoder has no [CLS] token: `attention` is the mean attention each token receives in its
        frame (over heads and queries), recomputed from the last block's q/k; `keys` are that block's
        keys with the heads side by side ([N, C], `key_heads` heads). With a temporal patch, both are
        averaged over the frames of each group, so they line up with the LLM's tokens.
        """
        block = self.net.vision.blocks[-1]
        qk: list = []  # the block's q/k, computed once when first asked for

        def per_group(x: torch.Tensor) -> torch.Tensor:  # [K, N, ...] per key frame -> [G*N, ...]
            p = self.temporal_patch
            grouped = group_frames(x.flatten(2), p).unflatten(-1, (p, -1)).mean(-2)
            return grouped.reshape(-1, *x.shape[2:])

        @torch.inference_mode()
        def attention() -> torch.Tensor:
            qk[:] = qk or block.qk(last_input)
            return per_group(attention_received(*qk)[..., None])[:, 0]

        @torch.inference_mode()
        def keys() -> torch.Tensor:
            qk[:] = qk or block.qk(last_input)
            return per_group(qk[1].transpose(1, 2).flatten(2))

        extras = {"attention_kind": "mean-received", "key_heads": block.heads}
        return PruneContext(frame_ids=frame_ids, extras=extras, providers={"attention": attention, "keys": keys})

    # --- decode ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def decode(self, sample: Sample, tokens: VisualTokens, plan: PrunePlan, timer: StageTimer) -> Prediction:
        net, st = self.net, tokens.state
        feats, coords, extras = self._llm_tokens(tokens, plan, timer)
        ids = net.tokenizer.encode(sample.text, net.arch.max_text)
        with timer.stage("prefill"):
            text = torch.tensor([ids], device=self.device)
            x = torch.cat([net.llm.visual_inputs(feats, coords)[None], net.llm.text_inputs(text)], 1)
            if plan.inner_stage == "llm":
                hidden, caches, feats, coords, counts = self._prefill_hooked(x, feats, coords, plan)
            else:
                hidden, caches = net.llm.run(x)
                counts = [int(feats.shape[0])] * len(net.llm.blocks)
        with timer.stage("decode"):
            seg = net.llm.text_inputs(torch.tensor([[SEG]], device=self.device), start=len(ids))
            seg_hidden, _ = net.llm.run(seg, caches)
            n_vis = feats.shape[0]
            logits = net.pointer(seg_hidden[:, -1], hidden[:, :n_vis])[0]
            j = int(torch.argmax(logits))
            point = (coords[j, 1:] + net.offset(feats[j])).clamp(0.0, 1.0)
            starts = tokens.frames_shown
            group = int(torch.round(coords[j, 0] * max(len(starts) - 1, 1)).clamp(0, len(starts) - 1))
            frame = starts[group]
        with timer.stage("mask"):
            masks = self._segment(st, frame, point)
        extras.update({"pointed_token": j, "frame": frame, "point": point.tolist(), "visual_tokens_per_layer": counts})
        return Prediction(masks=masks, extras=extras)

    def _llm_tokens(self, tokens: VisualTokens, plan: PrunePlan, timer: StageTimer) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The visual tokens the LLM receives: all, a pre-LLM plan, or a vision method's output."""
        if getattr(plan.inner, "vision_layer", None) is not None:
            raise PrunerNotApplicable(IN_TOWER_REASON)
        if plan.inner is not None and plan.inner_stage == "vision":
            st = tokens.state
            with timer.stage("select"):
                vision = st["grouped"].flatten(0, 1)
                merged = plan.inner(VisionState(vision, tokens.coords, tokens.context))
                return self.net.projector(merged.features), merged.coords, dict(merged.info)
        if plan.inner is not None and plan.inner_stage != "llm":
            raise EvtpError(f"tiny-ivs has no {plan.inner_stage!r} hook; it has {', '.join(self.inner_stages)}")
        keep = plan.keep
        if keep is None:
            return tokens.features, tokens.coords, {}
        feats = plan.features if plan.features is not None else tokens.features[keep]
        coords = plan.coords if plan.coords is not None else tokens.coords[keep]
        return feats, coords, {}

    def _prefill_hooked(self, x: torch.Tensor, feats: torch.Tensor, coords: torch.Tensor, plan: PrunePlan):
        """Prefill with an in-LLM method called before each layer in `plan.inner_layers`.

        Visual tokens come first in tiny-ivs's sequence, so the kept (and merged) visual rows stay a
        prefix. Positions are added to the inputs, so kept tokens keep theirs. Layers before a pruning
        point keep the key/value cache of every token they saw; the [SEG] step reads each layer's own
        cache. Returns (hidden, caches, features, coords of the final visual tokens, count per layer).
        """
        llm = self.net.llm
        depth = len(llm.blocks)
        n0, length = feats.shape[0], x.shape[1]
        device = x.device
        sizes = torch.ones(n0, device=device)
        inputs_visual, inputs_text = torch.arange(n0, device=device), torch.arange(n0, length, device=device)
        points = set(plan.inner_layers)
        h, caches, counts = x, [], []
        previous: tuple | None = None
        for j, block in enumerate(llm.blocks):
            n = feats.shape[0]
            if j in points and previous is not None:
                state = LLMState(
                    layer=j, depth=depth, hidden=h[0], visual=torch.arange(n, device=device),
                    text=torch.arange(n, h.shape[1], device=device), coords=coords,
                    attention=previous[0], keys=previous[1], norm=llm.norm,
                    inputs=x[0], inputs_visual=inputs_visual, inputs_text=inputs_text,
                )  # fmt: skip
                result = plan.inner(state)
                if result is not None:
                    h, feats, coords, sizes = _apply_layer_prune(result, h, feats, coords, sizes)
            counts.append(int(feats.shape[0]))
            previous = _layer_view(block, h)
            h, kv = block(h)
            caches.append(kv)
        return llm.norm(h), caches, feats, coords, counts

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
                        offsets[f] = self.net.offset(self.net.project(tokens[f : f + 1])[0])
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


def _layer_view(block, x_in: torch.Tensor):
    """(attention(queries) -> [H, q, L], keys() -> [H, L, dh]) of one LLM block for its input, lazily."""
    cache: dict = {}

    def qk():
        if "qk" not in cache:
            q, k = block.qk(x_in)
            cache["qk"] = (q[0], k[0])
        return cache["qk"]

    return (lambda queries: attention_rows(*qk(), queries)), (lambda: qk()[1])


def _apply_layer_prune(result: LayerPrune, h, feats, coords, sizes):
    """Keep `result.keep` of the leading visual rows and append merged rows after them."""
    n = feats.shape[0]
    keep = result.keep.to(h.device)
    vis, feats_k, coords_k, sizes_k = h[:, keep], feats[keep], coords[keep], sizes[keep]
    if result.merged is not None and result.merged.shape[0] > 0:
        members = result.members(n, h.device)
        merged_feats, merged_sizes = member_mean(feats, sizes, members)
        merged_coords, _ = member_mean(coords, sizes, members)
        vis = torch.cat([vis, result.merged.to(h.dtype)[None]], 1)
        feats_k = torch.cat([feats_k, merged_feats.to(feats.dtype)])
        coords_k = torch.cat([coords_k, merged_coords.to(coords.dtype)])
        sizes_k = torch.cat([sizes_k, merged_sizes])
    return torch.cat([vis, h[:, n:]], 1), feats_k, coords_k, sizes_k
