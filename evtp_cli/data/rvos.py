"""Shared reader for referring video segmentation sets in the Ref-YouTube-VOS expression format
(MeViS, Ref-YouTube-VOS, Ref-DAVIS17, ReVOS): one sample per (video, expression), frames read lazily.

`meta_expressions.json` is `{"videos": {video_id: {"frames": [name, ...], "expressions": {exp_id: {"exp":
text, ...}}}}}`; the ground truth comes either from a `mask_dict` (`{anno_id: [COCO RLE or null per frame]}`,
the union over the expression's `anno_id`s) or from palette PNGs. Learned from the MeViS repository
(github.com/henghuiding/MeViS, lmpm/data/datasets/mevis.py and README "File Structure"), ReferFormer
(github.com/wjn922/ReferFormer, datasets/ytvos.py, inference_ytvos.py) and VISA
(github.com/cilinyan/VISA, tools/eval_mevis.py, eval_revos.py). Each dataset's module says what is its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from evtp_cli.api import Sample
from evtp_cli.data.base import Dataset
from evtp_cli.data.files import (
    VideoFrames,
    get_field,
    load_json,
    load_pickle,
    open_video_frames,
    require_dir,
)
from evtp_cli.data.masks import frame_masks_from_rles
from evtp_cli.errors import DataError, SampleError


@dataclass(eq=False)
class Expression:
    """One referring expression of one video, as listed in the expressions file."""

    video_id: str
    exp_id: str
    text: str
    frames: list[str]
    record: dict  # the expression's own fields (obj_id, anno_id, type_id, ...)
    video: dict  # the video's fields (height, width, ...)
    anno_ids: list[str] = field(default_factory=list)  # mask_dict keys of the target(s)


def read_expressions(path: Path, layout: str) -> list[Expression]:
    """Every expression of an expressions file, in file order."""
    data = load_json(path, layout, "expressions file")
    videos = get_field(data, "videos", path, "the file", dict)
    items = []
    for video_id, video in videos.items():
        where = f"videos[{video_id!r}]"
        frames = get_field(video, "frames", path, where, list)
        expressions = get_field(video, "expressions", path, where, dict)
        for exp_id, record in expressions.items():
            text = get_field(record, "exp", path, f"{where}['expressions'][{exp_id!r}]", str)
            items.append(Expression(str(video_id), str(exp_id), text, [str(f) for f in frames], record, video))
    return items


def load_mask_dict(path: Path, layout: str) -> dict[str, list]:
    """`{anno_id: [RLE or None per frame]}` from a JSON file (MeViS, ReVOS) or a pickle (Ref-DAVIS17 `.pkl`)."""
    data = load_pickle(path, layout, "mask file") if path.suffix == ".pkl" else load_json(path, layout, "mask file")
    if not isinstance(data, dict):
        raise DataError(f"malformed mask file {path}: expected {{anno_id: [RLE or null per frame]}}, got {type(data).__name__}")
    return {str(key): value for key, value in data.items()}


def read_anno_ids(items: list[Expression], path: Path) -> None:
    """Fill `anno_ids` from each expression's `anno_id` list (MeViS, ReVOS); an empty list is a no-target expression."""
    for item in items:
        where = f"videos[{item.video_id!r}]['expressions'][{item.exp_id!r}]"
        ids = get_field(item.record, "anno_id", path, where, (list, int, str))
        item.anno_ids = [str(a) for a in (ids if isinstance(ids, list) else [ids])]


class ExpressionVideoDataset(Dataset):
    """Base of the video readers. Subclasses set `layout`, load their items and say where frames and
    ground truth live."""

    task = "video"
    layout = ""
    protocol = "MeViS: J, F per frame, mean per expression, then mean over expressions"
    # folder inside the submission zip that holds <video>/<exp_id>/<frame>.png ("" = the zip's top level)
    submission_prefix = "Annotations"

    def __init__(self, config: Any):
        self.config = config
        self.split = config.split
        self.root = require_dir(Path(config.root).expanduser(), self.layout)
        self.mask_dict: dict | None = None
        self._items: list[Expression] = self._load()

    # -- for subclasses --------------------------------------------------------------------------

    def _load(self) -> list[Expression]:
        raise NotImplementedError

    def frame_folder(self, item: Expression) -> Path:
        """Folder of the video's frames (or the stem of its video file)."""
        raise NotImplementedError

    @property
    def has_ground_truth(self) -> bool:
        return self.mask_dict is not None

    def ground_truth(self, item: Expression, frames: VideoFrames, sample_id: str) -> np.ndarray | None:
        """bool [T, H, W], or None for a split without public ground truth. Default: from `mask_dict`."""
        if self.mask_dict is None:
            return None
        per_object = []
        for anno_id in item.anno_ids:
            if anno_id not in self.mask_dict:
                raise SampleError(sample_id, f"anno_id {anno_id} is not in the mask file")
            per_object.append(self.mask_dict[anno_id])
        shape = None
        if "height" in item.video and "width" in item.video:
            shape = (int(item.video["height"]), int(item.video["width"]))
        elif not any(rle for frames_rles in per_object for rle in frames_rles):
            shape = frames.frame_size()  # target absent everywhere: the frames give the size
        return frame_masks_from_rles(per_object, len(item.frames), shape)

    def extra_meta(self, item: Expression) -> dict:
        return {}

    # -- dataset ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._items)

    def expression(self, index: int) -> Expression:
        return self._items[index]

    def sample_id(self, index: int) -> str:
        item = self._items[index]
        return f"{item.video_id}/{item.exp_id}"

    def get(self, index: int) -> Sample:
        item = self._items[index]
        sample_id = self.sample_id(index)
        frames = open_video_frames(self.frame_folder(item), item.frames, sample_id)
        try:
            masks = self.ground_truth(item, frames, sample_id)
        except (ValueError, TypeError, KeyError) as exc:
            raise SampleError(sample_id, f"bad ground truth: {exc}") from None
        return Sample(
            id=sample_id,
            task="video",
            text=item.text,
            frames=frames,
            masks=masks,
            ignore=None,
            meta={"video_id": item.video_id, "exp_id": item.exp_id, "frame_names": list(item.frames), **self.extra_meta(item)},
        )


class YTVOSLayoutDataset(ExpressionVideoDataset):
    """Ref-YouTube-VOS's folder layout, which Ref-DAVIS17 reuses: `meta_expressions/<split>/meta_expressions.json`
    and `<split>/JPEGImages/<video>/<frame>.jpg`. Subclasses add their ground truth in `_finish`."""

    @dataclass
    class Config:
        root: str
        split: Literal["train", "valid"] = "valid"

    def _load(self) -> list[Expression]:
        split = self.config.split
        self.expressions_path = self.root / "meta_expressions" / split / "meta_expressions.json"
        items = read_expressions(self.expressions_path, self.layout)
        self.split_dir = require_dir(self.root / split, self.layout, f"split folder ({split})")
        require_dir(self.split_dir / "JPEGImages", self.layout, "frame folder")
        return self._finish(items)

    def _finish(self, items: list[Expression]) -> list[Expression]:
        return items

    def frame_folder(self, item: Expression) -> Path:
        return self.split_dir / "JPEGImages" / item.video_id
