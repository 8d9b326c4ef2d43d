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
]
for _name, _target, _description in _BUILTIN:
    MODELS.register(_name, _target, _description)


def load_model(spec: str | Spec, **options: Any):
    """Build a model backend from a name with options; keyword options override those in the string."""
    return MODELS.build(spec, **options)


def list_models() -> list[str]:
    return MODELS.names()
