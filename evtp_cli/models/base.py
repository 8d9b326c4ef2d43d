"""The IVS model interface every backend implements (tiny-ivs, the Sa2VA-style transformers backends).

The evaluation loop drives a model in three calls, timing each stage:

    tokens = model.encode(sample, timer)            # "vision": frames -> visual tokens as the LLM gets them
    merged = pruner.select_and_merge(tokens.features, tokens.coords, k, tokens.context)   # "select"
    pred = model.decode(sample, tokens, PrunePlan(...), timer)   # "prefill", "decode", "mask"

`encode` returns the visual tokens of the frames the LLM sees (key frames for video) with their
(t, y, x) coordinates in [0, 1] on the model's own grid; `decode` runs the LLM on the kept tokens only
(keeping their original positions) and the mask decoder on every frame with the full, unpruned
vision features. A model never imports a pruner; pruners that act inside the model (stage "vision" or
"llm") are passed in the plan as callables.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch

from evtp_cli.api import Prediction, PrunePlan, Sample, VisualTokens
from evtp_cli.errors import EvtpError
from evtp_cli.metrics.timing import StageTimer

__all__ = ["IVSModel", "check_device"]


def check_device(device: str, allow_meta: bool = True) -> None:
    """One clear error for a device this machine cannot run on: a typo, CUDA or MPS without one, or a GPU
    index past the last GPU (torch would fail later, deep inside the first sample). `meta` builds shapes
    without memory (parameter counts of the large presets) but cannot evaluate: runs pass allow_meta=False.
    Other device types are left to torch."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise EvtpError(f"device={device!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise EvtpError(f"device={device} asked for, but torch sees no CUDA device; use device=cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise EvtpError(f"device={device}: torch sees {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise EvtpError(f"device={device} asked for, but torch sees no MPS device; use device=cpu")
    elif parsed.type == "meta" and not allow_meta:
        raise EvtpError("device=meta holds no data, so nothing can be evaluated; use cpu or cuda")


class IVSModel(abc.ABC):
    """Base class of IVS backends. Subclasses define `Config` (a dataclass) and the three methods."""

    name: ClassVar[str] = ""
    #: stages of pruning this backend supports besides "pre-llm"
    inner_stages: ClassVar[tuple[str, ...]] = ()
    #: number of decoder layers of the LLM (for in-LLM methods' layer choice); None if unknown
    llm_layers: int | None = None

    def __init__(self, config: Any):
        self.config = config
        if hasattr(config, "device"):
            check_device(config.device)

    @property
    def device(self) -> torch.device:
        return torch.device(getattr(self.config, "device", "cpu"))

    @abc.abstractmethod
    def encode(self, sample: Sample, timer: StageTimer) -> VisualTokens:
        """Frames -> visual tokens of the key frames (timed as "vision")."""

    @abc.abstractmethod
    def decode(self, sample: Sample, tokens: VisualTokens, plan: PrunePlan, timer: StageTimer) -> Prediction:
        """LLM on the kept tokens + mask decoder on all frames (timed as "prefill", "decode", "mask")."""

    @classmethod
    def cannot_prune(cls, config: Any) -> str | None:
        """Why a model of this configuration cannot run pruned settings, if it cannot; asked before a run
        loads anything."""
        return None

    def check_pruners(self, pruners: list[Any]) -> None:
        """Raise a one-line EvtpError for a pruner this model can never run as configured (a vision block it
        does not have): called once after loading, before a run's first sample."""

    def info(self) -> dict[str, Any]:
        """A short description of the loaded model for results.json's meta."""
        return {"name": self.name}

    def prefill_flops(self, sequence_length: int) -> float | None:
        """Analytic prefill FLOPs for a sequence length, where the backend knows its shapes."""
        return None
