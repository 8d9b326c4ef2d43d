"""Explicit name mapping between a published Sa2VA checkpoint and evtp's native modules.

A Sa2VA checkpoint (the Hugging Face layout of ByteDance/Sa2VA-*) stores one state dict with:

- `grounding_encoder.sam2_model.*`: SAM2 (Hiera-L, SAM 2.0) with the original facebookresearch/sam2
  names, except that Sa2VA's `tools/convert_to_hf.py` renamed every `.gamma` to `.g_weight`;
- `text_hidden_fcs.{0,2}.*`: the [SEG] projection;
- the MLLM: `model.*` for Sa2VA-Qwen2.5-VL (a `Qwen2_5_VLForConditionalGeneration` saved under the
  wrapper's `model.` prefix, in either transformers layout: `model.model.visual.*` /
  `model.model.language_model.*` or the older `model.visual.*` / `model.model.layers.*`), or
  `vision_model.*` (InternViT), `mlp1.{0,1,3}.*` and `language_model.{model,lm_head}.*` for the
  InternVL-based Sa2VA models.

evtp's native container (see `Sa2VANet` in `sa2va_base.py`) holds `vlm.*` (the transformers VLM class),
`sam.*` (`Sam2VideoModel`) and `seg_proj.*`. The rules below were written from transformers' own
conversion scripts (`convert_sam2_video_to_hf.py`'s key table, `convert_internvl_weights_to_hf.py`'s
vision/projector tables and its qkv split) and checked against the module names of the installed
transformers classes; they are our own table, applied name by name, both ways.

Every source tensor must match a rule and every native tensor must be produced: anything else is an
error that lists the names (`MappingError`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch

_PLACEHOLDER = re.compile(r"\{([a-z])\}")


class MappingError(Exception):
    """Unmapped source tensors, native tensors left missing, or shape mismatches."""


def _compile(pattern: str) -> re.Pattern:
    prefix = pattern.endswith(".")
    parts, last = [], 0
    for m in _PLACEHOLDER.finditer(pattern):
        parts.append(re.escape(pattern[last : m.start()]))
        parts.append(f"(?P<{m.group(1)}>\\d+)")
        last = m.end()
    parts.append(re.escape(pattern[last:]))
    body = "".join(parts)
    return re.compile(f"^{body}(?P<rest>.*)$" if prefix else f"^{body}$")


def _fill(pattern: str, groups: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: groups[m.group(1)], pattern)


@dataclass(frozen=True)
class Rule:
    """`source` -> `target`. A pattern ending in "." is a prefix (the rest of the name carries over);
    otherwise it names one tensor. `{i}`-style placeholders match integers and carry over."""

    source: str
    target: str

    def forward(self, name: str) -> str | None:
        return self._apply(self.source, self.target, name)

    def backward(self, name: str) -> str | None:
        return self._apply(self.target, self.source, name)

    @staticmethod
    def _apply(src: str, dst: str, name: str) -> str | None:
        m = _compile(src).match(name)
        if m is None:
            return None
        groups = {k: v for k, v in m.groupdict().items() if k != "rest"}
        return _fill(dst, groups) + (m.group("rest") if src.endswith(".") else "")


@dataclass(frozen=True)
class Split:
    """One source tensor cut in equal parts along dim 0 (InternViT's fused qkv)."""

    source: str
    targets: tuple[str, ...]


@dataclass(frozen=True)
class Stack:
    """Source tensors `{k}` = 0..count-1 stacked row-wise into one target (SAM2's point embeddings)."""

    source: str
    target: str
    count: int


@dataclass(frozen=True)
class Copy:
    """One source tensor that two native parameters both hold (SAM2's positional gaussian matrix)."""

    source: str
    targets: tuple[str, ...]


@dataclass
class NameMap:
    rules: list[Rule] = field(default_factory=list)
    splits: list[Split] = field(default_factory=list)
    stacks: list[Stack] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)
    #: load-only renames applied to source names first (older layouts of the same checkpoint)
    aliases: list[Rule] = field(default_factory=list)
    #: native names allowed to be absent from a checkpoint (tied output embeddings), with their source
    tied: dict[str, str] = field(default_factory=dict)

    def __add__(self, other: "NameMap") -> "NameMap":
        return NameMap(
            self.rules + other.rules, self.splits + other.splits, self.stacks + other.stacks,
            self.copies + other.copies, self.aliases + other.aliases, {**self.tied, **other.tied},
        )

    def prefixed(self, source_prefix: str, target_prefix: str) -> "NameMap":
        def r(rule: Rule) -> Rule:
            return Rule(source_prefix + rule.source, target_prefix + rule.target)

        return NameMap(
            [r(x) for x in self.rules],
            [Split(source_prefix + s.source, tuple(target_prefix + t for t in s.targets)) for s in self.splits],
            [Stack(source_prefix + s.source, target_prefix + s.target, s.count) for s in self.stacks],
            [Copy(source_prefix + c.source, tuple(target_prefix + t for t in c.targets)) for c in self.copies],
            [Rule(source_prefix + a.source, source_prefix + a.target) for a in self.aliases],
            {target_prefix + k: target_prefix + v for k, v in self.tied.items()},
        )

    # ---- source (Sa2VA) -> native ---------------------------------------------------------------

    def canonical(self, name: str) -> str:
        for alias in self.aliases:
            out = alias.forward(name)
            if out is not None:
                return out
        return name

    def rename(self, name: str, backward: bool = False) -> str | None:
        """The first rule's renaming of `name` (Sa2VA -> native, or back), None if no rule matches."""
        for rule in self.rules:
            out = rule.backward(name) if backward else rule.forward(name)
            if out is not None:
                return out
        return None

    def to_native(self, source: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Convert a Sa2VA state dict. Returns (native tensors, source names no rule matched)."""
        native: dict[str, torch.Tensor] = {}
        unmapped: list[str] = []
        stacked: dict[str, dict[int, torch.Tensor]] = {}
        for raw_name, tensor in source.items():
            name = self.canonical(raw_name)
            if self._special(name, tensor, native, stacked):
                continue
            target = self.rename(name)
            if target is None:
                unmapped.append(raw_name)
            else:
                native[target] = tensor
        for stack in self.stacks:
            rows = stacked.get(stack.target)
            if rows is None:
                continue
            if sorted(rows) != list(range(stack.count)):
                missing = [_fill(stack.source, {"k": str(k)}) for k in range(stack.count) if k not in rows]
                raise MappingError(f"incomplete stacked tensor {stack.target}: missing {', '.join(missing)}")
            native[stack.target] = torch.cat([rows[k] for k in range(stack.count)], 0)
        return native, unmapped

    def _special(self, name, tensor, native, stacked) -> bool:
        for split in self.splits:
            m = _compile(split.source).match(name)
            if m is not None:
                rest = m.group("rest") if split.source.endswith(".") else ""
                groups = {k: v for k, v in m.groupdict().items() if k != "rest"}
                for target, part in zip(split.targets, tensor.chunk(len(split.targets), 0)):
                    native[_fill(target, groups) + rest] = part
                return True
        for copy in self.copies:
            m = _compile(copy.source).match(name)
            if m is not None:
                for target in copy.targets:
                    native[target] = tensor
                return True
        for stack in self.stacks:
            m = _compile(stack.source).match(name)
            if m is not None:
                stacked.setdefault(stack.target, {})[int(m.group("k"))] = tensor.reshape(1, -1) if tensor.dim() <= 1 else tensor
                return True
        return False

    # ---- native -> source (Sa2VA), for writing checkpoints and for the round-trip test -------------

    def to_source(self, native: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        done: set[str] = set()
        for split in self.splits:
            heads = [_compile(t if t.endswith(".") else t) for t in split.targets]
            for name in native:
                m = heads[0].match(name)
                if m is None:
                    continue
                rest = m.group("rest") if split.targets[0].endswith(".") else ""
                groups = {k: v for k, v in m.groupdict().items() if k != "rest"}
                names = [_fill(t, groups) + rest for t in split.targets]
                out[_fill(split.source, groups) + rest] = torch.cat([native[n] for n in names], 0)
                done.update(names)
        for copy in self.copies:
            if copy.targets[0] in native:
                out[copy.source] = native[copy.targets[0]]
                done.update(t for t in copy.targets if t in native)
        for stack in self.stacks:
            if stack.target in native:
                for k, row in enumerate(native[stack.target].chunk(stack.count, 0)):
                    out[_fill(stack.source, {"k": str(k)})] = row.clone()
                done.add(stack.target)
        for name, tensor in native.items():
            if name in done:
                continue
            source = self.rename(name, backward=True)
            if source is None:
                raise MappingError(f"no rule maps native tensor {name} back to a Sa2VA name")
            out[source] = tensor
        return out


def check_complete(native: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], unmapped: Iterable[str], tied: Mapping[str, str]) -> None:
    """Raise MappingError listing unmapped source names, missing native names and shape mismatches."""
    unmapped = sorted(unmapped)
    unexpected = sorted(set(native) - set(expected))
    missing = sorted(n for n in set(expected) - set(native) if not (n in tied and tied[n] in native))
    shapes = sorted(
        f"{n}: checkpoint {tuple(native[n].shape)} vs model {tuple(expected[n].shape)}"
        for n in set(native) & set(expected)
        if tuple(native[n].shape) != tuple(expected[n].shape)
    )
    problems = []
    if unmapped:
        problems.append(f"{len(unmapped)} checkpoint tensor(s) match no mapping rule: {', '.join(unmapped[:20])}" + (" ..." if len(unmapped) > 20 else ""))
    if unexpected:
        problems.append(f"{len(unexpected)} mapped tensor(s) have no place in the model: {', '.join(unexpected[:20])}" + (" ..." if len(unexpected) > 20 else ""))
    if missing:
        problems.append(f"{len(missing)} model tensor(s) missing from the checkpoint: {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else ""))
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:10])}" + (" ..." if len(shapes) > 10 else ""))
    if problems:
        raise MappingError("; ".join(problems))


# --------------------------------------------------------------------------------------------------
# the tables

SAM2_PREFIX = "grounding_encoder.sam2_model."


def sam2_map(mask_downsampler_layers: int = 4) -> NameMap:
    """Original SAM2 (facebookresearch/sam2) names -> transformers `Sam2VideoModel` names."""
    rules = [
        Rule("image_encoder.trunk.pos_embed", "vision_encoder.backbone.pos_embed"),
        Rule("image_encoder.trunk.pos_embed_window", "vision_encoder.backbone.pos_embed_window"),
        Rule("image_encoder.trunk.patch_embed.proj.", "vision_encoder.backbone.patch_embed.projection."),
        Rule("image_encoder.trunk.blocks.{i}.norm1.", "vision_encoder.backbone.blocks.{i}.layer_norm1."),
        Rule("image_encoder.trunk.blocks.{i}.norm2.", "vision_encoder.backbone.blocks.{i}.layer_norm2."),
        Rule("image_encoder.trunk.blocks.{i}.mlp.layers.0.", "vision_encoder.backbone.blocks.{i}.mlp.proj_in."),
        Rule("image_encoder.trunk.blocks.{i}.mlp.layers.1.", "vision_encoder.backbone.blocks.{i}.mlp.proj_out."),
        Rule("image_encoder.trunk.blocks.{i}.attn.", "vision_encoder.backbone.blocks.{i}.attn."),
        Rule("image_encoder.trunk.blocks.{i}.proj.", "vision_encoder.backbone.blocks.{i}.proj."),
        Rule("image_encoder.neck.convs.{i}.conv.", "vision_encoder.neck.convs.{i}."),
        Rule("sam_prompt_encoder.not_a_point_embed.", "prompt_encoder.not_a_point_embed."),
        Rule("sam_prompt_encoder.no_mask_embed.", "prompt_encoder.no_mask_embed."),
        Rule("sam_prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
        Rule("sam_prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
        Rule("sam_prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
        Rule("sam_prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
        Rule("sam_prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    ]
    for attention in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token"):
        rules.append(Rule(f"sam_mask_decoder.transformer.layers.{{i}}.{attention}.out_proj.", f"mask_decoder.transformer.layers.{{i}}.{attention}.o_proj."))
    three_layer_mlps = ("output_hypernetworks_mlps.{i}.", "iou_prediction_head.", "pred_obj_score_head.")
    for mlp in three_layer_mlps:
        rules += [
            Rule(f"sam_mask_decoder.{mlp}layers.0.", f"mask_decoder.{mlp}proj_in."),
            Rule(f"sam_mask_decoder.{mlp}layers.1.", f"mask_decoder.{mlp}layers.0."),
            Rule(f"sam_mask_decoder.{mlp}layers.2.", f"mask_decoder.{mlp}proj_out."),
        ]
    rules += [
        Rule("sam_mask_decoder.transformer.layers.{i}.norm{j}.", "mask_decoder.transformer.layers.{i}.layer_norm{j}."),
        Rule("sam_mask_decoder.transformer.layers.{i}.mlp.layers.0.", "mask_decoder.transformer.layers.{i}.mlp.proj_in."),
        Rule("sam_mask_decoder.transformer.layers.{i}.mlp.layers.1.", "mask_decoder.transformer.layers.{i}.mlp.proj_out."),
        Rule("sam_mask_decoder.transformer.final_attn_token_to_image.out_proj.", "mask_decoder.transformer.final_attn_token_to_image.o_proj."),
        Rule("sam_mask_decoder.transformer.norm_final_attn.", "mask_decoder.transformer.layer_norm_final_attn."),
        Rule("sam_mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
        Rule("sam_mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
        Rule("sam_mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
        Rule("sam_mask_decoder.", "mask_decoder."),
        Rule("memory_attention.layers.{i}.self_attn.out_proj.", "memory_attention.layers.{i}.self_attn.o_proj."),
        Rule("memory_attention.layers.{i}.cross_attn_image.out_proj.", "memory_attention.layers.{i}.cross_attn_image.o_proj."),
        Rule("memory_attention.layers.{i}.norm{j}.", "memory_attention.layers.{i}.layer_norm{j}."),
        Rule("memory_attention.norm.", "memory_attention.layer_norm."),
        Rule("memory_attention.", "memory_attention."),
    ]
    for k in range(mask_downsampler_layers):
        rules += [
            Rule(f"memory_encoder.mask_downsampler.encoder.{3 * k}.", f"memory_encoder.mask_downsampler.layers.{k}.conv."),
            Rule(f"memory_encoder.mask_downsampler.encoder.{3 * k + 1}.", f"memory_encoder.mask_downsampler.layers.{k}.layer_norm."),
        ]
    rules += [
        Rule(f"memory_encoder.mask_downsampler.encoder.{3 * mask_downsampler_layers}.", "memory_encoder.mask_downsampler.final_conv."),
        Rule("memory_encoder.pix_feat_proj.", "memory_encoder.feature_projection."),
        Rule("memory_encoder.fuser.layers.{i}.dwconv.", "memory_encoder.memory_fuser.layers.{i}.depthwise_conv."),
        Rule("memory_encoder.fuser.layers.{i}.norm.", "memory_encoder.memory_fuser.layers.{i}.layer_norm."),
        Rule("memory_encoder.fuser.layers.{i}.pwconv1.", "memory_encoder.memory_fuser.layers.{i}.pointwise_conv1."),
        Rule("memory_encoder.fuser.layers.{i}.pwconv2.", "memory_encoder.memory_fuser.layers.{i}.pointwise_conv2."),
        Rule("memory_encoder.fuser.layers.{i}.g_weight", "memory_encoder.memory_fuser.layers.{i}.scale"),
        Rule("memory_encoder.out_proj.", "memory_encoder.projection."),
        Rule("maskmem_tpos_enc", "memory_temporal_positional_encoding"),
        Rule("no_mem_embed", "no_memory_embedding"),
        Rule("no_mem_pos_enc", "no_memory_positional_encoding"),
        Rule("no_obj_ptr", "no_object_pointer"),
        Rule("obj_ptr_proj.layers.0.", "object_pointer_proj.proj_in."),
        Rule("obj_ptr_proj.layers.1.", "object_pointer_proj.layers.0."),
        Rule("obj_ptr_proj.layers.2.", "object_pointer_proj.proj_out."),
        Rule("obj_ptr_tpos_proj.", "temporal_positional_encoding_projection_layer."),
        Rule("no_obj_embed_spatial", "occlusion_spatial_embedding_parameter"),
        Rule("mask_downsample.", "mask_downsample."),
    ]
    return NameMap(
        rules=rules,
        stacks=[Stack("sam_prompt_encoder.point_embeddings.{k}.weight", "prompt_encoder.point_embed.weight", 4)],
        copies=[Copy("sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", ("prompt_encoder.shared_embedding.positional_embedding", "shared_image_embedding.positional_embedding"))],
        aliases=[Rule("memory_encoder.fuser.layers.{i}.gamma", "memory_encoder.fuser.layers.{i}.g_weight")],
    )


def grounding_map(mask_downsampler_layers: int = 4) -> NameMap:
    """SAM2 and the [SEG] projection, as both Sa2VA families store them."""
    sam = sam2_map(mask_downsampler_layers).prefixed(SAM2_PREFIX, "sam.")
    return sam + NameMap(rules=[Rule("text_hidden_fcs.", "seg_proj.")])


def qwen_map(tied_lm_head: bool = False) -> NameMap:
    """Sa2VA-Qwen2.5-VL's `model.*` (a Qwen2_5_VLForConditionalGeneration) -> `vlm.*`."""
    return NameMap(
        rules=[
            Rule("model.model.visual.", "vlm.model.visual."),
            Rule("model.model.language_model.", "vlm.model.language_model."),
            Rule("model.lm_head.", "vlm.lm_head."),
        ],
        aliases=[
            Rule("model.visual.", "model.model.visual."),
            Rule("model.model.layers.", "model.model.language_model.layers."),
            Rule("model.model.embed_tokens.", "model.model.language_model.embed_tokens."),
            Rule("model.model.norm.", "model.model.language_model.norm."),
        ],
        tied={"vlm.lm_head.weight": "vlm.model.language_model.embed_tokens.weight"} if tied_lm_head else {},
    )


def internvl_map(tied_lm_head: bool = False) -> NameMap:
    """Sa2VA-InternVL's `vision_model.*`, `mlp1.*`, `language_model.*` -> `vlm.*` (InternVLForConditionalGeneration)."""
    tower = "vlm.model.vision_tower."
    layer = "vision_model.encoder.layers.{i}."
    native_layer = tower + "encoder.layer.{i}."
    return NameMap(
        rules=[
            Rule("vision_model.embeddings.class_embedding", tower + "embeddings.cls_token"),
            Rule("vision_model.embeddings.position_embedding", tower + "embeddings.position_embeddings"),
            Rule("vision_model.embeddings.patch_embedding.", tower + "embeddings.patch_embeddings.projection."),
            Rule(layer + "attn.proj.", native_layer + "attention.projection_layer."),
            Rule(layer + "attn.q_norm.", native_layer + "attention.q_norm."),
            Rule(layer + "attn.k_norm.", native_layer + "attention.k_norm."),
            Rule(layer + "ls1", native_layer + "lambda_1"),
            Rule(layer + "ls2", native_layer + "lambda_2"),
            Rule(layer + "mlp.", native_layer + "mlp."),
            Rule(layer + "norm1.", native_layer + "layernorm_before."),
            Rule(layer + "norm2.", native_layer + "layernorm_after."),
            Rule("mlp1.0.", "vlm.model.multi_modal_projector.layer_norm."),
            Rule("mlp1.1.", "vlm.model.multi_modal_projector.linear_1."),
            Rule("mlp1.3.", "vlm.model.multi_modal_projector.linear_2."),
            Rule("language_model.model.", "vlm.model.language_model."),
            Rule("language_model.lm_head.", "vlm.lm_head."),
        ],
        splits=[Split(layer + "attn.qkv.", tuple(native_layer + f"attention.{p}_proj." for p in "qkv"))],
        tied={"vlm.lm_head.weight": "vlm.model.language_model.embed_tokens.weight"} if tied_lm_head else {},
    )
