"""sa2va-qwen: Sa2VA-Qwen2.5-VL on transformers' `Qwen2_5_VLForConditionalGeneration` + `Sam2VideoModel`.

Follows Sa2VA's `modeling_sa2va_qwen.py` (bytedance/Sa2VA, `projects/sa2va/hf/models_qwen/`): each key frame
is one image of the user turn (Sa2VA passes video frames as images, not as a Qwen video), images are
resized by Qwen2-VL's rule with min_pixels 512*28*28 and max_pixels 2048*28*28, the answer is generated
greedily and every [SEG] token's last hidden state prompts SAM2.

Positions (read from the installed `modeling_qwen2_5_vl.py`, `get_rope_index` / `compute_3d_position_ids`):
the unpruned prompt gets 3-D M-RoPE ids (t, h, w) from `get_rope_index`, whose `rope_deltas` make text
after the images continue at `max position + 1`. The pruning hook keeps each surviving token's 3-D ids,
and the first generated token takes `L + rope_deltas` of the *unpruned* length L, so decoding continues
exactly where the full prompt would have, while the KV cache holds only the kept positions. The ids go
to the text model as [3, 1, L] (no text-position row), so no packed-sequence masking is inferred from them.

Coordinates for pruners: image k of K key frames, merged grid (gh/2, gw/2) row-major (the order of
`patchify` + `PatchMerger`), t = k / (K - 1), (y, x) the cell centres in [0, 1] of the whole frame.

Vision methods (`_vision_side`): the tower runs its blocks on patches in window order; the merger's
input after `ln_q`, with the 4 patches of each 2x2 merge unit side by side and put back in the LLM's
order (`argsort` of the window index, as `PatchMerger`'s output is), gives one row per visual token.
Qwen2.5-VL's tower has no [CLS]: `attention` is the mean attention each patch receives within its image
in the last full-attention block (`fullatt_block_indexes[-1]`; the windowed blocks only see their
window), recomputed from that block's qkv and vision RoPE, averaged over each token's 4 patches; `keys`
are that block's keys (heads side by side), averaged the same way.

Tiny preset: 4 decoder layers (so FastV's and DART's K = 2 has layers on both sides).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from evtp_cli.errors import EvtpError
from evtp_cli.models.sa2va_base import (
    OUT_OF_SCOPE,
    Sa2VABackend,
    Sa2VAOptions,
    Sa2VAState,
    pooled,
)
from evtp_cli.models.sa2va_common import (
    QwenPatching,
    frame_time,
    grid_yx,
    qwen_patches,
    qwen_prompt,
    token_id,
    with_time,
)
from evtp_cli.models.sa2va_inner import (
    VisionSide,
    capture_inputs,
    first_input,
    mean_received,
    module_function,
    once,
)
from evtp_cli.models.sa2va_tower import qwen_in_tower
from evtp_cli.models.sa2va_weights import NameMap, qwen_map

# real Qwen2.5-VL shapes (Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct configs)
_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, spatial_merge_size=2,
               temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu")
_TEXT = {
    "3b-random": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2, vocab_size=151936),
    "7b-random": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, vocab_size=152064),
}


def qwen_window_index(visual, grid_thw: torch.Tensor) -> torch.Tensor:
    """The tower's window order of the merge units (transformers 5: `vision_utils`; 4.x: a method of the tower)."""
    if hasattr(visual, "get_window_index"):
        return visual.get_window_index(grid_thw)[0]
    from transformers.vision_utils import get_vision_window_index

    c = visual.config
    return get_vision_window_index(grid_thw, spatial_merge_size=c.spatial_merge_size, window_size=c.window_size, patch_size=c.patch_size)[0]


class Sa2VAQwen(Sa2VABackend):
    """Sa2VA-Qwen2.5-VL-3B/7B (Qwen2.5-VL + SAM2): pre-LLM, vision, in-tower and in-LLM pruning hooks that keep M-RoPE positions."""

    name = "sa2va-qwen"
    family = "qwen"
    image_token = "<|image_pad|>"

    @dataclass
    class Config(Sa2VAOptions):
        preset: Literal["", "tiny-random", "3b-random", "7b-random"] = ""
        min_pixels: int = 0  # 0: the preset's / Sa2VA's 512*28*28
        max_pixels: int = 0  # 0: the preset's / Sa2VA's 2048*28*28

        PRESETS: ClassVar[tuple[str, ...]] = ("tiny-random", "3b-random", "7b-random")

    def __init__(self, config: "Sa2VAQwen.Config"):
        super().__init__(config)
        vision = self.net.vlm.config.vision_config
        tiny = config.preset == "tiny-random"
        self.patching = QwenPatching(
            patch=vision.patch_size,
            merge=vision.spatial_merge_size,
            temporal=vision.temporal_patch_size,
            min_pixels=config.min_pixels or (16 * 28 * 28 if tiny else 512 * 28 * 28),
            max_pixels=config.max_pixels or (16 * 28 * 28 if tiny else 2048 * 28 * 28),
        )

    def _vlm_class(self):
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    def _special_ids(self, tokenizer) -> dict:
        return {
            "image_token_id": token_id(tokenizer, "<|image_pad|>"),
            "video_token_id": token_id(tokenizer, "<|video_pad|>"),
            "vision_start_token_id": token_id(tokenizer, "<|vision_start|>"),
            "vision_end_token_id": token_id(tokenizer, "<|vision_end|>"),
        }

    def _random_vlm_config(self, preset: str, tokenizer) -> tuple[Any, str]:
        from transformers import Qwen2_5_VLConfig

        if preset == "tiny-random":
            text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                        rope_theta=10000.0, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
            vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                          spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])
            sam = "tiny"
        else:
            text = dict(_TEXT[preset], max_position_embeddings=128000,
                        rope_theta=1000000.0, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
            vision = dict(_VISION, out_hidden_size=text["hidden_size"])
            sam = "hiera-l"
        # rope given as Hub configs spell it (rope_theta + rope_scaling "mrope"): read by transformers 4.x and 5.x alike
        text.update(tie_word_embeddings=False, bos_token_id=None, eos_token_id=token_id(tokenizer, "<|im_end|>"))
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **self._special_ids(tokenizer))
        return config, sam

    def _checkpoint_vlm_config(self, raw: dict, tokenizer, path: Path) -> Any:
        from transformers import Qwen2_5_VLConfig

        if "llm_config" in raw:
            arch = (raw["llm_config"].get("architectures") or ["?"])[0]
            if arch != "Qwen2ForCausalLM":
                raise EvtpError(f"{str(path)!r} is an InternVL-based Sa2VA checkpoint with a {arch} language model. {OUT_OF_SCOPE}")
            raise EvtpError(f"{str(path)!r} is an InternVL-based Sa2VA checkpoint: load it with --model sa2va-internvl:path=...")
        if "vision_config" not in raw or "spatial_merge_size" not in raw.get("vision_config", {}):
            raise EvtpError(f"{str(path)!r} does not hold a Sa2VA-Qwen2.5-VL config (no Qwen2.5-VL vision_config). {OUT_OF_SCOPE}")
        skip = {"architectures", "auto_map", "template", "model_type", "_name_or_path", "transformers_version", "torch_dtype", "dtype"}
        fields = {k: v for k, v in raw.items() if k not in skip}
        fields.update(self._special_ids(tokenizer))
        return Qwen2_5_VLConfig(**fields)

    def _name_map(self, vlm_config) -> NameMap:
        return qwen_map(tied_lm_head=bool(getattr(vlm_config.text_config, "tie_word_embeddings", False) or vlm_config.tie_word_embeddings))

    def _sa2va_config(self, vlm_config) -> dict:
        raw = vlm_config.to_dict()
        raw.update(architectures=["Sa2VAChatModelQwen"], model_type="sa2va_chat")
        return raw

    # ---- vision ---------------------------------------------------------------------------------

    def _preprocess(self, frames: list[np.ndarray], task: str):
        rows, grids, coords, frame_ids = [], [], [], []
        merge = self.patching.merge
        for k, frame in enumerate(frames):
            patches, grid = qwen_patches(frame, self.patching)
            rows.append(patches)
            grids.append(grid)
            gh, gw = grid[1] // merge, grid[2] // merge
            coords.append(with_time(grid_yx(gh, gw), frame_time(k, len(frames))))
            frame_ids.append(torch.full((gh * gw,), k, dtype=torch.long))
        device = self.device
        pixel_values = torch.cat(rows).to(device=device, dtype=self.dtype)
        grid_thw = torch.tensor(grids, dtype=torch.long, device=device)
        blocks = [int(g[1] * g[2]) // merge**2 for g in grids]
        inputs = {"pixel_values": pixel_values, "image_grid_thw": grid_thw}
        return torch.cat(coords), torch.cat(frame_ids).to(device), blocks, inputs

    def _tower(self, inputs: dict) -> torch.Tensor:
        visual = self.net.vlm.model.visual
        with capture_inputs({"merger": visual.merger, "attn": visual.blocks[self.attention_block].attn}) as captured:
            features = pooled(self.net.vlm.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]))
        inputs["captured"] = captured
        return features

    # ---- pruning inside the tower (`evtp:at=vision-layer-L`, `sa2va_tower`) -------------------------

    def vision_layers(self) -> list[int]:
        """The full-attention blocks: after them every patch has seen its whole image."""
        visual = self.net.vlm.model.visual
        return sorted(int(i) for i in (getattr(visual.config, "fullatt_block_indexes", None) or []))

    def check_vision_layer(self, layer: int) -> None:
        depth = len(self.net.vlm.model.visual.blocks)
        full = self.vision_layers()
        where = f"select after a full-attention block: {', '.join(map(str, full))}" if full else "it has no full-attention block"
        if not 0 <= layer < depth:
            raise EvtpError(f"evtp:at=vision-layer-{layer}: the {self.name} vision tower has blocks 0..{depth - 1}; {where}")
        if layer not in full:
            raise EvtpError(f"evtp:at=vision-layer-{layer}: vision block {layer} of {self.name} attends within windows only; {where}")

    def _tower_pruned(self, state: Sa2VAState, layer: int, choose, timer):
        model = self.net.vlm.model
        grid = state.inputs["image_grid_thw"]
        window = qwen_window_index(model.visual, grid).to(grid.device)

        def run() -> torch.Tensor:
            return pooled(model.get_image_features(state.inputs["pixel_values"], grid))

        return qwen_in_tower(model.visual, window, layer, choose, timer, run)

    def _prompt(self, instruction_text: str, tokens_per_block: list[int]) -> str:
        return qwen_prompt(instruction_text, tokens_per_block)

    @property
    def attention_block(self) -> int:
        """The vision block vision methods read: the last full-attention one (the last block if none is)."""
        return max(self.vision_layers(), default=len(self.net.vlm.model.visual.blocks) - 1)

    def _vision_side(self, inputs: dict) -> VisionSide:
        visual = self.net.vlm.model.visual
        captured, grid = inputs["captured"], inputs["image_grid_thw"]
        attn = visual.blocks[self.attention_block].attn
        unit = visual.spatial_merge_size**2
        merger = visual.merger

        @once
        def order() -> torch.Tensor:  # window order -> the LLM's order, per merge unit
            return torch.argsort(qwen_window_index(visual, grid).to(grid.device))

        @once
        def qk() -> tuple[torch.Tensor, torch.Tensor]:  # [P, H, dh] after the vision RoPE, window order
            x = first_input(captured["attn"])
            n = x.shape[0]
            q, k, _ = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
            cos, sin = captured["attn"][1]["position_embeddings"]
            rotary = module_function(attn, "apply_rotary_pos_emb_vision")
            return rotary(q, k, cos, sin)

        @once
        def attention() -> torch.Tensor:
            q, k = qk()
            cu = captured["attn"][1]["cu_seqlens"].tolist()  # one image per span in a full-attention block
            parts = [mean_received(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1)) for a, b in zip(cu[:-1], cu[1:])]
            return torch.cat(parts).view(-1, unit).mean(1)[order()]

        @once
        def keys() -> torch.Tensor:
            k = qk()[1].float()
            return k.reshape(k.shape[0] // unit, unit, -1).mean(1)[order()]

        @once
        def rows() -> torch.Tensor:
            x = first_input(captured["merger"], "x")
            return merger.ln_q(x).view(-1, merger.hidden_size)[order()].float()

        @torch.inference_mode()
        def project(values: torch.Tensor) -> torch.Tensor:
            return merger.mlp(values.to(merger.mlp[0].weight.dtype))

        return VisionSide(rows, attention, keys, project, "mean-received", int(attn.num_heads))

    # ---- positions --------------------------------------------------------------------------------

    def _mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return (input_ids == self.image_token_id).to(torch.int32)

    def _positions(self, input_ids: torch.Tensor, inputs: dict) -> tuple[torch.Tensor, int]:
        rope_index = self.net.vlm.model.get_rope_index
        kwargs = {"image_grid_thw": inputs["image_grid_thw"], "attention_mask": torch.ones_like(input_ids)}
        if "mm_token_type_ids" in inspect.signature(rope_index).parameters:
            kwargs["mm_token_type_ids"] = self._mm_token_type_ids(input_ids)
        position_ids, deltas = rope_index(input_ids, **kwargs)
        return position_ids, int(input_ids.shape[1] + int(deltas.reshape(-1)[0]))

    def _generate_kwargs(self, state: Sa2VAState) -> dict:
        kwargs = {
            "input_ids": state.input_ids,
            "attention_mask": torch.ones_like(state.input_ids),
            "pixel_values": state.inputs["pixel_values"],
            "image_grid_thw": state.inputs["image_grid_thw"],
        }
        if "mm_token_type_ids" in inspect.signature(self.net.vlm.forward).parameters:
            kwargs["mm_token_type_ids"] = self._mm_token_type_ids(state.input_ids)
        self.net.vlm.model.rope_deltas = None  # computed afresh from this prompt
        return kwargs
