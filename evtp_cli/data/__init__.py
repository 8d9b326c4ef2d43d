"""Dataset registry. `load_dataset("synthetic-image:seed=7,n=500")` returns a sized iterable of samples.

Readers are registered by `module:Class` and imported on use. Third-party datasets register through
the `evtp.datasets` entry-point group.
"""

from __future__ import annotations

from typing import Any

from evtp_cli.spec import Registry, Spec

DATASETS: Registry[Any] = Registry("dataset", entry_point_group="evtp.datasets")

_BUILTIN = [
    ("synthetic-image", "evtp_cli.data.synthetic:SyntheticImage", "shapes on textured backgrounds, one referring instruction each (offline)"),
    ("synthetic-video", "evtp_cli.data.synthetic:SyntheticVideo", "moving shapes; instructions use appearance and motion (offline)"),
]
for _name, _target, _description in _BUILTIN:
    DATASETS.register(_name, _target, _description)


def load_dataset(spec: str | Spec, **options: Any):
    """Build a dataset from a name with options; keyword options override those in the string."""
    return DATASETS.build(spec, **options)


def list_datasets() -> list[str]:
    return DATASETS.names()


def describe_datasets() -> list[tuple[str, str]]:
    return [(e.name, e.description) for e in DATASETS.entries()]
