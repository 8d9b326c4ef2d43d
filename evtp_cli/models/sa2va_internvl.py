"""sa2va-internvl: InternVL-based Sa2VA on transformers' `InternVLForConditionalGeneration` + `Sam2VideoModel`.

Follows the `modeling_sa2va_chat.py` shipped with ByteDance/Sa2VA-1B/4B and Sa2VA-InternVL3-* checkpoints:
an image is tiled (`dynamic_preprocess`: 1..12 tiles of 448 px chosen by aspect ratio, plus a 448 px
thumbnail when there is more than one tile), a video frame is one 448 px tile; each tile gives 256 tokens
after the vision tower, the 0.5 pixel shuffle and `mlp1` (`InternVLModel.get_image_features` with
`vision_feature_layer=-1`, CLS dropped); the prompt is the `qwen_chat` template with
`<img><IMG_CONTEXT>*n</img>` blocks in place of `<image>`. Weights and the InternViT qkv split follow
transformers' `convert_internvl_weights_to_hf.py`.

Positions: ordinary 1-D RoPE. Kept tokens keep their index in the unpruned prompt; the first generated
token takes position L (the unpruned length). With flash_attention_2, ids with gaps would be read as
packed sequences, so the prefill then passes explicit `cu_seq_lens_*` for the one sequence.

Coordinates for pruners: a tile's 16x16 token grid (row-major after the pixel shuffle) is placed on the
tile's cell of the image; thumbnail tokens cover the whole image (`extras["thumbnail"]` marks them); video
frames get t = k / (K - 1).

Vision methods (`_vision_side`): the rows of `multi_modal_projector`'s input (pixel-shuffled, 4 patches
side by side) are one per visual token. InternViT has a [CLS] token (dropped before the pixel shuffle):
`attention` is the [CLS] query's attention to each patch, averaged over heads, in the vision layer whose
output the features are (`vision_feature_layer`, the last one in every Sa2VA), recomputed from that
layer's q/k; `keys` are that layer's patch keys (heads side by side). Both are pixel-shuffled like the
features and averaged over each token's 4 patches.

Tiny preset: 4 decoder layers (so FastV's and DART's K = 2 has layers on both sides).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from evtp_cli.errors import EvtpError, PrunerNotApplicable
from evtp_cli.models.hooks import PrunedPrefill
from evtp_cli.models.sa2va_base import (
    OUT_OF_SCOPE,
    Sa2VABackend,
    Sa2VAOptions,
    Sa2VAState,
    pooled,
)
from evtp_cli.models.sa2va_common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    frame_time,
    grid_yx,
    internvl_prompt,
    internvl_tiles,
    normalise,
    resize_rgb,
    token_id,
    with_time,
)
from evtp_cli.models.sa2va_inner import (
    VisionSide,
    capture_inputs,
    cls_received,
    first_input,
    once,
)
from evtp_cli.models.sa2va_tower import internvl_in_tower, shuffle_groups
from evtp_cli.models.sa2va_weights import NameMap, internvl_map

# InternViT-300M-448px(-V2_5), the vision tower of Sa2VA-1B/4B and Sa2VA-InternVL3-2B/8B
_VIT_300M = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, attention_bias=True,
                 use_qk_norm=False, norm_type="layer_norm", layer_norm_eps=1e-6, image_size=[448, 448], patch_size=[14, 14],
                 hidden_act="gelu", use_absolute_position_embeddings=True)
# language models: Qwen2.5-0.5B (Sa2VA-1B), Qwen2.5-3B (Sa2VA-4B), Qwen2.5-7B (Sa2VA-InternVL3-8B)
_LLM = {
    "1b-random": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2),
    "4b-random": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2),
    "8b-random": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4),
}
_VISION_KEYS = {
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act", "layer_norm_eps",
    "image_size", "patch_size", "num_channels", "norm_type", "initializer_range",
}
_LLM_DROP = {"_name_or_path", "auto_map", "architectures", "transformers_version", "torch_dtype", "dtype", "use_bfloat16",
             "attn_implementation", "_attn_implementation_autoset", "model_type"}


class Sa2VAInternVL(Sa2VABackend):
    """Sa2VA-1B/4B and Sa2VA-InternVL3-2B/8B/14B (InternVL + SAM2) with pre-LLM, vision, in-tower and in-LLM pruning hooks."""

    name = "sa2va-internvl"
    family = "internvl"
    image_token = "<IMG_CONTEXT>"

    @dataclass
    class Config(Sa2VAOptions):
        preset: Literal["", "tiny-random", "1b-random", "4b-random", "8b-random"] = ""
        max_tiles: int = 12
        thumbnail: bool = True

        PRESETS: ClassVar[tuple[str, ...]] = ("tiny-random", "1b-random", "4b-random", "8b-random")

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.max_tiles < 1:
                raise ValueError(f"max_tiles must be >= 1, got {self.max_tiles}")

    def __init__(self, config: "Sa2VAInternVL.Config"):
        super().__init__(config)
        vlm_config = self.net.vlm.config
        vision = vlm_config.vision_config
        size = vision.image_size
        self.tile = int(size[0] if isinstance(size, (list, tuple)) else size)
        patch = vision.patch_size
        patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
        self.side = int(self.tile // patch * vlm_config.downsample_ratio)  # tokens per tile side (16 for 448/14)

    def _vlm_class(self):
        from transformers import InternVLForConditionalGeneration

        return InternVLForConditionalGeneration

    def _random_vlm_config(self, preset: str, tokenizer) -> tuple[Any, str]:
        from transformers import InternVLConfig

        if preset == "tiny-random":
            vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=[28, 28],
                          patch_size=[7, 7], attention_bias=True)
            text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        vocab_size=len(tokenizer), max_position_embeddings=4096)
            sam = "tiny"
        else:
            vision = dict(_VIT_300M)
            text = dict(_LLM[preset], vocab_size=151674, max_position_embeddings=32768, rope_theta=1000000.0)
            sam = "hiera-l"
        text.update(model_type="qwen2", tie_word_embeddings=False, bos_token_id=None, eos_token_id=token_id(tokenizer, "<|im_end|>"))
        config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=token_id(tokenizer, "<IMG_CONTEXT>"),
                                downsample_ratio=0.5, vision_feature_layer=-1, vision_feature_select_strategy="default",
                                tie_word_embeddings=False)
        return config, sam

    def _checkpoint_vlm_config(self, raw: dict, tokenizer, path: Path) -> Any:
        from transformers import InternVLConfig, Qwen2Config

        if "llm_config" not in raw:
            if "spatial_merge_size" in raw.get("vision_config", {}):
                raise EvtpError(f"{str(path)!r} is a Sa2VA-Qwen2.5-VL checkpoint: load it with --model sa2va-qwen:path=...")
            raise EvtpError(f"{str(path)!r} does not hold an InternVL-based Sa2VA config (no llm_config). {OUT_OF_SCOPE}")
        llm = dict(raw["llm_config"])
        arch = (llm.get("architectures") or ["?"])[0]
        if arch != "Qwen2ForCausalLM":
            raise EvtpError(f"{str(path)!r} has a {arch} language model. {OUT_OF_SCOPE}")
        template = str(raw.get("template", "qwen_chat")).replace("-", "_")
        if any(name in template for name in ("internlm", "phi3", "vicuna", "llama")):
            raise EvtpError(f"{str(path)!r} uses the {template!r} chat template; the Qwen-based Sa2VA models use ChatML ('qwen_chat'). {OUT_OF_SCOPE}")
        if raw.get("ps_version", "v2") != "v2":
            raise EvtpError(f"{str(path)!r} uses pixel shuffle {raw.get('ps_version')!r}; transformers' InternVL implements 'v2'")
        text = Qwen2Config(**{k: v for k, v in llm.items() if k not in _LLM_DROP})
        vis = raw.get("vision_config", {})
        vision = {k: v for k, v in vis.items() if k in _VISION_KEYS}
        vision.update(attention_bias=bool(vis.get("qkv_bias", True)), use_qk_norm=bool(vis.get("qk_normalization", False)),
                      use_absolute_position_embeddings=True)
        size = raw.get("force_image_size") or vis.get("image_size", 448)
        vision["image_size"] = [size, size] if isinstance(size, int) else list(size)
        patch = vis.get("patch_size", 14)
        vision["patch_size"] = [patch, patch] if isinstance(patch, int) else list(patch)
        return InternVLConfig(
            vision_config=vision, text_config=text, image_token_id=token_id(tokenizer, "<IMG_CONTEXT>"),
            downsample_ratio=float(raw.get("downsample_ratio", 0.5)), vision_feature_layer=int(raw.get("select_layer", -1)),
            vision_feature_select_strategy="default", tie_word_embeddings=bool(llm.get("tie_word_embeddings", False)),
        )

    def _tied(self, vlm_config) -> bool:
        return bool(getattr(vlm_config, "tie_word_embeddings", False) or getattr(vlm_config.text_config, "tie_word_embeddings", False))

    def _name_map(self, vlm_config) -> NameMap:
        return internvl_map(tied_lm_head=self._tied(vlm_config))

    def _sa2va_config(self, vlm_config) -> dict:
        text = vlm_config.text_config.to_dict()
        text["architectures"] = ["Qwen2ForCausalLM"]
        v = vlm_config.vision_config
        size = v.image_size[0] if isinstance(v.image_size, (list, tuple)) else v.image_size
        patch = v.patch_size[0] if isinstance(v.patch_size, (list, tuple)) else v.patch_size
        vision = {
            "architectures": ["InternVisionModel"], "hidden_size": v.hidden_size, "num_hidden_layers": v.num_hidden_layers,
            "num_attention_heads": v.num_attention_heads, "intermediate_size": v.intermediate_size, "hidden_act": v.hidden_act,
            "layer_norm_eps": v.layer_norm_eps, "image_size": size, "patch_size": patch, "norm_type": v.norm_type,
            "qkv_bias": v.attention_bias, "qk_normalization": v.use_qk_norm,
        }
        return {
            "architectures": ["Sa2VAChatModel"], "model_type": "sa2va_chat", "llm_config": text, "vision_config": vision,
            "template": "qwen_chat", "downsample_ratio": vlm_config.downsample_ratio, "select_layer": vlm_config.vision_feature_layer,
            "ps_version": "v2", "force_image_size": size,
        }

    # ---- vision ---------------------------------------------------------------------------------

    def _preprocess(self, frames: list[np.ndarray], task: str):
        c, n = self.config, self.side
        tiles, coords, frame_ids, thumbs, blocks = [], [], [], [], []
        if task == "video":
            for k, frame in enumerate(frames):
                tiles.append(resize_rgb(frame, self.tile, self.tile))
                coords.append(with_time(grid_yx(n, n), frame_time(k, len(frames))))
                frame_ids.append(torch.full((n * n,), k, dtype=torch.long))
                thumbs.append(torch.zeros(n * n, dtype=torch.bool))
                blocks.append(n * n)
        else:
            pieces, (rows, cols), with_thumb = internvl_tiles(frames[0], self.tile, 1, c.max_tiles, c.thumbnail)
            tiles.extend(pieces)
            for r in range(rows):
                for q in range(cols):
                    coords.append(with_time(grid_yx(n, n, r / rows, q / cols, 1 / rows, 1 / cols), 0.0))
                    thumbs.append(torch.zeros(n * n, dtype=torch.bool))
            if with_thumb:
                coords.append(with_time(grid_yx(n, n), 0.0))
                thumbs.append(torch.ones(n * n, dtype=torch.bool))
            frame_ids.append(torch.zeros(len(pieces) * n * n, dtype=torch.long))
            blocks.append(len(pieces) * n * n)
        device = self.device
        pixel_values = normalise(np.stack(tiles), IMAGENET_MEAN, IMAGENET_STD).to(device=device, dtype=self.dtype)
        inputs = {"pixel_values": pixel_values, "thumbnail": torch.cat(thumbs).to(device)}
        return torch.cat(coords), torch.cat(frame_ids).to(device), blocks, inputs

    def _tower(self, inputs: dict) -> torch.Tensor:
        vlm_config = self.net.vlm.config
        model = self.net.vlm.model
        watch = {"projector": model.multi_modal_projector}
        if self.attention_layer is not None:
            watch["attn"] = model.vision_tower.encoder.layer[self.attention_layer].attention
        with capture_inputs(watch) as captured:
            out = model.get_image_features(
                pixel_values=inputs["pixel_values"],
                vision_feature_layer=vlm_config.vision_feature_layer,
                vision_feature_select_strategy=vlm_config.vision_feature_select_strategy,
            )
        inputs["captured"] = captured
        return pooled(out)

    # ---- pruning inside the tower (`evtp:at=vision-layer-L`, `sa2va_tower`) -------------------------

    def vision_layers(self) -> list[int]:
        """Every InternViT layer up to the one whose output the features are."""
        last = self.attention_layer
        return [] if last is None else list(range(last + 1))

    def check_vision_layer(self, layer: int) -> None:
        depth = int(self.net.vlm.config.vision_config.num_hidden_layers)
        last = self.attention_layer
        if last is None:
            raise EvtpError(f"evtp:at=vision-layer-{layer}: {self.name} takes its features from the patch embeddings (vision_feature_layer 0), before any layer")
        if not 0 <= layer < depth:
            raise EvtpError(f"evtp:at=vision-layer-{layer}: the {self.name} vision tower has layers 0..{depth - 1}; select after one of 0..{last}")
        if layer > last:
            raise EvtpError(f"evtp:at=vision-layer-{layer}: {self.name} takes its features from layer {last}; select after one of 0..{last}")

    def _tower_pruned(self, state: Sa2VAState, layer: int, choose, timer):
        model = self.net.vlm.model
        config = self.net.vlm.config
        final_norm = model.vision_tower.layernorm if int(config.vision_feature_layer) == -1 else torch.nn.Identity()
        return internvl_in_tower(model, state.inputs["pixel_values"], layer, int(self.attention_layer), final_norm,
                                 float(config.downsample_ratio), choose, timer)

    def _prompt(self, instruction_text: str, tokens_per_block: list[int]) -> str:
        return internvl_prompt(instruction_text, tokens_per_block)

    @property
    def attention_layer(self) -> int | None:
        """The InternViT layer whose output the features are (`vision_feature_layer`; hidden state i is layer i-1's output)."""
        depth = int(self.net.vlm.config.vision_config.num_hidden_layers)
        layer = int(self.net.vlm.config.vision_feature_layer) % (depth + 1) - 1
        return layer if layer >= 0 else None

    def _vision_side(self, inputs: dict) -> VisionSide:
        model = self.net.vlm.model
        captured = inputs["captured"]
        ratio = float(self.net.vlm.config.downsample_ratio)
        projector = model.multi_modal_projector

        def shuffle(values: torch.Tensor) -> torch.Tensor:
            return shuffle_groups(values, model.pixel_shuffle, ratio)

        @once
        def qk() -> tuple[torch.Tensor, torch.Tensor]:  # [tiles, H, 1 + P, dh], [CLS] first
            if "attn" not in captured:
                raise PrunerNotApplicable("InternVL features taken from the patch embeddings have no vision attention to read")
            attn = model.vision_tower.encoder.layer[self.attention_layer].attention
            x = first_input(captured["attn"])
            b, n, _ = x.shape
            q = attn.q_norm(attn.q_proj(x)).reshape(b, n, attn.num_heads, -1).transpose(1, 2)
            k = attn.k_norm(attn.k_proj(x)).reshape(b, n, attn.num_heads, -1).transpose(1, 2)
            return q, k

        @once
        def attention() -> torch.Tensor:
            return shuffle(cls_received(*qk())[..., None]).mean(dim=(1, 2))

        @once
        def keys() -> torch.Tensor:
            k = qk()[1][:, :, 1:].float()
            return shuffle(k.permute(0, 2, 1, 3).flatten(2)).mean(1)

        @once
        def rows() -> torch.Tensor:
            x = first_input(captured["projector"], "image_features")
            return x.reshape(-1, x.shape[-1]).float()

        @torch.inference_mode()
        def project(values: torch.Tensor) -> torch.Tensor:
            return projector(values.to(projector.linear_1.weight.dtype))

        heads = int(self.net.vlm.config.vision_config.num_attention_heads)
        return VisionSide(rows, attention, keys, project, "cls", heads)

    def encode(self, sample, timer):
        tokens = super().encode(sample, timer)
        tokens.context.extras["thumbnail"] = tokens.state.inputs["thumbnail"]
        return tokens

    # ---- positions --------------------------------------------------------------------------------

    def _positions(self, input_ids: torch.Tensor, inputs: dict) -> tuple[torch.Tensor, int]:
        length = int(input_ids.shape[1])
        return torch.arange(length, device=input_ids.device)[None], length

    def _lm_kwargs(self, pruned: PrunedPrefill | None) -> dict:
        if pruned is None or self.config.attn != "flash_attention_2":
            return {}
        cu = torch.tensor([0, pruned.length], dtype=torch.int32, device=pruned.inputs_embeds.device)
        return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": pruned.length, "max_length_k": pruned.length}

    def _generate_kwargs(self, state: Sa2VAState) -> dict:
        return {
            "input_ids": state.input_ids,
            "attention_mask": torch.ones_like(state.input_ids),
            "pixel_values": state.inputs["pixel_values"],
        }
