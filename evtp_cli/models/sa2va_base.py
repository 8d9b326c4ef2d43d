"""What the two Sa2VA-style backends share: options, model building and loading, the hooked LLM loop, masks.

The pipeline of one sample (batch size 1), following Sa2VA's `predict_forward`:

    encode  ("vision")  key frames -> the MLLM's vision tower -> visual tokens as the LLM receives them,
                        with (t, y, x) on the model's own grid; prompt ids; unpruned position ids
    decode  ("prefill") embed the prompt, scatter the visual tokens in, apply the pruning hook
                        (`hooks.prune_prefill`), run the LLM once with a fresh KV cache
            ("decode")  greedy decoding with the cache until an end token; the last hidden state of every
                        fed [SEG] token is kept (the first generated token's share is also timed, as
                        "decode_first": the argmax of the prefill logits, for `ttft_ms`)
            ("mask")    [SEG] states -> `SegProjection` -> SAM2 prompts on the key frames -> propagation to
                        every frame -> masks, OR-ed over [SEG] tokens (as Sa2VA's RefCOCO evaluation does);
                        no [SEG] -> empty masks, as in the official evaluation

Methods acting inside the model (`sa2va_inner.py`): a "vision" plan (VisionZip, FasterVLM, VisPruner,
PruMerge+, ToMe) runs on the vision-space rows before the projector, inside the "select" stage, and its
projected result continues as a pre-LLM plan; an "llm" plan (FastV, SparseVLM, DART) runs inside the
prefill through forward pre-hooks on the decoder layers, which stay in place for the decoding.

A vision method that selects inside the tower (`evtp:at=vision-layer-L`, `sa2va_tower.py`) runs the tower
again with the selection after block L (the encode's full-tower time is taken back from "vision") and
continues as a pre-LLM plan. `decode=static` decodes on a static KV cache, each step a CUDA graph on CUDA
(`sa2va_static.py`); `decode=dynamic` (default) grows transformers' DynamicCache.

`pipeline=generate` instead runs transformers' own `generate` on the full inputs (pixel values and all),
the way Sa2VA's remote code does, and takes the [SEG] states as its `get_seg_hidden_states` does; it is
the unhooked reference the equivalence tests compare against and cannot prune.

Random presets get a fixed answer head: the token embeddings carry a constant direction and [SEG] a
marker direction, and the output rows of [SEG] and `<|im_end|>` read them, so a random model answers
"[SEG]" then ends (every sample exercises the mask path and decoding has a fixed length), and SAM2's
object-score head is biased so that masks are not all suppressed. Everything else stays random.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from evtp_cli.api import (
    Prediction,
    PruneContext,
    PrunePlan,
    Sample,
    VisionState,
    VisualTokens,
    key_frame_indices,
)
from evtp_cli.errors import EvtpError, PrunerNotApplicable
from evtp_cli.metrics.timing import StageTimer, TimedSpan
from evtp_cli.models.base import IVSModel
from evtp_cli.models.hooks import PrunedPrefill, decode_position_ids, prune_prefill
from evtp_cli.models.sa2va_common import (
    SEG_TOKEN,
    SegProjection,
    build_word_tokenizer,
    instruction,
    is_question,
    stop_token_ids,
    to_rgb_array,
    token_id,
)
from evtp_cli.models.sa2va_inner import LLMPruneHooks, VisionSide
from evtp_cli.models.sa2va_sam2 import (
    Sa2VAMaskDecoder,
    mask_downsampler_layers,
    sam2_config,
)
from evtp_cli.models.sa2va_static import StaticDecoder, StaticDecoders, check_static
from evtp_cli.models.sa2va_weights import MappingError, NameMap, check_complete

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CHECKPOINT_LAYOUT = (
    "a Sa2VA checkpoint folder in its published Hugging Face layout: config.json, model.safetensors or "
    "model-*-of-*.safetensors (+ model.safetensors.index.json), and the tokenizer files (tokenizer.json, "
    "tokenizer_config.json)"
)
OUT_OF_SCOPE = (
    "Sa2VA variants whose language model has no transformers class (InternLM2.5 in Sa2VA-8B and Sa2VA-26B) "
    "or is not Qwen2-based are out of scope for the native pipeline; supported: Sa2VA-1B, Sa2VA-4B, "
    "Sa2VA-InternVL3-2B/8B/14B (sa2va-internvl) and Sa2VA-Qwen2_5-VL-3B/7B (sa2va-qwen)"
)


def frame_policy(value: str) -> str:
    """`5` -> `first-5` (Sa2VA shows its LLM the first 5 frames); other policies as `key_frame_indices` reads them."""
    value = str(value).strip()
    policy = f"first-{value}" if value.isdigit() else value
    key_frame_indices(8, policy)  # validates
    return policy


@dataclass
class Sa2VAOptions:
    """Keys shared by `sa2va-qwen` and `sa2va-internvl` (each adds its presets)."""

    path: str = ""
    preset: str = ""
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "cpu"
    attn: Literal["sdpa", "flash_attention_2", "eager"] = "sdpa"
    frames: str = "5"
    positions: Literal["original", "renumber"] = "original"
    max_new_tokens: int = 64
    pipeline: Literal["hooked", "generate"] = "hooked"
    decode: Literal["dynamic", "static"] = "dynamic"
    seed: int = 0

    PRESETS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if bool(self.path) == bool(self.preset):
            raise ValueError(f"give exactly one of path=<Sa2VA checkpoint folder> or preset=<{'|'.join(self.PRESETS)}>")
        if self.preset and self.preset not in self.PRESETS:
            raise ValueError(f"preset {self.preset!r} is not one of {', '.join(self.PRESETS)}")
        self.frames = frame_policy(self.frames)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


class Sa2VANet(nn.Module):
    """The native modules a Sa2VA checkpoint fills: `vlm` (transformers VLM), `sam` (Sam2VideoModel), `seg_proj`."""

    def __init__(self, vlm: nn.Module, sam: nn.Module, seg_proj: nn.Module):
        super().__init__()
        self.vlm = vlm
        self.sam = sam
        self.seg_proj = seg_proj


@dataclass
class Sa2VAState:
    """Backend-private part of `VisualTokens` (batch size 1)."""

    frames: list[np.ndarray]
    keys: list[int]
    input_ids: torch.Tensor  # [1, L]
    visual_index: torch.Tensor  # [N] sequence positions of the visual tokens
    features: torch.Tensor  # [N, d] in the LLM's dtype
    position_ids: torch.Tensor  # [1, L] or [3, 1, L] for the unpruned sequence
    next_position: int  # the first generated token's position in the unpruned sequence
    inputs: dict[str, Any] = field(default_factory=dict)  # family-specific (pixel values, grids)
    coords: torch.Tensor | None = None  # [N, 3] of the visual tokens (for in-LLM methods)
    vision: VisionSide | None = None  # what vision methods read (rows before the projector, attention, keys)
    tower: TimedSpan | None = None  # the tower's share of the "vision" stage (see `vision_layer_plan`)


@dataclass
class Prefill:
    pruned: PrunedPrefill
    cache: Any
    hidden: torch.Tensor  # [1, L', d] last hidden states
    logits: torch.Tensor  # [1, 1, V] for the last position (float32)
    hooks: LLMPruneHooks | None = None  # an in-LLM method's hooks (visual tokens per layer in `counts`)


@dataclass
class Generation:
    ids: list[int]  # generated token ids (the end token included when one ended the answer)
    seg_hidden: list[torch.Tensor]  # last hidden state of each fed [SEG] token, [d]
    logits: list[torch.Tensor] = field(default_factory=list)  # [V] before each generated token
    steps: int = 0  # cached forward passes after the prefill
    mode: str = "dynamic"  # "dynamic", "static" (eager steps) or "static+cuda-graph"
    fallback: str | None = None  # why a static decoder on CUDA ran its steps eagerly


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return DTYPES[name]


def check_attention(attn: str) -> None:
    if attn == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            raise EvtpError("attn=flash_attention_2 needs the flash-attn package, which is not installed; use attn=sdpa") from None


@contextlib.contextmanager
def skip_init():
    """Skip random initialisation when weights are loaded right after (transformers' `no_init_weights`)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            no_init_weights = contextlib.nullcontext
    with no_init_weights():
        yield


def new_cache(config):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:
        return DynamicCache()


def cache_keyword(module: nn.Module) -> str:
    """transformers 5 calls the KV cache argument `cache`; earlier versions `past_key_values`."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def pooled(output) -> torch.Tensor:
    """Image features from `get_image_features` across transformers versions ([N, d])."""
    feats = getattr(output, "pooler_output", output)
    if isinstance(feats, (list, tuple)):
        feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats], 0)
    return feats.reshape(-1, feats.shape[-1])


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if files:
        from safetensors.torch import load_file

        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f), device="cpu"))
        return state
    bins = sorted(path.glob("pytorch_model*.bin"))
    if bins:
        state = {}
        for f in bins:
            state.update(torch.load(f, map_location="cpu", weights_only=True))
        return state
    raise EvtpError(f"no weights (*.safetensors) in {str(path)!r}; expected {CHECKPOINT_LAYOUT}")


SAM2_PATCH_EMBED = "grounding_encoder.sam2_model.image_encoder.trunk.patch_embed.proj.weight"
SAM2_WIDTHS = {144: "hiera-l", 16: "tiny"}


def sam_preset_of(state: dict[str, torch.Tensor]) -> str:
    """SAM2's shape from the checkpoint: Hiera-L (144-wide patch embedding, every published Sa2VA) or evtp's tiny one."""
    weight = state.get(SAM2_PATCH_EMBED)
    if weight is None:
        raise EvtpError(f"the checkpoint has no SAM2 grounding encoder ({SAM2_PATCH_EMBED} is missing); expected {CHECKPOINT_LAYOUT}")
    width = int(weight.shape[0])
    if width not in SAM2_WIDTHS:
        raise EvtpError(f"unsupported SAM2 image encoder width {width} in the checkpoint; Sa2VA uses SAM2 Hiera-L (144)")
    return SAM2_WIDTHS[width]


def rig_random_answer(embed: nn.Embedding, lm_head: nn.Linear, seg_id: int, stop_id: int, scale: float = 4.0) -> None:
    """Make a random LLM answer `[SEG]` then `stop_id` (see the module docstring)."""
    with torch.no_grad():
        embed.weight[:, 0] = scale
        embed.weight[:, 1] = 0.0
        embed.weight[seg_id, 1] = scale
        for row in (seg_id, stop_id):
            lm_head.weight[row].zero_()
        lm_head.weight[seg_id, 0] = scale
        lm_head.weight[stop_id, 0] = 0.5 * scale
        lm_head.weight[stop_id, 1] = 2.0 * scale


def rig_random_sam(sam: nn.Module) -> None:
    """Bias the object-score head so a random SAM2 does not suppress every mask; share the one positional
    gaussian matrix original SAM2 has (transformers keeps two copies, a checkpoint fills both from one)."""
    with torch.no_grad():
        sam.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(10.0)
        sam.shared_image_embedding.positional_embedding.copy_(sam.prompt_encoder.shared_embedding.positional_embedding)


class Sa2VABackend(IVSModel):
    """Shared body of `Sa2VAQwen` and `Sa2VAInternVL`; subclasses fill in the family-specific hooks below."""

    family: ClassVar[str] = ""
    image_token: ClassVar[str] = ""
    inner_stages = ("vision", "llm")

    def __init__(self, config: Sa2VAOptions):
        super().__init__(config)
        self.dtype = resolve_dtype(config.dtype, config.device)
        check_attention(config.attn)
        if config.decode == "static":
            check_static(config.attn, config.pipeline)
        if config.path:
            self.net, self.tokenizer = self._load_checkpoint(Path(config.path).expanduser())
            self.source = str(Path(config.path).expanduser())
        else:
            self.net, self.tokenizer = self._build_random(config.preset)
            self.source = f"preset {config.preset} (random weights)"
        self.net.eval().requires_grad_(False)
        self.mask_decoder = Sa2VAMaskDecoder(self.net.sam)
        self.seg_id = token_id(self.tokenizer, SEG_TOKEN)
        self.image_token_id = token_id(self.tokenizer, self.image_token)
        self.stop_ids = stop_token_ids(self.tokenizer)
        self._cache_kw = cache_keyword(self.language_model)
        self.llm_layers = int(self.text_config.num_hidden_layers)
        self._static = StaticDecoders(self._static_decoder)

    # ---- family hooks ---------------------------------------------------------------------------

    def _vlm_class(self):
        raise NotImplementedError

    def _random_vlm_config(self, preset: str, tokenizer) -> tuple[Any, str]:
        """(transformers config of the VLM, SAM2 preset) for a random preset."""
        raise NotImplementedError

    def _checkpoint_vlm_config(self, raw: dict, tokenizer, path: Path) -> Any:
        raise NotImplementedError

    def _name_map(self, vlm_config) -> NameMap:
        raise NotImplementedError

    def _sa2va_config(self, vlm_config) -> dict:
        """The config.json a Sa2VA checkpoint of this family carries."""
        raise NotImplementedError

    def _preprocess(self, frames: list[np.ndarray], task: str) -> tuple[torch.Tensor, torch.Tensor, list[int], dict]:
        """Key frames -> (coords [N, 3], frame_ids [N], tokens per image block, inputs: the tower's pixel inputs)."""
        raise NotImplementedError

    def _tower(self, inputs: dict) -> torch.Tensor:
        """The vision tower and projector -> features [N, d] (keeps what `_vision_side` reads in `inputs["captured"]`)."""
        raise NotImplementedError

    def _tower_pruned(self, state: Sa2VAState, layer: int, choose: Callable[[torch.Tensor], torch.Tensor], timer: StageTimer) -> tuple[torch.Tensor, torch.Tensor]:
        """The tower with a selection at the output of block `layer` (`sa2va_tower`) -> (kept indices [k], their features [k, d])."""
        raise NotImplementedError

    def vision_layers(self) -> list[int]:
        """The vision blocks `evtp:at=vision-layer-L` may select after."""
        raise NotImplementedError

    def check_vision_layer(self, layer: int) -> None:
        """A one-line EvtpError when `evtp:at=vision-layer-{layer}` cannot select after that block."""
        raise NotImplementedError

    def check_pruners(self, pruners: list[Any]) -> None:
        for pruner in pruners:
            layer = getattr(pruner, "vision_layer", None)
            if layer is not None:
                self.check_vision_layer(layer)

    def _prompt(self, instruction_text: str, tokens_per_block: list[int]) -> str:
        raise NotImplementedError

    def _positions(self, input_ids: torch.Tensor, inputs: dict) -> tuple[torch.Tensor, int]:
        """Position ids of the unpruned prompt and the first generated token's position."""
        raise NotImplementedError

    def _generate_kwargs(self, state: Sa2VAState) -> dict:
        raise NotImplementedError

    def _vision_side(self, inputs: dict) -> VisionSide:
        """Rows before the projector, attention, keys and the projector for vision methods (lazy; `sa2va_inner`)."""
        raise NotImplementedError

    def _lm_kwargs(self, pruned: PrunedPrefill | None) -> dict:
        """Extra keyword arguments for the LLM call (prefill when `pruned` is given, else a decode step)."""
        return {}

    @property
    def language_model(self) -> nn.Module:
        return self.net.vlm.model.language_model

    @property
    def lm_head(self) -> nn.Module:
        return self.net.vlm.lm_head

    @property
    def embed_tokens(self) -> nn.Module:
        return self.net.vlm.get_input_embeddings()

    @property
    def text_config(self):
        return self.net.vlm.config.text_config

    # ---- building and loading ---------------------------------------------------------------------

    def _assemble(self, vlm_config, sam_preset: str, init: bool) -> Sa2VANet:
        device = torch.device(self.config.device)
        cls = self._vlm_class()
        from transformers import Sam2VideoModel

        context = contextlib.nullcontext() if init else skip_init()
        with context, device:
            vlm = cls._from_config(vlm_config, dtype=self.dtype, attn_implementation=self.config.attn)
            sam = Sam2VideoModel._from_config(sam2_config(sam_preset), dtype=self.dtype)
            proj = SegProjection(vlm_config.text_config.hidden_size, sam.config.mask_decoder_config.hidden_size)
        return Sa2VANet(vlm, sam, proj.to(device=device, dtype=self.dtype))

    def _build_random(self, preset: str) -> tuple[Sa2VANet, Any]:
        tokenizer = build_word_tokenizer()
        vlm_config, sam_preset = self._random_vlm_config(preset, tokenizer)
        torch.manual_seed(self.config.seed)
        net = self._assemble(vlm_config, sam_preset, init=True)
        stop = token_id(tokenizer, "<|im_end|>")
        rig_random_answer(net.vlm.get_input_embeddings(), net.vlm.lm_head, token_id(tokenizer, SEG_TOKEN), stop)
        rig_random_sam(net.sam)
        return net, tokenizer

    def _load_checkpoint(self, path: Path) -> tuple[Sa2VANet, Any]:
        if not path.is_dir():
            raise EvtpError(f"Sa2VA checkpoint not found at {str(path)!r}; expected {CHECKPOINT_LAYOUT}")
        config_file = path / "config.json"
        if not config_file.is_file():
            raise EvtpError(f"no config.json in {str(path)!r}; expected {CHECKPOINT_LAYOUT}")
        try:
            raw = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise EvtpError(f"cannot read {str(config_file)!r}: {exc}") from None
        tokenizer = self._load_tokenizer(path)
        vlm_config = self._checkpoint_vlm_config(raw, tokenizer, path)
        state = read_state_dict(path)
        net = self._assemble(vlm_config, sam_preset_of(state), init=False)
        self.load_sa2va_state(net, state, vlm_config)
        return net, tokenizer

    def save_sa2va(self, path: str | Path) -> Path:
        """Write this model as a checkpoint folder in Sa2VA's published layout (config.json with Sa2VA's keys,
        model.safetensors with Sa2VA's tensor names, tokenizer files): what `path=` loads."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = self.weight_map(self.net, self.net.vlm.config).to_source(self.net.state_dict())
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps(self._sa2va_config(self.net.vlm.config), indent=2, default=str))
        self.tokenizer.save_pretrained(str(path))
        return path

    def load_sa2va_state(self, net: Sa2VANet, state: dict[str, torch.Tensor], vlm_config) -> None:
        """Map Sa2VA names onto `net`; every tensor must arrive (MappingError -> EvtpError listing names)."""
        mapping = self.weight_map(net, vlm_config)
        try:
            native, unmapped = mapping.to_native(state)
            expected = net.state_dict()
            check_complete(native, expected, unmapped, mapping.tied)
        except MappingError as exc:
            raise EvtpError(f"checkpoint does not match the {self.name} modules: {exc}") from None
        for target, source in mapping.tied.items():
            native.setdefault(target, native[source])
        net.load_state_dict({k: v.to(expected[k].dtype) for k, v in native.items()}, strict=True)

    def weight_map(self, net: Sa2VANet, vlm_config) -> NameMap:
        from evtp_cli.models.sa2va_weights import grounding_map

        return self._name_map(vlm_config) + grounding_map(mask_downsampler_layers(net.sam.config))

    def _load_tokenizer(self, path: Path):
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # Sa2VA's config.json names a model type transformers does not know
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:  # a missing or foreign tokenizer
            raise EvtpError(f"cannot load the tokenizer from {str(path)!r} ({type(exc).__name__}: {exc}); expected {CHECKPOINT_LAYOUT}") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        for token in (SEG_TOKEN, self.image_token):
            try:
                token_id(tokenizer, token)
            except KeyError:
                raise EvtpError(f"the tokenizer in {str(path)!r} has no {token!r} token: not a {self.name} checkpoint") from None
        return tokenizer

    # ---- IVSModel -------------------------------------------------------------------------------

    def info(self) -> dict:
        counts = {
            "vision": sum(p.numel() for n, p in self.net.vlm.named_parameters() if "language_model" not in n and "lm_head" not in n),
            "llm": sum(p.numel() for n, p in self.net.vlm.named_parameters() if "language_model" in n or "lm_head" in n),
            "sam2": sum(p.numel() for p in self.net.sam.parameters()),
        }
        c = self.config
        return {
            "name": self.name, "source": self.source, "dtype": str(self.dtype).replace("torch.", ""),
            "device": c.device, "attn": c.attn, "frames": c.frames, "positions": c.positions,
            "pipeline": c.pipeline, "decode": c.decode, "parameters": counts,
        }

    def prefill_flops(self, sequence_length: int) -> float:
        """Analytic FLOPs (2 per multiply-add) of the LLM's decoder layers over a prompt of `sequence_length` tokens.

        Per layer and token: the q/k/v/o projections, 2·d·(2·H·dh + 2·KV·dh) with KV the key/value heads
        (grouped-query attention), and the SwiGLU MLP, 2·3·d·I. Per layer: causal attention scores and
        the weighted sum of values, 2·2·H·dh·S²/2. Not counted: embeddings, norms, RoPE, softmax, biases
        and the LM head (about 2·d·V for the one position whose logits the prefill reads). Linear in the
        depth, so `prefill_flops(S) / depth` is one layer's share (the loop sums layers of unequal length).
        """
        t = self.text_config
        d, layers, inter = t.hidden_size, t.num_hidden_layers, t.intermediate_size
        heads = t.num_attention_heads
        head_dim = getattr(t, "head_dim", None) or d // heads
        q, kv = heads * head_dim, t.num_key_value_heads * head_dim
        s = float(sequence_length)
        per_token = 2 * d * (2 * q + 2 * kv) + 2 * 3 * d * inter
        attention = 2 * 2 * q * s * s / 2
        return float(layers * (per_token * s + attention))

    def prepare(self, sample: Sample) -> tuple[list[np.ndarray], list[int]]:
        """All frames as uint8 arrays and the key frames the LLM sees."""
        frames = [to_rgb_array(f) for f in sample.frames]
        keys = key_frame_indices(len(frames), self.config.frames) if sample.task == "video" else [0]
        return frames, keys

    @torch.inference_mode()
    def encode(self, sample: Sample, timer: StageTimer) -> VisualTokens:
        frames, keys = self.prepare(sample)
        with timer.stage("vision"):
            coords, frame_ids, blocks, inputs = self._preprocess([frames[k] for k in keys], sample.task)
        with timer.stage("vision") as tower:  # taken back when the tower runs again, pruned inside
            features = self._tower(inputs)
        text = instruction(sample.text, sample.task, is_question(sample.meta))
        ids = self.tokenizer.encode(self._prompt(text, blocks), add_special_tokens=False)
        device = self.device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        visual_index = torch.nonzero(input_ids[0] == self.image_token_id, as_tuple=True)[0]
        if visual_index.numel() != features.shape[0]:
            raise RuntimeError(f"prompt has {visual_index.numel()} image tokens for {features.shape[0]} visual features")
        position_ids, next_position = self._positions(input_ids, inputs)
        text_rows = torch.ones(input_ids.shape[1], dtype=torch.bool, device=device)
        text_rows[visual_index] = False
        text_embeds = self.embed_tokens(input_ids[0, text_rows]).float()
        coords = coords.to(device)
        side = self._vision_side(inputs)
        state = Sa2VAState(frames, keys, input_ids, visual_index, features, position_ids, next_position, inputs, coords, side, tower)
        extras = {"backend": self.name, "attention_kind": side.kind, "key_heads": side.heads}
        providers = {"attention": side.attention, "keys": side.keys}
        context = PruneContext(frame_ids=frame_ids, text_embeds=text_embeds, extras=extras, providers=providers)
        return VisualTokens(features.float(), coords, frame_ids, context, state)

    @classmethod
    def cannot_prune(cls, config: Sa2VAOptions) -> str | None:
        if config.pipeline == "generate":
            return "pipeline=generate is the unpruned reference; use pipeline=hooked to prune"
        return None

    @torch.inference_mode()
    def decode(self, sample: Sample, tokens: VisualTokens, plan: PrunePlan, timer: StageTimer) -> Prediction:
        """Prefill, greedy decoding and masks; a vision plan is resolved first (timed as "select"), an llm
        plan's hooks live through the prefill and the decoding. Extras: generated ids, prefill length,
        decode steps, `visual_tokens_per_layer`, `text_tokens` (prompt tokens that are not visual)."""
        state: Sa2VAState = tokens.state
        if plan.inner is not None and plan.inner_stage not in self.inner_stages:
            raise PrunerNotApplicable(f"{self.name} has no {plan.inner_stage!r} hook; it has {', '.join(self.inner_stages)}")
        extras: dict[str, Any] = {}
        counts = None
        if self.config.pipeline == "generate":
            if plan.keep is not None or plan.inner is not None:
                raise EvtpError(f"{self.name}: {self.cannot_prune(self.config)}")
            with timer.stage("decode"):
                gen = self.generate_reference(state)
            prefill_length = int(state.input_ids.shape[1])
        else:
            if getattr(plan.inner, "vision_layer", None) is not None:  # times its own vision and select spans
                plan, info = self.vision_layer_plan(tokens, plan, timer)
                extras.update(info)
            elif plan.inner is not None and plan.inner_stage == "vision":
                with timer.stage("select"):
                    plan, info = self.vision_plan(tokens, plan)
                extras.update(info)
            with contextlib.ExitStack() as stack:  # an llm plan's hooks stay on the layers until decoding ends
                with timer.stage("prefill"):
                    pre = self.prefill(state, plan, stack)
                with timer.stage("decode"):
                    gen = self.greedy(pre, timer)
            prefill_length = pre.pruned.length
            counts = pre.hooks.counts if pre.hooks is not None else None
        with timer.stage("mask"):
            masks = self.masks(state, gen.seg_hidden)
        text = self.tokenizer.decode(gen.ids, skip_special_tokens=False)
        n_visual = int(state.visual_index.numel())
        if counts is None:
            counts = [n_visual if plan.keep is None else int(plan.keep.numel())] * self.llm_layers
        extras.update({
            "generated_ids": gen.ids, "seg_tokens": len(gen.seg_hidden), "prefill_length": prefill_length, "decode_steps": gen.steps,
            "visual_tokens_per_layer": counts, "text_tokens": int(state.input_ids.shape[1]) - n_visual, "decode_mode": gen.mode,
        })  # fmt: skip
        if gen.fallback:
            extras["decode_fallback"] = gen.fallback
        return Prediction(masks=masks, text=text, extras=extras)

    def vision_plan(self, tokens: VisualTokens, plan: PrunePlan) -> tuple[PrunePlan, dict]:
        """A vision method on the rows before the projector -> the pre-LLM plan of its projected result.

        Rows the method returns unchanged keep the encoder's own projected features (bit for bit what the
        unpruned LLM input holds); merged rows go through the projector. A merged token takes the position
        of its representative index, as pre-LLM merging methods do.
        """
        state: Sa2VAState = tokens.state
        side = state.vision
        rows = side.rows()
        merged = plan.inner(VisionState(rows, tokens.coords, tokens.context))
        index = merged.indices.to(rows.device)
        features = state.features[index].clone()
        changed = ~(merged.features.to(rows.dtype) == rows[index]).all(dim=1)
        if bool(changed.any()):
            features[changed] = side.project(merged.features[changed]).to(features.dtype)
        return PrunePlan(keep=index, features=features, coords=merged.coords), dict(merged.info)

    def vision_layer_plan(self, tokens: VisualTokens, plan: PrunePlan, timer: StageTimer) -> tuple[PrunePlan, dict]:
        """Select inside the vision tower (`plan.inner.vision_layer` = L) -> the pre-LLM plan of the kept tokens.

        The tower runs again from its pixel inputs: blocks up to L on every patch ("vision"), the method on
        block L's output grouped per LLM token ("select"), the later blocks and the projector on the kept
        groups only ("vision"). The encode's full tower pass leaves the "vision" stage, so the row times
        what a deployment with this pruning would run. Kept tokens keep their original positions (the plan
        goes through the pre-LLM hook); their features replace the unpruned ones.
        """
        state: Sa2VAState = tokens.state
        layer = int(plan.inner.vision_layer)
        self.check_vision_layer(layer)
        if state.tower is not None:
            state.tower.retract()

        def choose(rows: torch.Tensor) -> torch.Tensor:
            merged = plan.inner(VisionState(rows, tokens.coords, tokens.context))
            return merged.indices.to(rows.device)

        keep, features = self._tower_pruned(state, layer, choose, timer)
        return PrunePlan(keep=keep, features=features.to(state.features.dtype)), {"vision_layer": layer}

    # ---- the LLM ----------------------------------------------------------------------------------

    def _run_lm(self, embeds, position_ids, attention_mask, cache, extra: dict):
        kwargs = {self._cache_kw: cache}
        return self.language_model(
            inputs_embeds=embeds, position_ids=position_ids, attention_mask=attention_mask, use_cache=True, **kwargs, **extra
        )

    def merged_embeddings(self, state: Sa2VAState) -> torch.Tensor:
        """The prompt's input embeddings with the visual tokens scattered in ([1, L, d])."""
        embeds = self.embed_tokens(state.input_ids).clone()
        embeds[0, state.visual_index] = state.features.to(embeds.dtype)
        return embeds

    @torch.inference_mode()
    def prefill(self, state: Sa2VAState, plan: PrunePlan, stack: contextlib.ExitStack | None = None) -> Prefill:
        """Merged embeddings -> pruning hook -> one LLM pass with a fresh KV cache.

        An llm plan (`plan.inner_stage == "llm"`) prunes inside this pass through `LLMPruneHooks` on the
        decoder layers; they are entered on `stack`, which must stay open through the decoding (the hooks
        then drop the attention mask, see `sa2va_inner`). Its kept tokens keep their original positions.
        """
        in_llm = plan.inner is not None and plan.inner_stage == "llm"
        pruned = prune_prefill(
            self.merged_embeddings(state), state.position_ids, state.visual_index, state.next_position,
            keep=plan.keep, features=plan.features, positions=self.config.positions,
        )
        hooks = None
        if in_llm:
            if stack is None:
                raise ValueError("an in-LLM plan needs an ExitStack that stays open through the decoding")
            lm = self.language_model
            layers = lm.layers[: self.llm_layers]
            hooks = stack.enter_context(LLMPruneHooks(layers, plan, lm.norm, pruned.inputs_embeds, state.visual_index, state.coords))
        cache = new_cache(self.text_config)
        out = self._run_lm(pruned.inputs_embeds, pruned.position_ids, pruned.attention_mask, cache, self._lm_kwargs(pruned))
        if hooks is not None:
            hooks.end_prefill()
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden[:, -1:]).float()
        return Prefill(pruned, cache, hidden, logits, hooks)

    def _step_forward(self, token_ids: torch.Tensor, positions: torch.Tensor, mask, cache) -> tuple[torch.Tensor, torch.Tensor]:
        """One cached decode step: token ids [1, 1] -> (last hidden state [1, d], logits [1, V] float32)."""
        out = self._run_lm(self.embed_tokens(token_ids), positions, mask, cache, self._lm_kwargs(None))
        hidden = out.last_hidden_state[:, -1]
        return hidden, self.lm_head(hidden[:, None]).float()[:, -1]

    def _static_decoder(self, length: int) -> StaticDecoder:
        layers = self.language_model.layers[: self.llm_layers]
        return StaticDecoder(layers, self.text_config, length, self.config.attn, self._step_forward)

    @torch.inference_mode()
    def greedy(self, pre: Prefill, timer: StageTimer | None = None) -> Generation:
        """Greedy decoding after a (possibly pruned) prefill; step j feeds its token at `next_position + j`.

        decode=dynamic: the prefill's DynamicCache grows by one position a step, the mask covers the
        `L' + j + 1` positions actually computed. decode=static: the cache is copied into a static one and
        each step runs on it (a CUDA graph on CUDA; `sa2va_static`). With a timer, the first generated token
        (the argmax of the prefill logits) is timed as "decode_first".
        """
        gen = Generation([], [], [pre.logits[0, -1]], mode=self.config.decode)
        logits = pre.logits[:, -1]
        device = pre.logits.device
        with timer.stage("decode_first") if timer is not None else contextlib.nullcontext():
            token = int(torch.argmax(logits[0]))
        static = None
        if self.config.decode == "static":
            static = self._static.get(pre.pruned.length + self.config.max_new_tokens)
            static.load(pre.cache)
        for step in range(self.config.max_new_tokens):
            if step:
                token = int(torch.argmax(logits[0]))
            gen.ids.append(token)
            if token in self.stop_ids or len(gen.ids) >= self.config.max_new_tokens:
                break
            positions = decode_position_ids(pre.pruned.next_position, step, pre.pruned.position_ids)
            if static is None:
                mask = torch.ones(1, pre.pruned.length + step + 1, dtype=torch.long, device=device)
                hidden, logits = self._step_forward(torch.tensor([[token]], device=device), positions, mask, pre.cache)
            else:
                hidden, logits = static.run(token, positions, self.dtype)
            gen.steps += 1
            if token == self.seg_id:
                gen.seg_hidden.append(hidden[0].clone())
            gen.logits.append(logits[0].clone())
        if static is not None:
            gen.mode = "static+cuda-graph" if static.graph is not None else "static"
            gen.fallback = static.fallback
        return gen

    @torch.inference_mode()
    def generate_reference(self, state: Sa2VAState) -> Generation:
        """transformers' `generate` on the full inputs; [SEG] states as Sa2VA's `get_seg_hidden_states` takes them."""
        kwargs = self._generate_kwargs(state)
        stops = sorted(self.stop_ids)
        out = self.net.vlm.generate(
            **kwargs,
            max_new_tokens=self.config.max_new_tokens,
            do_sample=False,
            output_hidden_states=True,
            return_dict_in_generate=True,
            eos_token_id=stops,
            pad_token_id=stops[0],
        )
        sequence = out.sequences[0]
        generated = sequence[state.input_ids.shape[1] :].tolist()
        last = torch.cat([step[-1][0] for step in out.hidden_states], 0)
        fed = sequence[:-1]
        seg_mask = fed == self.seg_id
        seg_hidden = list(last[-fed.numel() :][seg_mask]) if fed.numel() else []
        return Generation(generated, seg_hidden, steps=len(out.hidden_states) - 1)

    # ---- masks ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def masks(self, state: Sa2VAState, seg_hidden: list[torch.Tensor]) -> np.ndarray:
        frames = state.frames
        height, width = frames[0].shape[:2]
        out = torch.zeros(len(frames), height, width, dtype=torch.bool)
        if not seg_hidden:
            return out.numpy()
        features = self.mask_decoder.encode_frames(frames, self.device)
        prompts = self.net.seg_proj(torch.stack(seg_hidden).to(self.dtype))
        for prompt in prompts:
            logits = self.mask_decoder.segment(features, prompt, state.keys)
            out |= self.mask_decoder.to_masks(logits, height, width).cpu()
        return out.numpy()
