"""MeViS reader (videos; one sample per expression; J, F, J&F per expression, then the mean).

Format learned from the MeViS repository (github.com/henghuiding/MeViS): README "File Structure" and
lmpm/data/datasets/mevis.py. `root/<split>/JPEGImages/<video>/<frame>.jpg`, `meta_expressions.json` with
`exp`, `obj_id` and `anno_id` per expression, and `mask_dict.json` mapping `str(anno_id)` to one COCO RLE
(string counts) or null per frame. The ground truth is the union over the expression's `anno_id`s (an
empty list is a no-target expression of MeViS v2). `valid_u` has ground truth for offline evaluation;
`valid` has none (predictions go to the CodaLab / CodaBench server as a zip of `<video>/<exp_id>/<frame>.png`
at the top level, the README's sample_submission_valid.zip layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from evtp_cli.data.files import require_dir
from evtp_cli.data.rvos import (
    Expression,
    ExpressionVideoDataset,
    load_mask_dict,
    read_anno_ids,
    read_expressions,
)

LAYOUT = """\
  ROOT/
    train/ valid_u/ valid/
      JPEGImages/<video>/<frame>.jpg     (or JPEGImages/<video>.mp4)
      meta_expressions.json              {"videos": {video: {"frames", "expressions": {id: {"exp", "anno_id"}}}}}
      mask_dict.json                     {anno_id: [RLE or null per frame]}   (not in valid)"""


class MeViS(ExpressionVideoDataset):
    """MeViS: motion expressions; valid_u is scored offline, valid is predict-only (submission zip)."""

    name = "mevis"
    layout = LAYOUT
    submission_prefix = ""

    @dataclass
    class Config:
        root: str
        split: Literal["train", "valid_u", "valid"] = "valid_u"

    def _load(self) -> list[Expression]:
        self.split_dir = require_dir(self.root / self.config.split, LAYOUT, f"split folder ({self.config.split})")
        require_dir(self.split_dir / "JPEGImages", LAYOUT, "frame folder")
        path = self.split_dir / "meta_expressions.json"
        items = read_expressions(path, LAYOUT)
        if self.config.split != "valid":
            read_anno_ids(items, path)
            self.mask_dict = load_mask_dict(self.split_dir / "mask_dict.json", LAYOUT)
        return items

    def frame_folder(self, item: Expression) -> Path:
        return self.split_dir / "JPEGImages" / item.video_id

    def extra_meta(self, item: Expression) -> dict:
        return {"anno_id": item.anno_ids} if self.has_ground_truth else {}
