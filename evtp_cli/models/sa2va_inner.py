"""Pruning inside the model for the Sa2VA-style backends: the vision hook and the in-LLM hook (batch size 1).

Read (not copied): transformers' `modeling_qwen2_5_vl.py` (vision blocks with window/full attention,
`PatchMerger`, the M-RoPE text model), `modeling_internvl.py` (InternViT with its [CLS] token, pixel
shuffle, `multi_modal_projector`), `modeling_qwen2.py` (the decoder layer: `input_layernorm`,
`q_proj`/`k_proj`, `apply_rotary_pos_emb`, `repeat_kv`), and the public FastV / SparseVLM / DART code,
which slices the sequence between two decoder layers of its own copy of the model's forward.

**Vision methods.** While the tower runs, forward pre-hooks keep references to the inputs of two
modules (`capture_inputs`): the projector (its input rows are the vision-space rows the methods act on)
and the attention of the vision layer the features come from (its q/k give `attention` and `keys` on
request, `mean_received` / `cls_received`). Nothing is computed unless a method asks; the tower keeps its
sdpa / flash attention.

**In-LLM methods.** `LLMPruneHooks` puts a forward pre-hook on every decoder layer for one prefill and
the decoding after it. transformers' text models compute the position embeddings (cos, sin), the
position ids and the causal mask once for the whole prompt and hand the same objects to every layer,
so each hook rewrites what its layer receives:

- before a layer `j` in `plan.inner_layers` it builds the `LLMState` (the hidden states entering `j`;
  layer `j-1`'s attention rows and keys recomputed on request from that layer's input through its
  `input_layernorm`, `q_proj`/`k_proj`, the rotary embedding it was given and `repeat_kv`), calls the
  method, and drops / appends rows of the hidden states (`LayerPrune`);
- from the first pruning point on, every layer gets the position embeddings and position ids of the rows
  still alive (gathered by each row's position in the full prompt, so kept tokens keep their M-RoPE /
  RoPE positions; a merged row takes its first member's), a causal mask of the new length when the
  model built a 4-D one (sdpa without padding builds none and uses `is_causal`), `cache_position` and
  flash-attention `cu_seq_lens_*` of the new length;
- the layers before `j` cached every token; `j` and later ones cache only the rows they saw. Decoding
  with these unequal caches is correct because each decode step has one query at the end of the
  sequence (batch 1, no padding): the hooks drop the attention mask in decoding (`attention_mask=None`),
  so every layer attends to its own whole cache, whatever its length (transformers builds one mask from
  layer 0's length, which would not fit the shorter caches under eager attention).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from evtp_cli.api import LayerPrune, LLMState, PrunePlan, member_mean
from evtp_cli.errors import PrunerNotApplicable
from evtp_cli.models.attention import attention_rows

QUERY_CHUNK = 1024  # query rows per softmax block when averaging attention over a whole image


# ---------------------------------------------------------------------------------------------
# vision side


@contextlib.contextmanager
def capture_inputs(modules: dict[str, nn.Module]) -> Iterator[dict[str, tuple[tuple, dict]]]:
    """While inside, forward pre-hooks store each module's last (args, kwargs) under its name (references only)."""
    store: dict[str, tuple[tuple, dict]] = {}
    handles = []
    for name, module in modules.items():

        def hook(mod, args, kwargs, name=name):
            store[name] = (args, dict(kwargs))

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class VisionSide:
    """What a backend's tower offers vision methods for one sample; every callable computes once, on first use.

    rows() -> [N, C']: vision-space rows aligned one-to-one with the LLM's visual tokens, before the
    projector (float32). attention() -> [N] and keys() -> [N, C] of the vision layer those rows come
    from, averaged over each LLM token's patches. project(rows) -> [m, d]: the projector, in the LLM's dtype.
    kind: "cls" or "mean-received"; heads: the layer's attention heads (keys hold them side by side).
    """

    rows: Callable[[], torch.Tensor]
    attention: Callable[[], torch.Tensor]
    keys: Callable[[], torch.Tensor]
    project: Callable[[torch.Tensor], torch.Tensor]
    kind: str
    heads: int


def once(fn: Callable[[], Any]) -> Callable[[], Any]:
    """A no-argument function computed on its first call only, in inference mode."""
    return functools.cache(torch.inference_mode()(fn))


def first_input(captured: tuple[tuple, dict], name: str = "hidden_states") -> torch.Tensor:
    args, kwargs = captured
    return args[0] if args else kwargs[name]


def mean_received(q: torch.Tensor, k: torch.Tensor, chunk: int = QUERY_CHUNK) -> torch.Tensor:
    """Mean attention each token receives over heads and queries, from bidirectional q/k [H, n, dh] -> [n].

    The same quantity as `stages.attention_received`, with the softmax taken over blocks of `chunk`
    queries so that a 1008 px image (5184 patches, 16 heads) never holds its whole attention map.
    """
    heads, n, dh = q.shape
    keys_t = k.float().transpose(-1, -2)
    total = torch.zeros(n, dtype=torch.float32, device=q.device)
    for start in range(0, n, chunk):
        probs = torch.softmax(q[:, start : start + chunk].float() @ keys_t * dh**-0.5, dim=-1)
        total += probs.sum(dim=(0, 1))
    return total / (heads * n)


def cls_received(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[CLS] attention over heads: q/k [B, H, 1 + n, dh] with [CLS] first -> [B, n] (the [CLS] column dropped)."""
    probs = torch.softmax(q[:, :, :1].float() @ k.float().transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
    return probs.mean(dim=1)[:, 0, 1:]


# ---------------------------------------------------------------------------------------------
# in-LLM side


def module_function(module: nn.Module, name: str):
    """A function of the transformers modeling file that defines `module`'s class (None if it has none)."""
    return getattr(sys.modules[type(module).__module__], name, None)


def layer_qk(layer: nn.Module, x: torch.Tensor, position_embeddings) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoder layer's queries and keys [H, L, dh] after RoPE (keys repeated to the query heads) for its input x [1, L, D]."""
    attn = layer.self_attn
    h = layer.input_layernorm(x)
    b, length, _ = h.shape
    dh = attn.head_dim
    q = attn.q_proj(h).view(b, length, -1, dh)
    k = attn.k_proj(h).view(b, length, -1, dh)
    if getattr(attn, "q_norm", None) is not None:  # Qwen3-style per-head norms (not in Qwen2)
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    cos, sin = position_embeddings
    multimodal = module_function(attn, "apply_multimodal_rotary_pos_emb")
    if cos.dim() == 4 and multimodal is not None:  # transformers 4.x Qwen2.5-VL: cos/sin [3, 1, L, dh]
        q, k = multimodal(q, k, cos, sin, attn.rope_scaling["mrope_section"])
    else:
        q, k = module_function(attn, "apply_rotary_pos_emb")(q, k, cos, sin)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
    return q[0], k[0]


def causal_like(mask: Any, length: int) -> Any:
    """A causal mask of `length` in the format the model built for the full prompt (None stays None)."""
    if mask is None:
        return None
    if not torch.is_tensor(mask) or mask.dim() != 4:
        raise PrunerNotApplicable(f"in-LLM pruning cannot shorten an attention mask of type {type(mask).__name__}; use attn=sdpa or eager")
    allowed = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()[None, None]
    if mask.dtype == torch.bool:
        return allowed
    return torch.zeros(1, 1, length, length, dtype=mask.dtype, device=mask.device).masked_fill(~allowed, torch.finfo(mask.dtype).min)


class LLMPruneHooks:
    """Forward pre-hooks on every decoder layer that run an llm method's `LayerPrune`s during one prefill.

    embeds: [1, L, D] the unpruned prompt's input embeddings; visual_index [N]: visual positions in it;
    coords [N, 3]. Use as a context manager around the prefill and the decoding; call `end_prefill()`
    between them. `counts` holds the visual tokens each layer carried.
    """

    def __init__(self, layers: nn.ModuleList, plan: PrunePlan, norm: nn.Module, embeds: torch.Tensor, visual_index: torch.Tensor, coords: torch.Tensor):
        self.layers, self.plan, self.norm = layers, plan, norm
        self.points = set(plan.inner_layers)
        self.depth = len(layers)
        device = embeds.device
        length = int(embeds.shape[1])
        self.inputs = embeds[0]
        self.inputs_visual = visual_index.to(device)
        last = int(visual_index.max()) if visual_index.numel() else -1
        self.inputs_text = torch.arange(last + 1, length, device=device)
        self.index = torch.arange(length, device=device)  # full-prompt position of each current row
        self.visual = self.inputs_visual.clone()  # current rows holding visual tokens
        self.coords = coords.to(device=device, dtype=torch.float32)
        self.sizes = torch.ones(self.visual.numel(), device=device)
        self.counts = [int(self.visual.numel())] * self.depth
        self.prefilling = True
        self.changed = False  # rows were dropped or added: later layers get sliced inputs
        self.previous: tuple | None = None  # (layer, its input, its position embeddings)
        self._sliced: dict[int, Any] = {}
        self._handles: list = []

    def __enter__(self) -> "LLMPruneHooks":
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(self._hook(i), with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def end_prefill(self) -> None:
        self.prefilling = False
        self.previous = None
        self._sliced.clear()

    # ---- the hook --------------------------------------------------------------------------------

    def _hook(self, i: int):
        def pre(module, args, kwargs):
            if not self.prefilling:
                if self.changed:  # one query at the end: attend to this layer's whole cache
                    kwargs["attention_mask"] = None
                return args, kwargs
            hidden = args[0] if args else kwargs.pop("hidden_states")
            if i in self.points and self.previous is not None:
                result = self.plan.inner(self._state(i, hidden))
                if result is not None:
                    hidden = self._apply(result, hidden)
            if self.changed:
                self._slice(kwargs, int(hidden.shape[1]))
            self.counts[i] = int(self.visual.numel())
            self.previous = (module, hidden, kwargs.get("position_embeddings"))
            return (hidden, *args[1:]), kwargs

        return pre

    def _state(self, j: int, hidden: torch.Tensor) -> LLMState:
        layer, x_in, position_embeddings = self.previous  # type: ignore[misc]
        cache: dict = {}

        def qk():
            if "qk" not in cache:
                if position_embeddings is None:
                    raise PrunerNotApplicable(f"the in-LLM hook needs the rotary embedding of layer {j - 1}, which this model does not pass to its layers")
                cache["qk"] = layer_qk(layer, x_in, position_embeddings)
            return cache["qk"]

        last = int(self.visual.max()) if self.visual.numel() else -1
        return LLMState(
            layer=j, depth=self.depth, hidden=hidden[0], visual=self.visual,
            text=torch.arange(last + 1, hidden.shape[1], device=hidden.device), coords=self.coords,
            attention=lambda queries: attention_rows(*qk(), queries), keys=lambda: qk()[1], norm=self.norm,
            inputs=self.inputs, inputs_visual=self.inputs_visual, inputs_text=self.inputs_text,
        )  # fmt: skip

    def _apply(self, result: LayerPrune, hidden: torch.Tensor) -> torch.Tensor:
        """Drop the visual rows not in `result.keep`; insert `result.merged` right after the last kept one."""
        device = hidden.device
        n, length = int(self.visual.numel()), int(hidden.shape[1])
        keep = result.keep.to(device)
        dropped = torch.ones(n, dtype=torch.bool, device=device)
        dropped[keep] = False
        alive = torch.ones(length, dtype=torch.bool, device=device)
        alive[self.visual[dropped]] = False
        rows = torch.nonzero(alive).flatten()
        new_row = torch.cumsum(alive, 0) - 1
        hidden, index = hidden[:, rows], self.index[rows]
        visual = new_row[self.visual[keep]]
        coords, sizes = self.coords[keep], self.sizes[keep]
        merged = result.merged
        if merged is not None and merged.shape[0] > 0:
            m = int(merged.shape[0])
            members = result.members(n, device)
            first = torch.argmax(members.to(torch.uint8), dim=1)  # each group's first member
            at = int(visual[-1]) + 1 if visual.numel() else int(alive[: int(self.visual[0])].sum())
            hidden = torch.cat([hidden[:, :at], merged.to(device=device, dtype=hidden.dtype)[None], hidden[:, at:]], 1)
            index = torch.cat([index[:at], self.index[self.visual[first]], index[at:]])
            merged_coords, merged_sizes = member_mean(self.coords, self.sizes, members)
            visual = torch.cat([visual, torch.arange(at, at + m, device=device)])
            coords, sizes = torch.cat([coords, merged_coords]), torch.cat([sizes, merged_sizes])
        self.index, self.visual, self.coords, self.sizes = index, visual, coords, sizes
        self.changed = True
        self._sliced.clear()
        return hidden

    def _slice(self, kwargs: dict, length: int) -> None:
        """The layer's inputs for the rows alive (see the module docstring)."""
        index = self.index
        pe = kwargs.get("position_embeddings")
        if pe is not None:
            if "pe" not in self._sliced:
                self._sliced["pe"] = tuple(t.index_select(-2, index) for t in pe)
            kwargs["position_embeddings"] = self._sliced["pe"]
        if torch.is_tensor(kwargs.get("position_ids")):
            kwargs["position_ids"] = kwargs["position_ids"].index_select(-1, index)
        if "attention_mask" in kwargs:
            if "mask" not in self._sliced:
                self._sliced["mask"] = causal_like(kwargs["attention_mask"], length)
            kwargs["attention_mask"] = self._sliced["mask"]
        if torch.is_tensor(kwargs.get("cache_position")):
            kwargs["cache_position"] = torch.arange(length, device=index.device, dtype=kwargs["cache_position"].dtype)
        for side in ("q", "k"):
            if torch.is_tensor(kwargs.get(f"cu_seq_lens_{side}")):
                cu = kwargs[f"cu_seq_lens_{side}"]
                kwargs[f"cu_seq_lens_{side}"] = torch.tensor([0, length], dtype=cu.dtype, device=cu.device)
                kwargs[f"max_length_{side}"] = length
