"""`decode=static` for the Sa2VA-style backends: a static KV cache, and each decode step replayed as a CUDA graph.

An IVS answer is a handful of tokens ("[SEG]" and an end token, or a short sentence), so eager decoding is
bound by kernel launches: a 28-layer decoder step launches several hundred small kernels whose CPU-side
cost exceeds the GPU work of reading the weights once. `StaticDecoder` removes that cost:

- **Static cache.** transformers' `StaticCache` with `length` slots per layer (prefill + `max_new_tokens`,
  rounded up to a multiple of `BUCKET` so that samples of similar length share one cache and one graph).
  The prefill itself is unchanged (the hooked prefill with a `DynamicCache`, so its logits and first token
  are those of `decode=dynamic`); its keys and values are then copied into the static slots, layer by layer,
  each layer with its own length: after an in-LLM method the later layers cached fewer tokens, and each
  static layer's `cumulative_length` (where the next key is written) is that layer's own.
- **Masks from the cache.** A decode step attends to slots `0 ..= cumulative_length` of each layer, the
  rest being empty or stale. The mask is computed inside the step from each layer's `cumulative_length`
  (a tensor) by a forward pre-hook per decoder layer, so it needs no host-side value and is right for
  layers of unequal lengths; the model-level mask is layer 0's (a 4-D mask, which transformers passes
  through unchanged). Boolean for sdpa, additive for eager attention.
- **CUDA graph.** On CUDA the step (embedding of the fed token, the decoder, the final norm, the LM head)
  is captured once per cache with `torch.cuda.CUDAGraph` (after a warm-up run on a side stream whose
  cache writes are undone) and replayed with the token and position ids copied into static input
  buffers. This is the graph that `torch.compile(mode="reduce-overhead")` would record, without
  inductor's compile time for every cache length (tens of seconds a shape for a 7B decoder). If capture
  fails the decoder says why (`fallback`) and runs the same step eagerly.
- On the CPU the step runs eagerly on the same static cache and masks (what the tests compare against
  `decode=dynamic`).

Positions are the caller's: the step feeds the token at `next_position + step` as dynamic decoding does,
whatever the pruned prefill kept. Results equal `decode=dynamic` up to float rounding: the generated ids
are the same, the hidden states differ in the last bits because attention reduces over the `length` slots
(masked) instead of exactly the filled ones (tests/test_static_decode.py).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

from evtp_cli.errors import EvtpError

BUCKET = 256  # cache slots are a multiple of this
MAX_DECODERS = 3  # caches (and graphs) kept per backend, least recently used dropped
SUPPORTED_ATTENTION = ("sdpa", "eager")


def check_static(attn: str, pipeline: str) -> None:
    """One-line errors for option combinations `decode=static` cannot serve."""
    if attn not in SUPPORTED_ATTENTION:
        raise EvtpError(f"decode=static needs attn=sdpa or attn=eager (its masks cover the static slots); got attn={attn}")
    if pipeline != "hooked":
        raise EvtpError("decode=static applies to pipeline=hooked (pipeline=generate is transformers' own loop)")


def cache_length(needed: int) -> int:
    return -(-int(needed) // BUCKET) * BUCKET


class StaticDecoder:
    """A static KV cache of `length` slots and one greedy decode step on it (batch size 1).

    run(token, position) -> (hidden [1, d], logits [1, V] float32) for the token fed at `position`
    (ids shaped as the backend's decode position ids); the returned tensors are only valid until the next
    call (graph outputs are reused), so callers clone what they keep.
    """

    def __init__(self, layers: nn.ModuleList, config, length: int, attn: str,
                 forward: Callable[[torch.Tensor, torch.Tensor, Any, Any], tuple[torch.Tensor, torch.Tensor]]):
        from transformers import StaticCache

        self.layers = layers
        self.length = int(length)
        self.attn = attn
        self.forward = forward  # (token ids [1, 1], position ids, mask, cache) -> (hidden [1, d], logits [1, V])
        self.cache = StaticCache(config=config, max_cache_len=self.length)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.fallback: str | None = None  # why the step runs eagerly on CUDA, if it does
        self._token: torch.Tensor | None = None
        self._position: torch.Tensor | None = None
        self._out: tuple[torch.Tensor, torch.Tensor] | None = None
        self._slots: torch.Tensor | None = None

    # ---- cache --------------------------------------------------------------------------------

    def load(self, cache) -> None:
        """Copy a prefill's (dynamic) cache into the static slots; each layer keeps its own length."""
        for source, target in zip(cache.layers, self.cache.layers):
            keys, values = source.keys, source.values
            n = int(keys.shape[-2])
            if n >= self.length:
                raise ValueError(f"a prefill of {n} tokens does not fit a static cache of {self.length} slots")
            if not target.is_initialized:
                target.lazy_initialization(keys, values)
            target.keys[:, :, :n].copy_(keys)
            target.values[:, :, :n].copy_(values)
            target.cumulative_length.fill_(n)
        if self._slots is None:
            self._slots = torch.arange(self.length, device=self.cache.layers[0].keys.device)

    def filled(self) -> list[int]:
        """Slots filled per layer (prefill + fed tokens)."""
        return [int(layer.cumulative_length) for layer in self.cache.layers]

    def _mask(self, i: int, dtype: torch.dtype) -> torch.Tensor:
        allowed = (self._slots <= self.cache.layers[i].cumulative_length)[None, None, None, :]
        if self.attn == "sdpa":
            return allowed
        zero = torch.zeros((), dtype=dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)

    @contextlib.contextmanager
    def _layer_masks(self, dtype: torch.dtype):
        """Forward pre-hooks giving every decoder layer the mask of its own filled slots (registered last, so
        they also replace the mask an in-LLM method's hooks drop while decoding)."""

        def hook(i):
            def pre(module, args, kwargs):
                kwargs["attention_mask"] = self._mask(i, dtype)
                return args, kwargs

            return pre

        handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(self.layers)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # ---- the step -------------------------------------------------------------------------------

    def _step(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        with self._layer_masks(dtype):
            return self.forward(self._token, self._position, self._mask(0, dtype), self.cache)

    def run(self, token: int, position: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self._token is None:
            self._token = torch.zeros(1, 1, dtype=torch.long, device=position.device)
            self._position = torch.zeros_like(position)
        self._token.fill_(int(token))
        self._position.copy_(position)
        if position.device.type != "cuda" or self.fallback is not None:
            return self._step(dtype)
        if self.graph is None:
            self._capture(dtype)
            if self.graph is None:
                return self._step(dtype)
        self.graph.replay()
        return self._out  # type: ignore[return-value]

    def _capture(self, dtype: torch.dtype) -> None:
        """Warm up on a side stream (its cache writes undone), then capture the step as a CUDA graph."""
        filled = [layer.cumulative_length.clone() for layer in self.cache.layers]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._step(dtype)
            torch.cuda.current_stream().wait_stream(side)
            for layer, n in zip(self.cache.layers, filled):
                layer.cumulative_length.copy_(n)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self._step(dtype)
            self.graph, self._out = graph, out
        except Exception as exc:  # a step that cannot be captured still decodes, eagerly
            self.fallback = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            self.graph = None
        finally:
            for layer, n in zip(self.cache.layers, filled):
                layer.cumulative_length.copy_(n)


class StaticDecoders:
    """The backend's static decoders by cache length (a few kept, least recently used dropped)."""

    def __init__(self, make: Callable[[int], StaticDecoder], keep: int = MAX_DECODERS):
        self.make, self.keep = make, keep
        self._by_length: dict[int, StaticDecoder] = {}

    def get(self, needed: int) -> StaticDecoder:
        length = cache_length(needed)
        decoder = self._by_length.pop(length, None) or self.make(length)
        self._by_length[length] = decoder  # most recently used last
        while len(self._by_length) > self.keep:
            self._by_length.pop(next(iter(self._by_length)))
        return decoder
