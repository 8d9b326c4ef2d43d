"""ReasonSeg reader (images; one sample per image, scored with gIoU / cIoU).

Format learned from LISA (github.com/dvlab-research/LISA): utils/data_processing.py `get_mask_from_json` and
the ReasonSeg branch of utils/dataset.py `ValDataset`. Each `root/<split>/<name>.jpg` has a labelme-style
`<name>.json` with `text` (a list of queries; evaluation uses the first), `is_sentence` (true for the long,
sentence-style queries) and `shapes` (`label`, `points` polygons). Shapes labelled "flag" are skipped;
polygons are painted largest first, so a smaller shape drawn later wins; a label containing "ignore" paints
the ignore value (255, skipped by the metrics), any other label the target. The `query` option keeps the
short or the long queries, the split of LISA's "short query" / "long query" results.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from evtp_cli.api import Sample
from evtp_cli.data.base import Dataset
from evtp_cli.data.files import (
    get_field,
    image_size,
    load_json,
    require_dir,
    single_image,
)
from evtp_cli.data.masks import rasterize_polygon
from evtp_cli.errors import DataError, SampleError

LAYOUT = """\
  ROOT/
    train/ val/ test/
      <name>.jpg
      <name>.json     {"text": [query, ...], "is_sentence": bool, "shapes": [{"label", "points": [[x, y], ...]}]}"""

TARGET, IGNORE = 1, 255


@dataclass(frozen=True)
class _Item:
    name: str
    image: Path
    annotation: Path
    text: str
    is_sentence: bool
    shapes: list


def label_map(shapes: list, height: int, width: int) -> np.ndarray:
    """uint8 [H, W]: 0 background, 1 target, 255 ignore, painted largest polygon first (as LISA)."""
    painted = []
    for shape in shapes:
        label = str(shape.get("label", ""))
        if label.lower() == "flag":  # deprecated, meaningless annotations
            continue
        region = rasterize_polygon(shape.get("points", []), height, width)
        painted.append((int(region.sum()), IGNORE if "ignore" in label.lower() else TARGET, region))
    labels = np.zeros((height, width), dtype=np.uint8)
    # descending area as LISA's argsort(...)[::-1]; its order among equal areas is unspecified, ours is file order
    for _, value, region in sorted(painted, key=lambda p: -p[0]):
        labels[region] = value
    return labels


class ReasonSeg(Dataset):
    """ReasonSeg (LISA): implicit queries needing reasoning; masks with ignore regions."""

    name = "reasonseg"
    task = "image"

    @dataclass
    class Config:
        root: str
        split: Literal["train", "val", "test"] = "val"
        query: Literal["all", "short", "long"] = "all"

    def __init__(self, config: "ReasonSeg.Config"):
        self.config = config
        self.split = config.split
        root = require_dir(Path(config.root).expanduser(), LAYOUT)
        folder = require_dir(root / config.split, LAYOUT, f"split folder ({config.split})")
        images = sorted(folder.glob("*.jpg"))
        if not images:
            raise DataError(f"no .jpg images in {folder}; expected layout:\n{LAYOUT}")
        self._items = [item for item in map(self._read, images) if self._wanted(item)]

    def _read(self, image: Path) -> _Item:
        path = image.with_suffix(".json")
        record = load_json(path, LAYOUT, "annotation")
        texts = get_field(record, "text", path, "the record", (list, str))
        texts = [texts] if isinstance(texts, str) else texts
        if not texts or not isinstance(texts[0], str):
            raise DataError(f"malformed record in {path}: 'text' should be a non-empty list of strings")
        shapes = get_field(record, "shapes", path, "the record", list)
        for k, shape in enumerate(shapes):
            get_field(shape, "points", path, f"shapes[{k}]", list)
            get_field(shape, "label", path, f"shapes[{k}]", str)
        is_sentence = bool(get_field(record, "is_sentence", path, "the record"))
        return _Item(image.stem, image, path, texts[0], is_sentence, shapes)

    def _wanted(self, item: _Item) -> bool:
        query = self.config.query
        return query == "all" or (query == "long") == item.is_sentence

    def __len__(self) -> int:
        return len(self._items)

    def sample_id(self, index: int) -> str:
        return self._items[index].name

    def get(self, index: int) -> Sample:
        item = self._items[index]
        height, width = image_size(item.image, item.name)
        try:
            labels = label_map(item.shapes, height, width)
        except (ValueError, TypeError) as exc:
            raise SampleError(item.name, f"bad polygon in {item.annotation}: {exc}") from None
        ignore = labels == IGNORE
        return Sample(
            id=item.name,
            task="image",
            text=item.text,
            frames=single_image(item.image, item.name),
            masks=(labels == TARGET)[None],
            ignore=ignore[None] if ignore.any() else None,
            meta={"image_id": item.name, "is_sentence": item.is_sentence, "query": "long" if item.is_sentence else "short"},
        )
