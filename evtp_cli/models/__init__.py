"""IVS model registry. `load_model("tiny-ivs")`, `load_model("sa2va-qwen:path=/ckpt,dtype=bf16")`.

Backends are registered by `module:Class` and imported on use, so listing them stays instant.
A model never imports a pruner or a dataset reader; the evaluation loop joins them.
Third-party backends register through the `evtp.models` entry-point group.
"""

from __future__ import annotations

from typing import Any

from evtp_cli.spec import Registry, Spec

MODELS: Registry[Any] = Registry("model", entry_point_group="evtp.models")

_BUILTIN: list[tuple[str, str, str]] = [
    ("tiny-ivs", "evtp_cli.models.tiny:TinyIVS", "bundled tiny IVS model (vision encoder, 4-layer LLM, [SEG] pointer, promptable mask head); offline"),
    ("sa2va-qwen", "evtp_cli.models.sa2va_qwen:Sa2VAQwen", "Sa2VA-Qwen2.5-VL (Qwen2.5-VL + SAM2) on transformers; pruning before the LLM, after or inside the vision tower, inside the LLM; path=CKPT or preset=tiny-random|3b-random|7b-random"),
    ("sa2va-internvl", "evtp_cli.models.sa2va_internvl:Sa2VAInternVL", "InternVL-based Sa2VA (1B/4B, InternVL3-2B/8B/14B) + SAM2 on transformers; pruning before the LLM, after or inside the vision tower, inside the LLM; path=CKPT or preset=tiny-random|1b-random|4b-random|8b-random"),
]
for _name, _target, _description in _BUILTIN:
    MODELS.register(_name, _target, _description)


def load_model(spec: str | Spec, **options: Any):
    """Build a model backend from a name with options; keyword options override those in the string."""
    return MODELS.build(spec, **options)


def list_models() -> list[str]:
    return MODELS.names()
