"""tiny-ivs networks: a small IVS model shaped like its large relatives (LISA / Sa2VA).

    frames ─► VisionEncoder ─► tokens [N, C] (+ high-resolution maps) ──────────────┐ (full, unpruned)
                   │                                                                │
                   └─► Projector ─► [pruner] ─► TinyLLM(visual, text, [SEG]) ─► pointer ─► point prompt ─► MaskHead
                                                                                                           (class-agnostic)

The mask head is promptable and class-agnostic: it segments whatever object lies at the point prompt,
reading the full vision features as SAM does. The prompt is a location that only the LLM can produce,
by pointing at one of the (possibly pruned) visual tokens it saw: that token's coordinates plus an
offset the token predicts towards its object's centre. So which object gets segmented depends on the
visual tokens the LLM kept, as in the real models.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TinyArch:
    vision_dim: int = 96
    vision_layers: int = 2
    vision_heads: int = 4
    stem1: int = 32
    stem2: int = 48
    llm_dim: int = 128
    llm_layers: int = 4
    llm_heads: int = 4
    llm_mlp: int = 384
    pointer_dim: int = 64
    max_text: int = 24
    fourier_bands: int = 8
    temporal_patch: int = 1  # consecutive frames merged into one LLM token per position (Qwen2.5-VL: 2)
    vocab: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


PATCH = 4  # pixels per visual token side: the encoder's two stride-2 convolutions

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[SEG]"]
PAD, UNK, SEG = 0, 1, 2


class WordTokenizer:
    """Word-level tokenizer over the shipped vocabulary; unknown words map to [UNK]."""

    def __init__(self, words: list[str]):
        self.itos = SPECIAL_TOKENS + [w for w in words if w not in SPECIAL_TOKENS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, max_len: int) -> list[int]:
        words = "".join(c if c.isalnum() or c.isspace() else " " for c in text.lower()).split()
        return [self.stoi.get(w, UNK) for w in words][:max_len] or [UNK]


def fourier_features(coords: torch.Tensor, bands: int) -> torch.Tensor:
    """[..., 3] coordinates in [0, 1] -> [..., 6 * bands] sin/cos features at octave frequencies."""
    freqs = (2.0 ** torch.arange(bands, device=coords.device, dtype=coords.dtype)) * math.pi
    angles = coords[..., None] * freqs  # [..., 3, bands]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


def grid_coords(height: int, width: int, device=None) -> torch.Tensor:
    """[h*w, 2] patch-centre (y, x) in (0, 1), row-major."""
    y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([yy.flatten(), xx.flatten()], dim=-1)


def key_frame_coords(frames: int, height: int, width: int, device=None) -> torch.Tensor:
    """[frames*h*w, 3] (t, y, x) of every token of `frames` key frames, frame-major; t = k / (frames - 1)."""
    t = torch.arange(frames, dtype=torch.float32, device=device) / max(frames - 1, 1)
    return torch.cat([t.repeat_interleave(height * width)[:, None], grid_coords(height, width, device).repeat(frames, 1)], 1)


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(att.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))

    def qk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This block's queries and keys [B, H, n, dh] for its input x (to recompute its attention)."""
        b, n, d = x.shape
        q, k, _ = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return q, k


class VisionEncoder(nn.Module):
    """Per-frame conv stem + transformer layers: tokens on a (H/4) x (W/4) grid and two high-res maps."""

    def __init__(self, arch: TinyArch):
        super().__init__()
        c = arch.vision_dim
        self.stem1 = nn.Sequential(nn.Conv2d(3, arch.stem1, 3, padding=1), nn.GELU())
        self.stem2 = nn.Sequential(nn.Conv2d(arch.stem1, arch.stem2, 3, stride=2, padding=1), nn.GELU())
        self.stem3 = nn.Sequential(
            nn.Conv2d(arch.stem2, c, 3, stride=2, padding=1), nn.GELU(), nn.Conv2d(c, c, 3, padding=1), nn.GELU()
        )
        self.pos = nn.Linear(4 * arch.fourier_bands, c)
        self.blocks = nn.ModuleList(EncoderBlock(c, arch.vision_heads, 2 * c) for _ in range(arch.vision_layers))
        self.norm = nn.LayerNorm(c)
        self.bands = arch.fourier_bands

    def forward(self, images: torch.Tensor, capture: dict | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W] in [0, 1] -> tokens [B, h*w, C], f2 [B, C2, H/2, W/2], f1 [B, C1, H, W].

        With `capture`, the input of the last block is stored there as "last_input" (for pruners that
        read the last layer's attention and keys, recomputed from its q/k by `EncoderBlock.qk`).
        """
        x = (images - 0.45) / 0.25
        f1 = self.stem1(x)
        f2 = self.stem2(f1)
        f4 = self.stem3(f2)
        b, c, h, w = f4.shape
        yx = grid_coords(h, w, images.device)
        freqs = (2.0 ** torch.arange(self.bands, device=images.device)) * math.pi
        ang = yx[..., None] * freqs
        pos = self.pos(torch.cat([ang.sin(), ang.cos()], -1).flatten(-2))
        tokens = f4.flatten(2).transpose(1, 2) + pos
        for i, block in enumerate(self.blocks):
            if capture is not None and i == len(self.blocks) - 1:
                capture["last_input"] = tokens
            tokens = block(tokens)
        return self.norm(tokens), f2, f1


def group_frames(tokens: torch.Tensor, temporal_patch: int) -> torch.Tensor:
    """Vision tokens of consecutive frames [..., F, N, C] -> [..., ceil(F/p), N, p*C]: each group of p frames
    side by side per position, as Qwen2.5-VL's temporal patch (p = 2) sees two frames. The last frame is
    repeated to fill the last group, so an image is its frame twice (as transformers' Qwen2-VL image
    processor pads, `image_processing_qwen2_vl.py`)."""
    if temporal_patch == 1:
        return tokens
    f = tokens.shape[-3]
    pad = -f % temporal_patch
    if pad:
        tokens = torch.cat([tokens, tokens[..., -1:, :, :].expand(*tokens.shape[:-3], pad, *tokens.shape[-2:])], -3)
    grouped = tokens.unflatten(-3, (tokens.shape[-3] // temporal_patch, temporal_patch))  # [..., G, p, N, C]
    return grouped.transpose(-3, -2).flatten(-2)


def group_starts(frames: list[int], temporal_patch: int) -> list[int]:
    """The first frame of each group of `frames` (see group_frames): where a group's token is labelled and prompted."""
    return frames[::temporal_patch]


class Projector(nn.Module):
    """Grouped vision tokens [..., p*C] -> LLM width."""

    def __init__(self, arch: TinyArch):
        super().__init__()
        d = arch.llm_dim
        self.net = nn.Sequential(nn.Linear(arch.temporal_patch * arch.vision_dim, d), nn.GELU(), nn.Linear(d, d))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)


class LLMBlock(nn.Module):
    """Pre-norm causal self-attention block with an optional key/value cache."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))
        self.heads = heads

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        key_padding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x [B, n, D]. With a cache (prefix keys/values) x is appended after the prefix."""
        b, n, d = x.shape
        h = self.norm1(x)
        q, k, v = self.split(self.q(h)), self.split(self.k(h)), self.split(self.v(h))
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        total = k.shape[2]
        if n == 1:
            att = F.scaled_dot_product_attention(q, k, v)
        elif cache is None and key_padding is None:
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            causal = torch.ones(n, total, dtype=torch.bool, device=x.device).tril(total - n)
            mask = causal[None, None]
            if key_padding is not None:
                mask = mask & ~key_padding[:, None, None, :]
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.o(att.transpose(1, 2).reshape(b, n, d))
        x = x + self.mlp(self.norm2(x))
        return x, (k, v)

    def qk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This block's queries and keys [B, H, n, dh] for its input x (to recompute its attention)."""
        h = self.norm1(x)
        return self.split(self.q(h)), self.split(self.k(h))


class TinyLLM(nn.Module):
    """A small causal transformer over [visual tokens, instruction words, [SEG]].

    Visual tokens carry a position embedding of their own (t, y, x), so a kept token keeps its original
    position after pruning (as kept tokens keep their M-RoPE ids in Qwen2-VL). Words are positioned by
    their index in the instruction, independent of how many visual tokens precede them.
    """

    def __init__(self, arch: TinyArch, vocab_size: int):
        super().__init__()
        d = arch.llm_dim
        self.embed = nn.Embedding(vocab_size, d, padding_idx=PAD)
        self.text_pos = nn.Embedding(arch.max_text + 2, d)
        self.vis_pos = nn.Linear(6 * arch.fourier_bands, d)
        self.vis_type = nn.Parameter(torch.zeros(d))
        self.blocks = nn.ModuleList(LLMBlock(d, arch.llm_heads, arch.llm_mlp) for _ in range(arch.llm_layers))
        self.norm = nn.LayerNorm(d)
        self.bands = arch.fourier_bands

    def visual_inputs(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return features + self.vis_pos(fourier_features(coords, self.bands)) + self.vis_type

    def text_inputs(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        pos = torch.arange(start, start + ids.shape[-1], device=ids.device).clamp(max=self.text_pos.num_embeddings - 1)
        return self.embed(ids) + self.text_pos(pos)

    def run(
        self,
        x: torch.Tensor,
        caches: list | None = None,
        key_padding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list]:
        new_caches = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if caches is None else caches[i], key_padding)
            new_caches.append(kv)
        return self.norm(x), new_caches


class PointerHead(nn.Module):
    """[SEG] hidden state -> a distribution over the visual tokens the LLM saw."""

    def __init__(self, arch: TinyArch):
        super().__init__()
        self.query = nn.Linear(arch.llm_dim, arch.pointer_dim)
        self.key = nn.Linear(arch.llm_dim, arch.pointer_dim)
        self.scale = arch.pointer_dim**-0.5

    def forward(self, seg_hidden: torch.Tensor, visual_hidden: torch.Tensor) -> torch.Tensor:
        """seg_hidden [B, D], visual_hidden [B, N, D] -> logits [B, N]."""
        return torch.einsum("bd,bnd->bn", self.query(seg_hidden), self.key(visual_hidden)) * self.scale


class OffsetHead(nn.Module):
    """Each projected visual token votes for the centre of the object it shows: (dy, dx) from its own centre."""

    def __init__(self, arch: TinyArch):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(arch.llm_dim, 64), nn.GELU(), nn.Linear(64, 2))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return 0.25 * torch.tanh(self.net(features))


class AttributeHead(nn.Module):
    """Training-only probe that makes vision tokens carry object attributes (colour, shape, size)."""

    def __init__(self, arch: TinyArch, n_colours: int, n_shapes: int):
        super().__init__()
        self.colour = nn.Linear(arch.vision_dim, n_colours + 1)
        self.shape = nn.Linear(arch.vision_dim, n_shapes + 1)
        self.size = nn.Linear(arch.vision_dim, 1)

    def forward(self, tokens: torch.Tensor):
        return self.colour(tokens), self.shape(tokens), self.size(tokens).squeeze(-1)


def prompt_maps(points: torch.Tensor, height: int, width: int, sigma_px: float) -> torch.Tensor:
    """points [B, 2] (y, x) in [0, 1] -> [B, 3, H, W]: a Gaussian bump and the offset to the point."""
    yy = (torch.arange(height, device=points.device, dtype=torch.float32) + 0.5) / height
    xx = (torch.arange(width, device=points.device, dtype=torch.float32) + 0.5) / width
    dy = yy[None, :, None] - points[:, 0, None, None]
    dx = xx[None, None, :] - points[:, 1, None, None]
    dy, dx = torch.broadcast_tensors(dy, dx)
    sigma = sigma_px / max(height, width)
    bump = torch.exp(-(dy**2 + dx**2) / (2 * sigma**2))
    return torch.stack([bump, 4 * dy, 4 * dx], dim=1)


class MaskHead(nn.Module):
    """Promptable, class-agnostic mask decoder: the object at the point, from full vision features."""

    def __init__(self, arch: TinyArch):
        super().__init__()
        c = arch.vision_dim
        self.low = nn.Sequential(nn.Conv2d(c + 3, 64, 3, padding=1), nn.GELU(), nn.Conv2d(64, 64, 3, padding=1), nn.GELU())
        self.mid = nn.Sequential(
            nn.Conv2d(64 + arch.stem2 + 3, 48, 3, padding=1), nn.GELU(), nn.Conv2d(48, 48, 3, padding=1), nn.GELU()
        )
        self.high = nn.Sequential(nn.Conv2d(48 + arch.stem1 + 3, 32, 3, padding=1), nn.GELU(), nn.Conv2d(32, 1, 3, padding=1))

    def forward(self, tokens_grid: torch.Tensor, f2: torch.Tensor, f1: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """tokens_grid [B, C, h, w], f2 [B, C2, 2h, 2w], f1 [B, C1, 4h, 4w], points [B, 2] -> logits [B, 4h, 4w]."""
        h, w = tokens_grid.shape[-2:]
        x = self.low(torch.cat([tokens_grid, prompt_maps(points, h, w, 1.0)], 1))
        x = F.interpolate(x, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        x = self.mid(torch.cat([x, f2, prompt_maps(points, *f2.shape[-2:], 2.0)], 1))
        x = F.interpolate(x, size=f1.shape[-2:], mode="bilinear", align_corners=False)
        return self.high(torch.cat([x, f1, prompt_maps(points, *f1.shape[-2:], 4.0)], 1)).squeeze(1)


class TinyIVSNet(nn.Module):
    """All parameters of tiny-ivs in one module (what the safetensors file holds)."""

    def __init__(self, arch: TinyArch, n_colours: int = 6, n_shapes: int = 4):
        super().__init__()
        self.arch = arch
        self.tokenizer = WordTokenizer(arch.vocab)
        self.vision = VisionEncoder(arch)
        self.projector = Projector(arch)
        self.llm = TinyLLM(arch, len(self.tokenizer))
        self.pointer = PointerHead(arch)
        self.offset = OffsetHead(arch)
        self.mask_head = MaskHead(arch)
        self.attributes = AttributeHead(arch, n_colours, n_shapes)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Vision tokens of consecutive frames [..., F, N, C] -> LLM features [..., ceil(F/p), N, D]."""
        return self.projector(group_frames(tokens, self.arch.temporal_patch))

    def tokens_to_grid(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """[B, h*w, C] -> [B, C, h, w]."""
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)
