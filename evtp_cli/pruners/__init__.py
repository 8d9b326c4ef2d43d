"""Pruner registry. `get_pruner("evtp:spatial_weight=0.5")` or `get_pruner("evtp", spatial_weight=0.5)`.

Built-in methods are registered by `module:Class` so nothing heavy is imported until one is used.
Third-party pruners register through the `evtp.pruners` entry-point group (value `module:Class`,
a `Pruner` subclass with a `Config` dataclass).
"""

from __future__ import annotations

from typing import Any

from evtp_cli.spec import Registry, Spec

PRUNERS: Registry[Any] = Registry("pruner", entry_point_group="evtp.pruners")

_BUILTIN = [
    ("evtp", "evtp_cli.pruners.evtp:EVTP", "EVTP (ours): k-center in a feature+space(+time) metric, information-seeded"),
    ("kcenter", "evtp_cli.pruners.kcenter:KCenter", "greedy k-center on cosine feature distance only (EVTP with λ=β=0)"),
    ("divprune", "evtp_cli.pruners.divprune:DivPrune", "DivPrune (CVPR'25): max-min diversity on cosine distance"),
    ("random", "evtp_cli.pruners.random:RandomPruner", "seeded uniform-random selection"),
    ("uniform", "evtp_cli.pruners.uniform:Uniform", "spatially even strided grid per frame"),
    ("fastv", "evtp_cli.pruners.fastv:FastV", "FastV (ECCV'24): in the LLM after layer K=2, top-k by the last token's attention"),
    ("sparsevlm", "evtp_cli.pruners.sparsevlm:SparseVLM", "SparseVLM (ICML'25): in the LLM, text-rater attention, progressive, recycles deleted tokens"),
    ("visionzip", "evtp_cli.pruners.visionzip:VisionZip", "VisionZip (CVPR'25): after the encoder, dominant tokens by attention + merged contextual tokens"),
    ("fastervlm", "evtp_cli.pruners.fastervlm:FasterVLM", "FasterVLM: after the encoder, top-k by [CLS] attention (or mean attention received)"),
    ("vispruner", "evtp_cli.pruners.vispruner:VisPruner", "VisPruner (ICCV'25): after the encoder, important tokens by attention + diverse tokens"),
    ("prumerge+", "evtp_cli.pruners.prumerge:PruMergePlus", "PruMerge+: after the encoder, IQR-outlier + spatial tokens absorbing their neighbours"),
    ("tome", "evtp_cli.pruners.tome:ToMe", "ToMe (ICLR'23): after the encoder, bipartite soft matching on keys down to the budget"),
    ("dart", "evtp_cli.pruners.dart:DART", "DART (EMNLP'25): in the LLM after layer K=2, tokens least similar to key-norm pivots"),
]
for _name, _target, _description in _BUILTIN:
    PRUNERS.register(_name, _target, _description)


def get_pruner(spec: str | Spec, **options: Any):
    """Build a pruner from a name with options; keyword options override those in the string."""
    return PRUNERS.build(spec, **options)


def list_pruners() -> list[str]:
    return PRUNERS.names()


def describe_pruners() -> list[tuple[str, str]]:
    return [(e.name, e.description) for e in PRUNERS.entries()]
