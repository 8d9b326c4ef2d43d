"""Pure parts of the Sa2VA-style backends: prompts, a tiny tokenizer, image preprocessing, token grids.

Nothing here holds a model. Followed (read, not copied):

- Sa2VA's published inference code (bytedance/Sa2VA `projects/sa2va/hf/models_qwen/modeling_sa2va_qwen.py`
  and the InternVL-based `modeling_sa2va_chat.py` shipped with ByteDance/Sa2VA-* checkpoints):
  the LLM sees the first 5 frames of a video; Qwen gets each frame as its own image in one user turn
  (Sa2VA's chat template has the system prompt removed); InternVL gets `<img><IMG_CONTEXT>*n</img>`
  per frame inside the `qwen_chat` template `<|im_start|>user\\n{input}<|im_end|>\\n<|im_start|>assistant\\n`;
  images are tiled InternVL-style (1..12 tiles of 448 px plus a thumbnail, `dynamic_preprocess`), video
  frames are resized to one 448 px tile; SAM2 gets every frame resized to 1024x1024 (`DirectResize`,
  no aspect preservation) and normalised with ImageNet mean/std (`preprocess_image`).
- Sa2VA's evaluation prompts (`projects/sa2va/evaluation/dataset/RES.py` and the Ref-VOS evaluation):
  `"<image>\\n Please segment {sentence} in this image."` for images, `"<image>\\nPlease segment {expression}."`
  for videos; questions (ReasonSeg long queries) use the "Please respond with a segmentation mask." form.
- transformers' Qwen2-VL image processor (`smart_resize`, `patchify`): sides rounded to multiples of
  patch*merge within [min_pixels, max_pixels], CLIP mean/std, patches ordered merge-block by merge-block,
  each image repeated to the temporal patch size. Sa2VA calls it with min 512*28*28, max 2048*28*28 pixels.
- transformers' InternVL pixel shuffle: a 448 px tile gives 32x32 patches, 16x16 tokens after the 0.5
  pixel shuffle, row-major in (y, x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

SEG_TOKEN = "[SEG]"
IMAGE_PLACEHOLDER = "<image>"

# --------------------------------------------------------------------------------------------------
# prompts


def instruction(text: str, task: str, question: bool = False) -> str:
    """Sa2VA's evaluation instruction for one sample, with the `<image>` placeholder first."""
    text = " ".join(str(text).split())
    if question:
        return f"{IMAGE_PLACEHOLDER}\n{text} Please respond with a segmentation mask."
    if task == "video":
        return f"{IMAGE_PLACEHOLDER}\nPlease segment {text}."
    return f"{IMAGE_PLACEHOLDER}\n Please segment {text} in this image."


def is_question(meta: dict | None) -> bool:
    """ReasonSeg marks its long, question-like queries with `is_sentence`."""
    return bool((meta or {}).get("is_sentence", False))


def qwen_prompt(instruction_text: str, tokens_per_image: Sequence[int]) -> str:
    """Sa2VA-Qwen's user turn: one vision block per image (frame), then the instruction without `<image>`."""
    vision = "".join(f"<|vision_start|>{'<|image_pad|>' * n}<|vision_end|>" for n in tokens_per_image)
    text = instruction_text.replace(IMAGE_PLACEHOLDER, "")
    return f"<|im_start|>user\n{vision}{text}<|im_end|>\n<|im_start|>assistant\n"


def internvl_prompt(instruction_text: str, tokens_per_frame: Sequence[int]) -> str:
    """Sa2VA-InternVL's `qwen_chat` turn: `<img>` blocks joined by newlines in place of `<image>`."""
    blocks = "".join(f"<img>{'<IMG_CONTEXT>' * n}</img>\n" for n in tokens_per_frame).strip()
    return f"<|im_start|>user\n{instruction_text.replace(IMAGE_PLACEHOLDER, blocks)}<|im_end|>\n<|im_start|>assistant\n"


# --------------------------------------------------------------------------------------------------
# tokenizer for the random presets (a real checkpoint brings its own)

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>", "<img>", "</img>", "<IMG_CONTEXT>", SEG_TOKEN, "<p>", "</p>",
]
WORDS = (
    "\n . , ? ! ' - : ; ( ) a an the this that these those it its is are was be of in on at to from with by "
    "for and or not no yes sure please segment respond segmentation mask image video frame user assistant "
    "object person man woman boy girl child people dog cat horse car bus truck bike bird ball table chair "
    "left right top bottom middle center front back above below behind next near far largest smallest "
    "biggest small large big tall short leftmost rightmost topmost lowest first second third last other "
    "red green blue yellow purple white black orange pink brown gray grey circle square triangle cross "
    "moving moves move moved fastest slowest still standing sitting walking running holding wearing up down "
    "which who what where how one two three who's there here can you"
).split(" ")


def build_word_tokenizer():
    """A word-level `PreTrainedTokenizerFast` with the chat and image special tokens Sa2VA uses.

    Built in memory (the `tokenizers` library), so the random presets run offline; lower-cases, splits
    words, punctuation and newlines; unknown words map to `<unk>`.
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
    )
    from transformers import PreTrainedTokenizerFast

    words = ["\n" if w == "\n" else w for w in WORDS if w]
    vocab: dict[str, int] = {"<unk>": 0}
    for word in ["\n"] + words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
            pre_tokenizers.Split(Regex(r"\n|[A-Za-z0-9_]+|[^\sA-Za-z0-9_]"), behavior="isolated"),
        ]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS,
    )


def stop_token_ids(tokenizer) -> set[int]:
    """Ids that end an answer: `<|im_end|>`, `<|endoftext|>` and the tokenizer's own eos."""
    ids = set()
    for token in ("<|im_end|>", "<|endoftext|>"):
        i = tokenizer.convert_tokens_to_ids(token)
        if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id:
            ids.add(i)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def token_id(tokenizer, token: str) -> int:
    i = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(i, int) or i < 0 or (tokenizer.unk_token_id is not None and i == tokenizer.unk_token_id):
        raise KeyError(f"the tokenizer has no {token!r} token")
    return i


# --------------------------------------------------------------------------------------------------
# image preprocessing


def to_rgb_array(frame) -> np.ndarray:
    array = np.asarray(frame)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"frames must be [H, W, 3] RGB arrays, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return array


def resize_rgb(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize with PIL (what Sa2VA's `DirectResize` and the processors' PIL path use)."""
    from PIL import Image

    if frame.shape[0] == height and frame.shape[1] == width:
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.BICUBIC))


def normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W], rescaled to [0, 1] and normalised."""
    x = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0)
    x = x.movedim(-1, -3)
    m = torch.tensor(mean, dtype=x.dtype)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype)[:, None, None]
    return (x - m) / s


def sam2_pixels(frames: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """SAM2 input: every frame resized to size x size (no aspect kept) and ImageNet-normalised, [T, 3, S, S]."""
    return normalise(np.stack([resize_rgb(to_rgb_array(f), size, size) for f in frames]), IMAGENET_MEAN, IMAGENET_STD)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize rule: sides multiples of `factor`, area within [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be below 200, got {max(height, width) / min(height, width):.1f}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return max(factor, h_bar), max(factor, w_bar)


@dataclass(frozen=True)
class QwenPatching:
    patch: int = 14
    merge: int = 2
    temporal: int = 2
    min_pixels: int = 512 * 28 * 28
    max_pixels: int = 2048 * 28 * 28


def qwen_patches(frame: np.ndarray, p: QwenPatching) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """One image as Qwen2.5-VL `pixel_values` rows [gh*gw, 3*temporal*patch*patch] and its grid (1, gh, gw)."""
    frame = to_rgb_array(frame)
    h, w = smart_resize(frame.shape[0], frame.shape[1], p.patch * p.merge, p.min_pixels, p.max_pixels)
    x = normalise(resize_rgb(frame, h, w), CLIP_MEAN, CLIP_STD)  # [3, h, w]
    gh, gw = h // p.patch, w // p.patch
    x = x.reshape(3, gh // p.merge, p.merge, p.patch, gw // p.merge, p.merge, p.patch)
    x = x.permute(1, 4, 2, 5, 0, 3, 6)  # [gh/m, gw/m, m, m, C, patch, patch]
    x = x.unsqueeze(5).expand(-1, -1, -1, -1, -1, p.temporal, -1, -1)
    return x.reshape(gh * gw, 3 * p.temporal * p.patch * p.patch).contiguous(), (1, gh, gw)


def closest_tile_grid(width: int, height: int, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """InternVL's `find_closest_aspect_ratio`: (columns, rows) of the tiling nearest the image's aspect."""
    ratios = sorted(
        {(i, j) for n in range(min_tiles, max_tiles + 1) for i in range(1, n + 1) for j in range(1, n + 1) if min_tiles <= i * j <= max_tiles},
        key=lambda r: r[0] * r[1],
    )
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in ratios:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def internvl_tiles(frame: np.ndarray, tile: int, min_tiles: int, max_tiles: int, thumbnail: bool) -> tuple[list[np.ndarray], tuple[int, int], bool]:
    """InternVL's `dynamic_preprocess`: tiles row by row, plus a whole-image thumbnail when there are several.

    Returns (tiles, (rows, columns), has_thumbnail).
    """
    frame = to_rgb_array(frame)
    height, width = frame.shape[:2]
    cols, rows = closest_tile_grid(width, height, tile, min_tiles, max_tiles)
    resized = resize_rgb(frame, rows * tile, cols * tile)
    tiles = [resized[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] for r in range(rows) for c in range(cols)]
    with_thumb = thumbnail and len(tiles) != 1
    if with_thumb:
        tiles.append(resize_rgb(frame, tile, tile))
    return tiles, (rows, cols), with_thumb


# --------------------------------------------------------------------------------------------------
# token grids -> (t, y, x) coordinates


def grid_yx(rows: int, cols: int, top: float = 0.0, left: float = 0.0, height: float = 1.0, width: float = 1.0) -> torch.Tensor:
    """Row-major cell centres [rows*cols, 2] = (y, x) of a grid covering [top, top+height] x [left, left+width]."""
    y = top + (torch.arange(rows, dtype=torch.float32) + 0.5) * height / rows
    x = left + (torch.arange(cols, dtype=torch.float32) + 0.5) * width / cols
    return torch.stack(torch.meshgrid(y, x, indexing="ij"), -1).reshape(-1, 2)


def frame_time(index: int, count: int) -> float:
    """t in [0, 1] of key frame `index` among `count` (0 for a single frame)."""
    return index / (count - 1) if count > 1 else 0.0


def with_time(yx: torch.Tensor, t: float) -> torch.Tensor:
    return torch.cat([torch.full((yx.shape[0], 1), float(t)), yx], 1)


# --------------------------------------------------------------------------------------------------
# the [SEG] projection


class SegProjection(nn.Sequential):
    """Sa2VA's `text_hidden_fcs`: Linear(d, d) -> ReLU -> Linear(d, sam_dim) -> Dropout(0).

    The [SEG] token's last hidden state becomes a SAM2 prompt embedding. Same child indices as Sa2VA
    (0 and 2 hold weights), so checkpoint names map one to one.
    """

    def __init__(self, llm_dim: int, sam_dim: int):
        super().__init__(nn.Linear(llm_dim, llm_dim), nn.ReLU(inplace=True), nn.Linear(llm_dim, sam_dim), nn.Dropout(0.0))
