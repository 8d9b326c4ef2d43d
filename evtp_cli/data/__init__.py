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
    ("refcoco", "evtp_cli.data.refcoco:RefCOCO", "RefCOCO (refer API layout; val/testA/testB), one sample per sentence; gIoU/cIoU"),
    ("refcoco+", "evtp_cli.data.refcoco:RefCOCOPlus", "RefCOCO+ (refer API layout; val/testA/testB); gIoU/cIoU"),
    ("refcocog", "evtp_cli.data.refcoco:RefCOCOg", "RefCOCOg (refer API layout, UMD split; val/test); gIoU/cIoU"),
    ("grefcoco", "evtp_cli.data.refcoco:GRefCOCO", "gRefCOCO: multi-target and no-target sentences; gIoU/cIoU"),
    ("reasonseg", "evtp_cli.data.reasonseg:ReasonSeg", "ReasonSeg (LISA): reasoning queries, short/long; gIoU/cIoU"),
    ("mevis", "evtp_cli.data.mevis:MeViS", "MeViS motion expressions (valid_u scored, valid predict-only); J/F/J&F"),
    ("refytvos", "evtp_cli.data.ytvos:RefYouTubeVOS", "Ref-YouTube-VOS (train scored, valid predict-only); J/F/J&F"),
    ("davis17", "evtp_cli.data.davis:RefDAVIS17", "Ref-DAVIS17, MLLM protocol (VISA/Sa2VA mask_dict); J/F/J&F"),
    ("revos", "evtp_cli.data.revos:ReVOS", "ReVOS referring + reasoning subsets; J/F/J&F, A, R"),
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
