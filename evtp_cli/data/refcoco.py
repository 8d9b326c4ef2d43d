"""RefCOCO, RefCOCO+, RefCOCOg and gRefCOCO readers (images; one sample per sentence).

Format learned from:
- the refer API (github.com/lichengunc/refer, refer.py): `root/<dataset>/refs(<split_by>).p` is a pickled
  list of refs `{ref_id, ann_id, image_id, category_id, split, sentences: [{sent, raw, sent_id, tokens}]}`;
  `root/<dataset>/instances.json` holds COCO `images`, `annotations` (polygon or RLE `segmentation`) and
  `categories`; images are COCO train2014 files, by default under `root/images/mscoco/images/train2014`.
  Split "testA"/"testB" selects refs whose split contains "A"/"B"; "test" those containing "test".
- LISA's ValDataset (github.com/dvlab-research/LISA, utils/dataset.py): evaluates every sentence (`sent`)
  of every ref in the split against the union of the annotation's segmentation parts.
- gRefCOCO (github.com/henghuiding/ReLA, grefer.py / grefcoco.py): `root/grefcoco/grefs(unc).json` (or `.p`)
  with `ann_id` a list (several targets, the ground truth is their union; crowd annotations are skipped)
  or `[-1]` for a no-target sentence (an empty ground truth); splits match exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from evtp_cli.api import Sample
from evtp_cli.data.base import Dataset
from evtp_cli.data.files import (
    get_field,
    load_json,
    load_pickle,
    require_dir,
    single_image,
)
from evtp_cli.data.masks import decode_segmentation, union
from evtp_cli.errors import DataError, SampleError

IMAGE_DIRS = ("images/mscoco/images/train2014", "images/train2014")

LAYOUT = """\
  ROOT/
    {dataset}/
      {refs}  refs: ref_id, ann_id, image_id, split, sentences[{{sent, sent_id}}]
      instances.json      COCO images / annotations (polygons or RLE) / categories
    images/mscoco/images/train2014/COCO_train2014_*.jpg   (or images/train2014/, or images=PATH)"""


@dataclass(frozen=True)
class _Sentence:
    ref: dict
    sentence: dict


class _ReferDataset(Dataset):
    """Shared reader; subclasses fix the folder name, the refs file and how splits match."""

    task = "image"
    folder = ""
    default_split_by = "unc"
    refs_stem = "refs"
    refs_exts = ".p"
    exact_split = False  # gRefCOCO matches the split name exactly; the refer API matches testA/testB loosely
    skip_crowd = False  # gRefCOCO leaves crowd annotations out of the ground truth

    def __init__(self, config: Any):
        self.config = config
        self.split = config.split
        self.root = Path(config.root).expanduser()
        split_by = config.split_by or self.default_split_by
        self.layout = LAYOUT.format(dataset=self.folder, refs=f"{self.refs_stem}({split_by}){self.refs_exts}")
        require_dir(self.root, self.layout)
        data_dir = require_dir(self.root / self.folder, self.layout, f"{self.name} folder")
        refs, self.refs_path = self._load_refs(data_dir, split_by)
        if not isinstance(refs, list):
            raise DataError(f"malformed refs file {self.refs_path}: expected a list of refs, got {type(refs).__name__}")
        instances_path = data_dir / "instances.json"
        instances = load_json(instances_path, self.layout)
        self.images = {
            get_field(img, "id", instances_path, "images[]"): img
            for img in get_field(instances, "images", instances_path, "the file", list)
        }
        self.annotations = {
            get_field(ann, "id", instances_path, "annotations[]"): ann
            for ann in get_field(instances, "annotations", instances_path, "the file", list)
        }
        self.image_dir = self._image_dir()
        self._items = self._select(refs)

    # -- loading -----------------------------------------------------------------------------

    def _load_refs(self, data_dir: Path, split_by: str) -> tuple[list, Path]:
        path = data_dir / f"{self.refs_stem}({split_by}).p"
        return load_pickle(path, self.layout, "refs file"), path

    def _image_dir(self) -> Path:
        if self.config.images:
            return require_dir(Path(self.config.images).expanduser(), self.layout, "image folder (images=)")
        for rel in IMAGE_DIRS:
            if (self.root / rel).is_dir():
                return self.root / rel
        tried = ", ".join(str(self.root / rel) for rel in IMAGE_DIRS)
        raise DataError(f"no COCO train2014 image folder at {tried}; pass images=PATH; expected layout:\n{self.layout}")

    def _in_split(self, ref_split: str) -> bool:
        wanted = self.config.split
        if self.exact_split or wanted in ("train", "val"):
            return ref_split == wanted
        if wanted in ("testA", "testB", "testC"):
            return ref_split.startswith("test") and wanted[-1] in ref_split[4:]
        return wanted in ref_split  # "test": every test split

    def _select(self, refs: list) -> list[_Sentence]:
        items, seen_splits = [], set()
        for k, ref in enumerate(refs):
            where = f"ref #{k}"
            split = get_field(ref, "split", self.refs_path, where, str)
            seen_splits.add(split)
            if not self._in_split(split):
                continue
            for key in ("ref_id", "ann_id", "image_id"):
                get_field(ref, key, self.refs_path, where)
            for j, sentence in enumerate(get_field(ref, "sentences", self.refs_path, where, list)):
                get_field(sentence, "sent", self.refs_path, f"{where} sentences[{j}]", str)
                items.append(_Sentence(ref, sentence))
        if not items:
            raise DataError(
                f"no sentences of split {self.config.split!r} in {self.refs_path}; "
                f"splits there: {', '.join(sorted(seen_splits)) or '(none)'}"
            )
        return items

    # -- samples ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._items)

    def sample_id(self, index: int) -> str:
        item = self._items[index]
        return f"ref{item.ref['ref_id']}-sent{item.sentence.get('sent_id', index)}"

    def _ann_ids(self, ref: dict) -> list[int]:
        ann_id = ref["ann_id"]
        return list(ann_id) if isinstance(ann_id, (list, tuple)) else [ann_id]

    def _target(self, ann_ids: list[int], height: int, width: int, sample_id: str) -> np.ndarray:
        masks = []
        for ann_id in ann_ids:
            if ann_id == -1:  # gRefCOCO no-target sentence
                continue
            ann = self.annotations.get(ann_id)
            if ann is None:
                raise SampleError(sample_id, f"annotation {ann_id} is not in instances.json")
            if self.skip_crowd and ann.get("iscrowd"):
                continue
            try:
                masks.append(decode_segmentation(ann.get("segmentation", []), height, width))
            except (ValueError, TypeError) as exc:
                raise SampleError(sample_id, f"annotation {ann_id}: {exc}") from None
        return union(masks, (height, width))

    def get(self, index: int) -> Sample:
        item = self._items[index]
        ref, sentence = item.ref, item.sentence
        sample_id = self.sample_id(index)
        image = self.images.get(ref["image_id"])
        if image is None:
            raise SampleError(sample_id, f"image {ref['image_id']} is not in instances.json")
        height, width = int(image["height"]), int(image["width"])
        ann_ids = self._ann_ids(ref)
        mask = self._target(ann_ids, height, width, sample_id)
        path = self.image_dir / image["file_name"]
        ann_meta: int | list[int] = ann_ids if isinstance(ref["ann_id"], (list, tuple)) else ann_ids[0]
        return Sample(
            id=sample_id,
            task="image",
            text=sentence["sent"],
            frames=single_image(path, sample_id),
            masks=mask[None],
            ignore=None,
            meta={
                "ref_id": ref["ref_id"],
                "ann_id": ann_meta,
                "image_id": ref["image_id"],
                "sent_id": sentence.get("sent_id"),
                "raw": sentence.get("raw", sentence["sent"]),
                "file_name": image["file_name"],
                "no_target": ann_ids == [-1],
            },
        )


_REFER_SPLITS = Literal["train", "val", "test", "testA", "testB"]


class RefCOCO(_ReferDataset):
    """RefCOCO (UNC splits val / testA / testB): one sample per sentence, scored with gIoU / cIoU."""

    name = "refcoco"
    folder = "refcoco"

    @dataclass
    class Config:
        root: str
        split: _REFER_SPLITS = "val"
        split_by: str = "unc"
        images: str | None = None


class RefCOCOPlus(RefCOCO):
    """RefCOCO+ (UNC splits val / testA / testB): no absolute-location words in the sentences."""

    name = "refcoco+"
    folder = "refcoco+"


class RefCOCOg(_ReferDataset):
    """RefCOCOg (UMD splits val / test)."""

    name = "refcocog"
    folder = "refcocog"
    default_split_by = "umd"

    @dataclass
    class Config:
        root: str
        split: Literal["train", "val", "test"] = "val"
        split_by: str = "umd"
        images: str | None = None


class GRefCOCO(_ReferDataset):
    """gRefCOCO: multi-target sentences (union of targets) and no-target sentences (empty ground truth)."""

    name = "grefcoco"
    folder = "grefcoco"
    refs_stem = "grefs"
    refs_exts = ".json (or .p)"
    exact_split = True
    skip_crowd = True

    @dataclass
    class Config:
        root: str
        split: Literal["train", "val", "testA", "testB"] = "val"
        split_by: str = "unc"
        images: str | None = None

    def _load_refs(self, data_dir: Path, split_by: str) -> tuple[list, Path]:
        json_path = data_dir / f"grefs({split_by}).json"
        pickle_path = data_dir / f"grefs({split_by}).p"
        if json_path.is_file() or not pickle_path.is_file():
            return load_json(json_path, self.layout, "refs file"), json_path
        return load_pickle(pickle_path, self.layout, "refs file"), pickle_path
